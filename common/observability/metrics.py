"""Prometheus metrics of a Nameko service (prometheus-client), on its own port.

Each service process serves the Prometheus text format on METRICS_PORT plus
its offset in the registry (common/contract/services.py; 0 turns it off), so one variable gives a whole stack its
ports: with the default 9100, customer_service is on 9101, inventory on 9102,
and so on. A second instance of a service on the same host gets another
METRICS_PORT. The gateway serves its own on GET /metrics (gateway/metrics.py).

The same port answers an orchestrator's probes (docs/kubernetes.md):
- GET /health/live: 200 while the process serves (nothing else is checked, so a
  broker or database outage restarts no one);
- GET /health/ready: 200 when the service's broker consumer is connected and
  its database answers, else 503; the body names each check
  (`{"status": "unavailable", "checks": {"broker": "unreachable", "database": "ok"}}`).

What a service reports (every metric has a `service` label):
- rpc_server_calls_total{method,outcome}, rpc_server_duration_seconds{method}
- events_handled_total{handler,outcome} (events, also those a batch handler
  takes many at a time), event_handling_duration_seconds{handler} (per worker:
  one event, or one batch), event_batch_size{handler} (events per worker of a
  batch handler: its _count is transactions, its _sum events)
- timer_runs_total{timer,outcome}
- event_retries_total{queue}, events_dead_lettered_total{queue}
- outbox_events_waiting, outbox_oldest_waiting_seconds (read when scraped)
- a service's backlog, when its storage layout declares one (`Backlog`, read when scraped):
  what it has yet to send and the age of the oldest (webhook_service's deliveries,
  notification_service's messages by channel)
- db_pool_connections{state="in_use"|"idle"} (read when scraped)
`outcome` is `ok`, the error's code (`not_found`, `service_unavailable`, ...)
or `error` for anything unexpected.
"""
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from nameko.events import EventHandler
from nameko.extensions import DependencyProvider
from nameko.messaging import QueueConsumer
from nameko.rpc import Rpc
from prometheus_client import REGISTRY, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from common.contract import services
from common.contract.settings import settings_of

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

RPC_CALLS = Counter("rpc_server_calls", "RPC calls a service handled", ["service", "method", "outcome"])
RPC_DURATION = Histogram("rpc_server_duration_seconds", "Time to handle an RPC call", ["service", "method"],
                         buckets=LATENCY_BUCKETS)
EVENTS_HANDLED = Counter("events_handled", "Events a handler ran on", ["service", "handler", "outcome"])
EVENT_DURATION = Histogram("event_handling_duration_seconds", "Time to handle an event", ["service", "handler"],
                           buckets=LATENCY_BUCKETS)
