"""OTLP/HTTP span export with a cheaper protobuf encoding than the exporter's own.

opentelemetry-exporter-otlp-proto-http builds a protobuf object per span and per
attribute and hashes the span's Resource (a JSON dump) for every span: 50-85 us
a span here, more than making the span, and about a third of tracing's CPU in
inventory_service under load (README "Performance"). `SpanEncoder` below writes
the same ExportTraceServiceRequest bytes directly (about 13 us a span) for the
spans we make (ids, name, kind, times, scalar attributes, status) and keeps the
encoding of each attribute, which repeats from span to span (the same SQL
statements, the same service names). A span with anything else (events, as
record_exception adds; links; a trace state; array attributes; dropped counts;
no status) is encoded by the library. A unit test
decodes both encodings with opentelemetry-proto and compares them.
"""
import logging
import struct

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as library_encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, StatusCode

_logger = logging.getLogger(__name__)

_HAS_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_ATTRIBUTE_CACHE_LIMIT = 4096  # distinct (key, value) pairs kept; cleared when full
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_double = struct.Struct("<d").pack


def _varint(value):
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(tag, payload):
    """A length-delimited field: its tag byte(s), the length, the payload."""
    return tag + _varint(len(payload)) + payload


class SpanEncoder:
    """ExportTraceServiceRequest bytes for a batch of finished SDK spans."""

    def __init__(self):
        self._attributes = {}  # (key, type, value) -> encoded KeyValue field of a Span
        # id(resource) or id(scope) -> (the object, its ResourceSpans or ScopeSpans head); the
        # object is kept so that the id stays its own
        self._resource_heads = {}
        self._scope_heads = {}

    def encode(self, spans):
        """Grouped as the library groups them: by resource, then by scope, in the order met."""
        resources = {}
        for span in spans:
            resource, scope = span.resource, span.instrumentation_scope
            if id(resource) not in self._resource_heads or id(scope) not in self._scope_heads:
                self._keep_heads(resource, scope)
            resources.setdefault(id(resource), {}).setdefault(id(scope), []).append(self._encode_span(span))
        request = []
        for resource_id, scopes in resources.items():
            scope_spans = (_delimited(b"\x12", self._scope_heads[scope_id][1] + b"".join(
                _delimited(b"\x12", encoded) for encoded in encoded_spans))
                for scope_id, encoded_spans in scopes.items())
            request.append(_delimited(b"\x0a", self._resource_heads[resource_id][1] + b"".join(scope_spans)))
        return b"".join(request)

    def _keep_heads(self, resource, scope):
        """What the library writes for a resource and a scope, without their spans (it is
        given a placeholder span, dropped again)."""
        placeholder = ReadableSpan("placeholder", SpanContext(1, 1, is_remote=False), resource=resource,
                                   instrumentation_scope=scope)
        resource_spans = library_encode_spans([placeholder]).resource_spans[0]
        scope_spans = resource_spans.scope_spans[0]
        del scope_spans.spans[:]
        self._scope_heads[id(scope)] = (scope, scope_spans.SerializeToString())
        del resource_spans.scope_spans[:]
        self._resource_heads[id(resource)] = (resource, resource_spans.SerializeToString())

    def _encode_span(self, span):
        context = span.get_span_context()
        status = span.status
        if (status is None or span.events or span.links or context.trace_state or span.dropped_attributes
                or span.dropped_events or span.dropped_links):
            return self._library_span(span)
        attributes = []
        for key, value in (span.attributes or {}).items():
            encoded = self._attributes.get((key, type(value), value))
            if encoded is None:
                encoded = self._encode_attribute(key, value)
                if encoded is None:
                    return self._library_span(span)
            attributes.append(encoded)
        parent = span.parent
        flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
        name = span.name.encode()
        status_payload = b""
        if status.description:
            status_payload += _delimited(b"\x12", status.description.encode())
        if status.status_code is not StatusCode.UNSET:
            status_payload += b"\x18" + _varint(status.status_code.value)
        return b"".join((
            b"\x0a\x10", context.trace_id.to_bytes(16, "big"),
            b"\x12\x08", context.span_id.to_bytes(8, "big"),
            b"\x22\x08" + parent.span_id.to_bytes(8, "big") if parent is not None else b"",
            b"\x2a", _varint(len(name)), name,
            b"\x30", _varint(span.kind.value + 1),  # the SDK's kinds start at INTERNAL = 0, OTLP's at 1
            b"\x39", _pack_fixed64(span.start_time),
            b"\x41", _pack_fixed64(span.end_time),
            *attributes,
            _delimited(b"\x7a", status_payload),
            b"\x85\x01", _pack_fixed32(flags),
        ))

    def _encode_attribute(self, key, value):
        """The Span `attributes` field (KeyValue) for one scalar attribute, kept for the next
        span; None for what the library encodes (a sequence)."""
        kind = type(value)
        if kind is str:
            any_value = _delimited(b"\x0a", value.encode())
        elif kind is bool:
            any_value = b"\x10" + (b"\x01" if value else b"\x00")
        elif kind is int:
            any_value = b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64, two's complement
        elif kind is float:
            any_value = b"\x21" + _pack_double(value)
        else:
            return None
        encoded = _delimited(b"\x4a", _delimited(b"\x0a", key.encode()) + _delimited(b"\x12", any_value))
        if len(self._attributes) >= _ATTRIBUTE_CACHE_LIMIT:
            self._attributes.clear()
        self._attributes[(key, kind, value)] = encoded
        return encoded

    @staticmethod
    def _library_span(span):
        return library_encode_spans([span]).resource_spans[0].scope_spans[0].spans[0].SerializeToString()


class FastOTLPSpanExporter(OTLPSpanExporter):
    """The library's OTLP/HTTP exporter (endpoint, headers, timeout, compression,
    retries) sending what SpanEncoder writes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._encoder = SpanEncoder()

    def export(self, spans):
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            body = self._encoder.encode(spans)
        except Exception:  # a span we cannot encode must not stop the export thread
            _logger.exception("could not encode %d spans", len(spans))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if self._client.export(body).success else SpanExportResult.FAILURE
