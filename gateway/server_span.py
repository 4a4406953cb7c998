"""The gateway's server span: one per HTTP request while tracing is on.

Named "<METHOD> <route>" with the route as the metrics name it
(`/api/v1/orders/{order_id}`; the method alone where no route matched), of
kind SERVER, the child of an incoming W3C `traceparent` (else the root of a
new trace), and current from the first before-request hook to the request's
teardown, so that the auth check, the RPC client spans and the access log
line are all inside it. Its attributes are the HTTP ones
opentelemetry-instrumentation-flask sets that tell a request apart
(http.method, http.route, http.target, http.scheme, net.peer.ip,
http.user_agent, http.status_code); a 5xx answer or an unhandled error is an
error status. /health and /metrics make no span, nor does a request shed past
GATEWAY_MAX_IN_FLIGHT (answered in front of the app: gateway/edge/refusal.py).

Written here rather than taken from that library: it wraps the WSGI app and
collects a dozen environ attributes per request, about 0.35 ms of CPU a
request, for nothing the gateway uses.
"""
from flask import g, request
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from common.observability import tracing
from gateway.metrics import route_template

UNTRACED_PATHS = frozenset({"/health", "/health/live", "/metrics"})


def instrument(app):
    """Open the span before every other before-request hook: call before registering them."""
    app.before_request(_open)
    app.after_request(_record_status)
    app.teardown_request(_close)


def _open():
    req = request._get_current_object()  # once, not through the proxy for every attribute
    if req.path in UNTRACED_PATHS:
        return
    headers = req.headers
    attributes = {"http.method": req.method, "http.target": req.full_path if req.query_string else req.path,
                  "http.scheme": req.scheme}
    name = req.method  # a path no route matched: the method alone (a path would make a span name per URL)
    if req.url_rule is not None:
        attributes["http.route"] = route_template(req.url_rule)
        name = f"{req.method} {attributes['http.route']}"
    if req.remote_addr:
        attributes["net.peer.ip"] = req.remote_addr
    user_agent = headers.get("User-Agent")
    if user_agent:
        attributes["http.user_agent"] = user_agent
    span = tracing.tracer().start_span(
        name, kind=SpanKind.SERVER, attributes=attributes,
        context=tracing.parent_context(headers.get("traceparent"), headers.get("tracestate")))
    g.server_span = (span, context.attach(trace.set_span_in_context(span)))


def _record_status(response):
    opened = g.get("server_span")
    if opened is not None:
        span, _ = opened
        span.set_attribute("http.status_code", response.status_code)
        if response.status_code >= 500:
            span.set_status(Status(StatusCode.ERROR))
    return response


def _close(error=None):
    opened = g.pop("server_span", None)
    if opened is None:
        return
    span, token = opened
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    context.detach(token)
    span.end()