EVENT_BATCH_SIZE = Histogram("event_batch_size", "Events a batch handler's worker handled together",
                             ["service", "handler"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
TIMER_RUNS = Counter("timer_runs", "Runs of a timer", ["service", "timer", "outcome"])
EVENT_RETRIES = Counter("event_retries", "Events scheduled for another try", ["service", "queue"])
EVENTS_DEAD_LETTERED = Counter("events_dead_lettered", "Events sent to the dead-letter queue after every retry",
                               ["service", "queue"])

LIVE_PATH, READY_PATH = "/health/live", "/health/ready"

_server = {"port": None}
_watched = set()
# What /health/ready checks in this process: name -> a callable answering "ok" or what is wrong.
_readiness = {}


def outcome_of(exc_info):
    if exc_info is None:
        return "ok"
    return getattr(exc_info[1], "code", "error")


class ServiceMetrics(DependencyProvider):
    """Serves this process's metrics (once) and counts every worker by entrypoint and outcome."""

    def setup(self):
        port = services.metrics_port(self.container.service_name, settings_of(self.container).metrics_port)
        self.on = port is not None
        if self.on and _server["port"] is None:
            serve(port, probes_app(make_wsgi_app(REGISTRY), _readiness))
            _server["port"] = port
            log.info("metrics on :%d/metrics, probes on %s and %s", port, LIVE_PATH, READY_PATH)
        if self.on:
            _readiness["broker"] = partial(broker_state, self.container)
        self._started = {}

    def worker_setup(self, worker_ctx):
        if self.on:
            self._started[worker_ctx] = time.perf_counter()

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        if not self.on:
            return
        seconds = time.perf_counter() - self._started.pop(worker_ctx, time.perf_counter())
        service, entrypoint = worker_ctx.service_name, worker_ctx.entrypoint
        name, outcome = entrypoint.method_name, outcome_of(exc_info)
        if isinstance(entrypoint, Rpc):
            RPC_CALLS.labels(service, name, outcome).inc()
            RPC_DURATION.labels(service, name).observe(seconds)
        elif isinstance(entrypoint, EventHandler):
            # A batch handler's worker settles its batch's events, or none when they
            # are handled again one at a time (common/kit/consumers.py).
            settled = getattr(entrypoint, "events_settled", None)
            events = settled(worker_ctx, exc_info) if settled else 1
            if events:
                EVENTS_HANDLED.labels(service, name, outcome).inc(events)
            EVENT_DURATION.labels(service, name).observe(seconds)
        else:
            TIMER_RUNS.labels(service, name, outcome).inc()

    def worker_teardown(self, worker_ctx):
        self._started.pop(worker_ctx, None)


@dataclass(frozen=True)
class Backlog:
    """What a service has yet to send, as two gauges read when Prometheus scrapes: how many
    wait (`waiting`) and the age of the oldest (`oldest`, 0 when none), per value of `labels`.

    `query` is one SELECT of the service's own schema answering rows of (label values...,
    count, oldest timestamp or None); each label value in `every` is reported, at 0 when no
    row names it, so an alert on a channel reads 0 rather than nothing."""
    waiting: tuple[str, str]  # (metric name, help)
    oldest: tuple[str, str]
    query: Any
    labels: tuple[str, ...] = ()
    every: tuple[tuple[str, ...], ...] = ((),)

    def metrics(self, service, rows, now):
        counts = {key: (0, None) for key in self.every}
        for *key, count, oldest in rows:
            counts[tuple(key)] = (count, oldest)
        waiting = GaugeMetricFamily(*self.waiting, labels=["service", *self.labels])
        oldest_age = GaugeMetricFamily(*self.oldest, labels=["service", *self.labels])
        for key, (count, oldest) in sorted(counts.items()):
            waiting.add_metric([service, *key], count)
            oldest_age.add_metric([service, *key], (now - oldest).total_seconds() if oldest else 0.0)
        return waiting, oldest_age


class StorageCollector:
    """Outbox depth and age, the service's backlog (if it has one), and the database pool, read when
    Prometheus scrapes."""

    def __init__(self, service, engine, relay_engine, outbox_model, backlog=None):
        self.service, self.engine, self.relay_engine, self.backlog = service, engine, relay_engine, backlog
        self._waiting = select(func.count(), func.min(outbox_model.created_at)).where(
            outbox_model.sent_at.is_(None))

    def collect(self):
        pool = self.engine.pool
        connections = GaugeMetricFamily("db_pool_connections", "Database connections of the service's pool",
                                        labels=["service", "state"])
        connections.add_metric([self.service, "in_use"], pool.checkedout())
        connections.add_metric([self.service, "idle"], pool.checkedin())
        yield connections
        try:
            with self.relay_engine.connect() as connection:
                count, oldest = connection.execute(self._waiting).one()
                backlog = connection.execute(self.backlog.query).all() if self.backlog else None
        except Exception as exc:  # the database is down: say nothing rather than fail the scrape
            log.warning("metrics: cannot read the outbox or the backlog: %r", exc)
            return
        now = datetime.now(timezone.utc)
        age = (now - oldest).total_seconds() if oldest else 0.0
        waiting = GaugeMetricFamily("outbox_events_waiting", "Events written but not yet sent", labels=["service"])
        waiting.add_metric([self.service], count)
        yield waiting
        oldest_age = GaugeMetricFamily("outbox_oldest_waiting_seconds", "Age of the oldest event not yet sent",
                                       labels=["service"])
        oldest_age.add_metric([self.service], age)
        yield oldest_age
        if self.backlog:
            yield from self.backlog.metrics(self.service, backlog, now)


def watch_storage(service, metrics_port, engine, relay_engine, outbox_model, backlog=None):
    """Report the service's outbox, backlog and pool in its metrics (when it serves them)."""
    if services.metrics_port(service, metrics_port) is None or service in _watched:
        return
    _watched.add(service)
    REGISTRY.register(StorageCollector(service, engine, relay_engine, outbox_model, backlog))
    # The relay's small pool, not the workers': a probe never waits behind requests.
    _readiness["database"] = partial(database_state, relay_engine)


# ---- probes ------------------------------------------------------------------

def probes_app(metrics_app, checks):
    """A WSGI app: the probes at LIVE_PATH and READY_PATH, Prometheus' exposition elsewhere."""
    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == LIVE_PATH:
            return _json(start_response, 200, {"status": "ok"})
        if path == READY_PATH:
            states = {name: check() for name, check in sorted(checks.items())}
            ready = bool(states) and all(state == "ok" for state in states.values())
            return _json(start_response, 200 if ready else 503,
                         {"status": "ok" if ready else "unavailable", "checks": states})
        return metrics_app(environ, start_response)
    return app


def broker_state(container):
    """'ok' while every queue consumer of `container` consumes on a live connection.
    nameko keeps the kombu consumers of its current connection; when that connection
    is lost their channel is closed (its `connection` None) until it reconnects."""
    consumers = [ext for ext in container.extensions if isinstance(ext, QueueConsumer)]
    return "ok" if consumers and all(_consuming(consumer) for consumer in consumers) else "unreachable"


def _consuming(queue_consumer):
    kombu_consumers = list(queue_consumer._consumers.values())
    if not queue_consumer._consumers_ready.ready() or not kombu_consumers:
        return False
    for consumer in kombu_consumers:
        connection = getattr(consumer.channel, "connection", None)
        if connection is None or not connection.connected:
            return False
    return True


def database_state(engine):
    try:
        with engine.connect() as connection:
            connection.execute(select(1))
    except Exception as exc:  # any failure means "not ready"; the log says which
        log.warning("readiness: the database does not answer: %r", exc)
        return "unreachable"
    return "ok"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a probe in flight never holds up the process's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        """Probes and scrapes every few seconds: no access lines."""


def serve(port, app):
    """Serve `app` on every interface at `port`, from a daemon thread."""
    server = make_server("0.0.0.0", port, app, _Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name=f"metrics-{port}", daemon=True).start()
    return server


def _json(start_response, status, body):
    payload = json.dumps(body).encode()
    reason = {200: "OK", 503: "Service Unavailable"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(payload)))])
    return [payload]
