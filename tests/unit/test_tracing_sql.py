"""SQL statements as spans (common/tracing.py `_SqlSpans`), on an in-memory SQLite engine."""
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from sqlalchemy import create_engine, exc, text

from common.tracing import _SqlSpans


@pytest.fixture
def traced():
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    engine = create_engine("sqlite://")
    _SqlSpans(engine, provider.get_tracer(__name__))
    yield engine, provider.get_tracer(__name__), spans
    engine.dispose()


def test_a_statement_is_a_client_span_of_the_work_that_ran_it(traced):
    engine, tracer, spans = traced
    with tracer.start_as_current_span("order_service.create_order") as work:
        with engine.connect() as connection:
            connection.execute(text("  select 1"))
    statement = next(span for span in spans.get_finished_spans() if span.kind == SpanKind.CLIENT)
    assert statement.name == "SELECT"  # "<verb> <database>"; in-memory SQLite has no database name
    assert statement.parent.span_id == work.get_span_context().span_id
    assert dict(statement.attributes) == {"db.system": "sqlite", "db.name": "", "db.statement": "  select 1",
                                          "db.operation": "SELECT"}


def test_a_failed_statement_ends_its_span_as_an_error(traced):
    engine, tracer, spans = traced
    with tracer.start_as_current_span("work"), engine.connect() as connection, \
            pytest.raises(exc.OperationalError):
        connection.execute(text("select * from no_such_table"))
    [statement] = [span for span in spans.get_finished_spans() if span.kind == SpanKind.CLIENT]
    assert statement.status.status_code == StatusCode.ERROR
    assert "no_such_table" in statement.status.description


def test_no_span_outside_traced_work_or_in_a_trace_sampled_out(traced):
    engine, _, spans = traced
    sampled_out = NonRecordingSpan(SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=True,
                                               trace_flags=TraceFlags(TraceFlags.DEFAULT)))
    with engine.connect() as connection:
        connection.execute(text("select 1"))  # the outbox relay's polling, say
        with trace.use_span(sampled_out):
            connection.execute(text("select 1"))
    assert spans.get_finished_spans() == ()
