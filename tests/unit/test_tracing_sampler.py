"""Which spans the exporting tracer provider keeps, and the resource it gives them
(common/observability/tracing.py)."""
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from common.observability.tracing import _TracedWorkOnly

SAMPLER = _TracedWorkOnly()
IN_A_TRACE = trace.set_span_in_context(NonRecordingSpan(SpanContext(
    trace_id=0x1234, span_id=0x5678, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))))


def decision(kind, parent=None):
    return SAMPLER.should_sample(parent, 0x1234, "SELECT orders", kind).decision


def test_an_sql_statement_outside_any_traced_work_is_not_a_trace_of_its_own():
    assert decision(SpanKind.CLIENT) == Decision.DROP


def test_work_and_its_statements_are_kept():
    assert decision(SpanKind.SERVER) == Decision.RECORD_AND_SAMPLE  # a request, a consumer, a timer
    assert decision(SpanKind.INTERNAL) == Decision.RECORD_AND_SAMPLE
    assert decision(SpanKind.CLIENT, IN_A_TRACE) == Decision.RECORD_AND_SAMPLE


def test_otel_traces_sampler_chooses_which_traces_are_kept():
    from common.contract.settings import load_settings
    from common.observability.tracing import SAMPLERS

    settings = load_settings({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"})
    none_kept = _TracedWorkOnly(SAMPLERS[settings.otel_traces_sampler](settings.otel_traces_sampler_arg))
    # A new trace is sampled out at ratio 0; work inside a caller's sampled trace is still kept.
    assert none_kept.should_sample(None, 0x1234, "POST /api/v1/orders", SpanKind.SERVER).decision == Decision.DROP
    assert none_kept.should_sample(IN_A_TRACE, 0x1234, "order_service.create_order",
                                   SpanKind.SERVER).decision == Decision.RECORD_AND_SAMPLE
    assert set(SAMPLERS) == {"always_on", "always_off", "traceidratio", "parentbased_always_on",
                             "parentbased_always_off", "parentbased_traceidratio"}


def test_by_default_a_share_of_new_traces_is_kept_and_a_sampled_caller_always_followed():
    from common.contract.settings import load_settings
    from common.observability.tracing import SAMPLERS

    settings = load_settings({})
    assert (settings.otel_traces_sampler, settings.otel_traces_sampler_arg) == ("parentbased_traceidratio", 0.1)
    default = _TracedWorkOnly(SAMPLERS[settings.otel_traces_sampler](settings.otel_traces_sampler_arg))
    # The ratio sampler keeps a new trace when its id's low 64 bits fall below ratio * 2**64.
    for share_of_ids, decision in ((0.05, Decision.RECORD_AND_SAMPLE), (0.2, Decision.DROP)):
        trace_id = int(share_of_ids * 2**64)
        assert default.should_sample(None, trace_id, "POST /api/v1/orders", SpanKind.SERVER).decision == decision
    # A sampled caller is followed, even with a trace id the ratio alone would drop.
    assert default.should_sample(IN_A_TRACE, 2**64 - 1, "POST /api/v1/orders", SpanKind.SERVER).decision == \
        Decision.RECORD_AND_SAMPLE


def test_the_resource_honours_otel_service_name_and_otel_resource_attributes():
    from common.contract.settings import load_settings
    from common.observability.tracing import resource

    def attributes(**environ):
        return resource("order_service", load_settings(environ)).attributes

    assert attributes()["service.name"] == "order_service"
    named = attributes(OTEL_SERVICE_NAME="orders-eu",
                       OTEL_RESOURCE_ATTRIBUTES="service.name=not-this,deployment.environment=production")
    assert (named["service.name"], named["deployment.environment"]) == ("orders-eu", "production")
    assert named["telemetry.sdk.name"] == "opentelemetry"  # the SDK's own attributes stay
    assert attributes(OTEL_RESOURCE_ATTRIBUTES="service.name=orders-blue")["service.name"] == "orders-blue"


def test_a_call_from_work_not_recorded_makes_no_client_span_and_passes_on_the_sampled_flag(monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from common.observability import tracing

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    monkeypatch.setitem(tracing._state, "enabled", True)
    monkeypatch.setitem(tracing._state, "tracer", provider.get_tracer(__name__))
    sampled_out = NonRecordingSpan(SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=True,
                                               trace_flags=TraceFlags(TraceFlags.DEFAULT)))
    with trace.use_span(sampled_out), tracing.client_span("inventory_service", "reserve"):
        # The callee is told: same trace, not sampled.
        assert tracing.current_traceparent() == f"00-{0x1234:032x}-{0x5678:016x}-00"
    with tracing.tracer().start_as_current_span("order_service.create_order"), \
            tracing.client_span("inventory_service", "reserve"):
        pass
    assert [span.name for span in spans.get_finished_spans()] == ["inventory_service.reserve",
                                                                  "order_service.create_order"]
