"""The gateway's server span (gateway/server_span.py) on a bare Flask app."""
import pytest
from flask import Flask, jsonify
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from common.observability import tracing
from gateway import server_span

CALLER_TRACE, CALLER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


@pytest.fixture
def traced(monkeypatch):
    """(a test client of an instrumented app, the finished spans)"""
    kept = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    monkeypatch.setitem(tracing._state, "tracer", provider.get_tracer("test"))
    app = Flask(__name__)
    server_span.instrument(app)
    seen = {}

    @app.before_request
    def later_hook():
        seen["in hook"] = trace.get_current_span()

    @app.post("/api/v1/orders/<order_id>")
    def handler(order_id):
        seen["in handler"] = trace.get_current_span()
        return jsonify({"id": order_id}), 201

    @app.get("/health")
    def health():
        return jsonify({"status": "ok"})

    @app.get("/boom")
    def boom():
        raise RuntimeError("broken")

    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.seen = seen
    yield app.test_client(), kept.get_finished_spans


def test_a_request_is_a_server_span_under_the_callers_traceparent(traced):
    client, spans = traced
    answer = client.post("/api/v1/orders/42?x=1", json={}, headers={
        "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "User-Agent": "probe/1"})
    assert answer.status_code == 201
    (span,) = spans()
    assert (span.name, span.kind) == ("POST /api/v1/orders/{order_id}", SpanKind.SERVER)
    assert format(span.context.trace_id, "032x") == CALLER_TRACE
    assert format(span.parent.span_id, "016x") == CALLER_SPAN and span.parent.is_remote
    assert dict(span.attributes) == {
        "http.method": "POST", "http.route": "/api/v1/orders/{order_id}", "http.target": "/api/v1/orders/42?x=1",
        "http.scheme": "http", "net.peer.ip": "127.0.0.1", "http.user_agent": "probe/1", "http.status_code": 201}
    assert span.status.status_code is StatusCode.UNSET
    # current in every later hook and in the handler, and no longer after the request
    assert client.application.seen["in hook"] is client.application.seen["in handler"]
    assert client.application.seen["in handler"].get_span_context() == span.context
    assert not trace.get_current_span().get_span_context().is_valid


def test_without_a_traceparent_a_request_starts_a_trace(traced):
    client, spans = traced
    client.post("/api/v1/orders/42", json={}, headers={"traceparent": "not-a-traceparent"})
    (span,) = spans()
    assert span.parent is None and span.context.trace_id != int(CALLER_TRACE, 16)


def test_a_5xx_is_an_error_and_an_unmatched_path_is_named_by_its_method(traced):
    client, spans = traced
    assert client.get("/boom").status_code == 500
    assert client.get("/no/such/path").status_code == 404
    boom, unmatched = spans()
    assert (boom.name, boom.status.status_code, boom.attributes["http.status_code"]) == (
        "GET /boom", StatusCode.ERROR, 500)
    assert (unmatched.name, unmatched.status.status_code, unmatched.attributes["http.status_code"]) == (
        "GET", StatusCode.UNSET, 404)
    assert "http.route" not in unmatched.attributes


def test_health_and_metrics_make_no_span(traced):
    client, spans = traced
    client.get("/health")
    client.get("/metrics")
    assert spans() == ()
