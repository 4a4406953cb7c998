"""Which spans the exporting tracer provider keeps (common/tracing.py)."""
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from common.tracing import _TracedWorkOnly

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
    from common.settings import load_settings
    from common.tracing import SAMPLERS

    settings = load_settings({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"})
    none_kept = _TracedWorkOnly(SAMPLERS[settings.otel_traces_sampler](settings.otel_traces_sampler_arg))
    # A new trace is sampled out at ratio 0; work inside a caller's sampled trace is still kept.
    assert none_kept.should_sample(None, 0x1234, "POST /api/v1/orders", SpanKind.SERVER).decision == Decision.DROP
    assert none_kept.should_sample(IN_A_TRACE, 0x1234, "order_service.create_order",
                                   SpanKind.SERVER).decision == Decision.RECORD_AND_SAMPLE
    assert set(SAMPLERS) == {"always_on", "always_off", "traceidratio", "parentbased_always_on",
                             "parentbased_always_off", "parentbased_traceidratio"}
