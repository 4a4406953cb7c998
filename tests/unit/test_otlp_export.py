"""Our OTLP span encoding (common/observability/otlp_export.py) says what the library's says: both
decoded with opentelemetry-proto give the same ExportTraceServiceRequest."""
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from common.observability.otlp_export import FastOTLPSpanExporter, SpanEncoder


@pytest.fixture
def finished():
    """(a tracer of resource "a", a tracer of resource "b", the finished spans)"""
    kept = InMemorySpanExporter()
    tracers = []
    for name in ("a", "b"):
        provider = TracerProvider(resource=Resource.create({"service.name": name, "build": 7}))
        provider.add_span_processor(SimpleSpanProcessor(kept))
        tracers.append(provider)
    yield tracers[0], tracers[1], kept.get_finished_spans


def _decoded(data):
    request = ExportTraceServiceRequest()
    request.ParseFromString(data)
    return request


@pytest.fixture
def by_the_library(monkeypatch):
    """The names of the spans SpanEncoder left to the library."""
    names = []
    library_span = SpanEncoder._library_span
    monkeypatch.setattr(SpanEncoder, "_library_span", staticmethod(
        lambda span: names.append(span.name) or library_span(span)))
    return names


def _same_as_the_library(spans, encoder=None):
    ours = _decoded((encoder or SpanEncoder()).encode(spans))
    assert ours == encode_spans(spans)
    return ours


def test_the_spans_we_make_encode_as_the_library_encodes_them(finished, by_the_library):
    provider_a, provider_b, spans = finished
    tracer = provider_a.get_tracer("order-management")
    remote = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                         trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with tracer.start_as_current_span("order_service.create_order", context=set_span_in_context(
            NonRecordingSpan(remote)), kind=SpanKind.SERVER, attributes={"rpc.system": "nameko"}):
        for kind in SpanKind:
            with tracer.start_as_current_span(f"span {kind.name}", kind=kind):
                pass
        tracer.start_span("INSERT orders", kind=SpanKind.CLIENT, attributes={
            "db.statement": "INSERT INTO orders.orders VALUES (%(id)s) -- ünïcode", "db.system": "postgresql",
            "net.peer.port": 5432, "negative": -3, "big": 2 ** 63 - 1, "ratio": 0.25, "yes": True, "no": False,
            "empty": ""}).end()
        failed = tracer.start_span("failed")
        failed.set_status(Status(StatusCode.ERROR, "no stock"))
        failed.end()
        ok = tracer.start_span("ok")
        ok.set_status(Status(StatusCode.OK))
        ok.end()
    provider_a.get_tracer("another scope", "1.2").start_span("second scope").end()
    provider_b.get_tracer("order-management").start_span("second resource").end()
    encoded = _same_as_the_library(spans())
    assert [len(resource.scope_spans) for resource in encoded.resource_spans] == [2, 1]
    assert by_the_library == []


def test_what_we_do_not_encode_ourselves_is_the_library_s_encoding(finished, by_the_library):
    provider, _, spans = finished
    tracer = provider.get_tracer("order-management")
    with tracer.start_as_current_span("with an event") as span:
        span.record_exception(ValueError("boom"))
    tracer.start_span("with a link", links=[Link(SpanContext(5, 6, is_remote=True), {"why": "caused"})]).end()
    tracer.start_span("with a sequence", attributes={"skus": ("A", "B"), "counts": [1, 2]}).end()
    state = SpanContext(7, 8, is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("k", "v")]))
    tracer.start_span("with a trace state", context=set_span_in_context(NonRecordingSpan(state))).end()
    _same_as_the_library(spans())
    assert by_the_library == ["with an event", "with a link", "with a sequence", "with a trace state"]


def test_kept_attribute_encodings_tell_true_from_1_and_1_from_1_0(finished):
    provider, _, spans = finished
    tracer = provider.get_tracer("order-management")
    encoder = SpanEncoder()
    for value in (1, True, 1.0, "1", 1, True):
        tracer.start_span("same key", attributes={"value": value}).end()
    _same_as_the_library(spans(), encoder)
    _same_as_the_library(spans(), encoder)  # again, from what it kept


class _Receiver(BaseHTTPRequestHandler):
    bodies = []

    def do_POST(self):
        self.bodies.append((self.path, self.headers["Content-Type"],
                            self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_exporter_posts_the_encoding_as_otlp_http_protobuf(finished):
    provider, _, spans = finished
    provider.get_tracer("order-management").start_span("sent").end()
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        exporter = FastOTLPSpanExporter(endpoint=f"http://127.0.0.1:{server.server_port}/v1/traces")
        assert exporter.export(spans()) is SpanExportResult.SUCCESS
        exporter.shutdown()
        assert exporter.export(spans()) is SpanExportResult.FAILURE
    finally:
        server.shutdown()
    (path, content_type, body), = _Receiver.bodies
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    assert _decoded(body) == encode_spans(spans())
