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
- rate_limited_requests_total: answers 429 (RATE_LIMIT used up);
  rate_limit_unchecked_total: requests let through unchecked, Redis unreachable
- shed_requests_total: answers 503 overloaded (GATEWAY_MAX_IN_FLIGHT reached)
- circuit_breaker_state{service}: 0 closed, 1 half-open, 2 open (the worst of
  the gateway's processes); circuit_breaker_refusals_total{service}: calls
  refused while open
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

RATE_LIMITED = Counter("rate_limited_requests", "Requests answered 429: the caller's RATE_LIMIT was used up")
RATE_LIMIT_UNCHECKED = Counter("rate_limit_unchecked", "Requests let through without a rate-limit check: "
                                                       "Redis was unreachable")
SHED = Counter("shed_requests", "Requests answered 503 overloaded: GATEWAY_MAX_IN_FLIGHT were in flight")
BREAKER_STATE = Gauge("circuit_breaker_state", "A service's circuit: 0 closed, 1 half-open, 2 open",
                      ["service"], multiprocess_mode="livemax")
BREAKER_REFUSALS = Counter("circuit_breaker_refusals", "Calls refused at once: the service's circuit was open",
                           ["service"])
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

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


def count_rate_limited():
    if _state["on"]:
        RATE_LIMITED.inc()


def count_rate_limit_unchecked():
    if _state["on"]:
        RATE_LIMIT_UNCHECKED.inc()


def count_shed():
    if _state["on"]:
        SHED.inc()


def breaker_state(service, state):
    if _state["on"]:
        BREAKER_STATE.labels(service).set(BREAKER_STATES[state])


def count_breaker_refusal(service):
    if _state["on"]:
        BREAKER_REFUSALS.labels(service).inc()


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
