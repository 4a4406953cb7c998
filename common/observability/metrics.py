"""Prometheus metrics of a Nameko service (prometheus-client), on its own port.

Each service process serves the Prometheus text format on METRICS_PORT plus
its offset in the registry (common/contract/services.py; 0 turns it off), so one variable gives a whole stack its
ports: with the default 9100, customer_service is on 9101, inventory on 9102,
and so on. A second instance of a service on the same host gets another
METRICS_PORT. The gateway serves its own on GET /metrics (gateway/metrics.py).

What a service reports (every metric has a `service` label):
- rpc_server_calls_total{method,outcome}, rpc_server_duration_seconds{method}
- events_handled_total{handler,outcome} (events, also those a batch handler
  takes many at a time), event_handling_duration_seconds{handler} (per worker:
  one event, or one batch), event_batch_size{handler} (events per worker of a
  batch handler: its _count is transactions, its _sum events)
- timer_runs_total{timer,outcome}
- event_retries_total{queue}, events_dead_lettered_total{queue}
- outbox_events_waiting, outbox_oldest_waiting_seconds (read when scraped)
- db_pool_connections{state="in_use"|"idle"} (read when scraped)
`outcome` is `ok`, the error's code (`not_found`, `service_unavailable`, ...)
or `error` for anything unexpected.
"""
import logging
import time
from datetime import datetime, timezone

from nameko.events import EventHandler
from nameko.extensions import DependencyProvider
from nameko.rpc import Rpc
from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
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

_server = {"port": None}
_watched = set()


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
            start_http_server(port, addr="0.0.0.0")
            _server["port"] = port
            log.info("metrics on :%d/metrics", port)
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


class StorageCollector:
    """Outbox depth and age, and the database pool, read when Prometheus scrapes."""

    def __init__(self, service, engine, relay_engine, outbox_model):
        self.service, self.engine, self.relay_engine = service, engine, relay_engine
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
        except Exception as exc:  # the database is down: say nothing rather than fail the scrape
            log.warning("metrics: cannot read the outbox: %r", exc)
            return
        age = (datetime.now(timezone.utc) - oldest).total_seconds() if oldest else 0.0
        waiting = GaugeMetricFamily("outbox_events_waiting", "Events written but not yet sent", labels=["service"])
        waiting.add_metric([self.service], count)
        yield waiting
        oldest_age = GaugeMetricFamily("outbox_oldest_waiting_seconds", "Age of the oldest event not yet sent",
                                       labels=["service"])
        oldest_age.add_metric([self.service], age)
        yield oldest_age


def watch_storage(service, metrics_port, engine, relay_engine, outbox_model):
    """Report the service's outbox and pool in its metrics (when it serves them)."""
    if services.metrics_port(service, metrics_port) is None or service in _watched:
        return
    _watched.add(service)
    REGISTRY.register(StorageCollector(service, engine, relay_engine, outbox_model))
