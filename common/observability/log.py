"""Logging shared by every process: one JSON object per line.

Each line has time, level, service, request_id and message, plus any
`extra` fields (the gateway adds method, path, status, duration_ms). The
request id comes from a thread-local (greenthread-local under eventlet) that
the gateway sets per request and `RequestLogContext` sets per Nameko worker.
"""
import json
import logging
import threading
from datetime import datetime, timezone

from nameko.extensions import DependencyProvider
from opentelemetry import trace

_current = threading.local()
_process = {"service": None}
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def set_service(name):
    _process["service"] = name


def set_request_id(request_id):
    _current.request_id = request_id


def current_request_id():
    return getattr(_current, "request_id", None)


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": _process["service"],
            "request_id": getattr(record, "request_id", None) or current_request_id(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        entry.update({key: value for key, value in vars(record).items()
                      if key not in _STANDARD_ATTRS and key not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ExpectedErrorsWithoutTraceback(logging.Filter):
    """Nameko logs every expected (domain) error with a full traceback; a
    404 or a 409 is routine, so keep the one-line message and drop the trace."""

    def filter(self, record):
        if isinstance(record.msg, str) and record.msg.startswith("(expected)"):
            record.exc_info = None
            record.exc_text = None
        return True


def logging_config(level):
    """dictConfig for every process: JSON lines on stderr at `level` (LOG_LEVEL)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"expected_errors": {"()": ExpectedErrorsWithoutTraceback}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json",
                                 "filters": ["expected_errors"]}},
        "root": {"level": level, "handlers": ["console"]},
    }


class RequestLogContext(DependencyProvider):
    """Puts the service name and the worker's request id on every log line it writes."""

    def setup(self):
        set_service(self.container.service_name)

    def worker_setup(self, worker_ctx):
        set_request_id(worker_ctx.data.get("request_id"))

    def worker_teardown(self, worker_ctx):
        set_request_id(None)
