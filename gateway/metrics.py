"""The gateway's Prometheus metrics, served on GET /metrics (no token, like /health).

gunicorn runs several worker processes; prometheus-client's multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, set up in gateway/gunicorn_conf.py) sums them, so
one scrape of any worker gives the whole gateway. In production expose
/metrics only on an internal port or network (see the README).

- http_requests_total{method,route,status}: route is the template,
  e.g. /api/v1/orders/{order_id}
- http_request_duration_seconds{method,route}
- rpc_client_calls_total{service,method,outcome}, rpc_client_duration_seconds{service,method}
- rpc_pool_proxies{state="in_use"|"idle"}
"""
import functools
import re

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from common.observability.metrics import LATENCY_BUCKETS

HTTP_REQUESTS = Counter("http_requests", "HTTP requests answered", ["method", "route", "status"])
HTTP_DURATION = Histogram("http_request_duration_seconds", "Time to answer an HTTP request", ["method", "route"],
                          buckets=LATENCY_BUCKETS)
RPC_CALLS = Counter("rpc_client_calls", "RPC calls the gateway made", ["service", "method", "outcome"])
RPC_DURATION = Histogram("rpc_client_duration_seconds", "Time an RPC call took, re-drives included",
                         ["service", "method"], buckets=LATENCY_BUCKETS)
POOL_PROXIES = Gauge("rpc_pool_proxies", "Started RPC proxies of the gateway's pools", ["state"],
                     multiprocess_mode="livesum")

_FLASK_VARIABLE = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_state = {"on": True}


def configure(on):
    """METRICS_PORT=0 turns metrics off everywhere: nothing is recorded, /metrics is 404."""
    _state["on"] = on


def enabled():
    return _state["on"]


def record_request(method, url_rule, status, seconds):
    if _state["on"]:
        route = route_template(url_rule)
        HTTP_REQUESTS.labels(method, route, status).inc()
        HTTP_DURATION.labels(method, route).observe(seconds)


def record_rpc(service, method, outcome, seconds):
    if _state["on"]:
        RPC_CALLS.labels(service, method, outcome).inc()
        RPC_DURATION.labels(service, method).observe(seconds)


def count_proxies(state, change):
    """The pool's proxies: `state` in_use or idle changed by `change`."""
    if _state["on"]:
        POOL_PROXIES.labels(state).inc(change)


def route_template(url_rule):
    """/api/v1/orders/<order_id> -> /api/v1/orders/{order_id}; no rule (404): 'unmatched'."""
    return _template(url_rule.rule) if url_rule is not None else "unmatched"


@functools.lru_cache(maxsize=256)  # one entry per route: a few dozen
def _template(rule):
    return _FLASK_VARIABLE.sub(r"{\1}", rule)


def exposition():
    """(body, content type) of every worker's metrics, summed (or this process's alone
    when the app runs outside gunicorn, without a multiprocess directory)."""
    registry = CollectorRegistry()
    try:
        multiprocess.MultiProcessCollector(registry)
    except ValueError:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
