"""gunicorn settings for the gateway, from the settings every process reads.

gthread workers: each thread borrows one pooled RPC proxy per request, so
the pool is sized to the thread count (RPC_POOL_SIZE, default GATEWAY_THREADS).
This file runs once in gunicorn's master, before it forks the workers: the
process start where the settings are checked and the library adaptations
applied.
"""
import os
import shutil
import sys
import tempfile

from gunicorn.glogging import Logger

import common  # noqa: F401
from common.contract.settings import SettingsError, load_settings
from common.kit import patches
from common.observability.log import logging_config
from gateway.edge.shedding import SheddingThreadWorker

try:
    settings = load_settings()
except SettingsError as exc:
    sys.exit(f"gateway: {exc}")
patches.apply(patches.FOR_GATEWAY)

# prometheus-client's multiprocess mode: each worker writes its metrics under this
# directory and GET /metrics sums them (gateway/metrics.py). Set before a worker
# imports prometheus_client; one directory per gateway, removed when it exits.
metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    shutil.rmtree(metrics_dir, ignore_errors=True)


bind = f"{settings.gateway_host}:{settings.gateway_port}"
# gthread, with a bound on the requests each process holds (GATEWAY_MAX_IN_FLIGHT; gateway/edge/shedding.py).
SheddingThreadWorker.max_in_flight = settings.gateway_max_in_flight
worker_class = SheddingThreadWorker
workers = settings.gateway_workers
threads = settings.gateway_threads
timeout = 60
# Longer than a client or proxy in front keeps an idle connection (nginx 75 s, cloud load balancers
# 60 s): whoever closes an idle connection first must be the client, or a request it sends at the
# moment the server closes is lost ('Remote end closed connection'). gunicorn's default is 2 s.
keepalive = settings.gateway_keepalive_seconds
graceful_timeout = 20


class NoAccessLines(Logger):
    """gunicorn's logger without its access lines: the app writes its own (JSON, with the request id).

    A logger level does not do: with logconfig_dict set, gunicorn builds each line's fields (every
    request and response header, the whole environ) before the logger drops it: about a tenth
    of the CPU of a request that does nothing, such as a refusal (gateway/edge/refusal.py)."""

    def access(self, resp, req, environ, request_time):
        pass


# The app logs each request itself; gunicorn's own lines go through the same JSON formatter.
accesslog = None
logger_class = NoAccessLines
loglevel = settings.log_level.lower()
logconfig_dict = {
    **logging_config(settings.log_level),
    "loggers": {
        "gunicorn.error": {"level": settings.log_level, "handlers": ["console"], "propagate": False},
    },
}
# gunicorn's control socket has one fixed default path per user: two gateways
# (a dev stack and the test suite) would fight over it, and we do not use it.
control_socket_disable = True
