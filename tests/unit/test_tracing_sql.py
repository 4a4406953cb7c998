"""SQL statements as spans (common/observability/tracing.py `_SqlSpans`), on the real Postgres (its
`postgres` database: the spans come from psycopg2's cursors, nothing is written)."""
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from sqlalchemy import create_engine, exc, text

from common.observability.tracing import _SqlSpans
from tests import support


@pytest.fixture
def traced():
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    engine = create_engine(f"{support.PG_URL_BASE}/postgres")
    _SqlSpans(engine, provider.get_tracer(__name__))
    yield engine, provider.get_tracer(__name__), spans
    engine.dispose()


def _statements(spans):
    return [span for span in spans.get_finished_spans() if span.kind == SpanKind.CLIENT]


def test_a_statement_is_a_client_span_of_the_work_that_ran_it(traced):
    engine, tracer, spans = traced
    with tracer.start_as_current_span("order_service.create_order") as work:
        with engine.connect() as connection:
            assert connection.execute(text("  select :n"), {"n": 1}).scalar() == 1
    [statement] = _statements(spans)
    assert statement.name == "SELECT postgres"  # "<verb> <database>"
    assert statement.parent.span_id == work.get_span_context().span_id
    url = engine.url
    assert dict(statement.attributes) == {
        "db.system": "postgresql", "db.name": "postgres", "db.statement": "  select %(n)s",
        "db.operation": "SELECT", "net.peer.name": url.host, "net.peer.port": url.port or 5432}
    assert statement.status.status_code == StatusCode.UNSET


def test_many_rows_at_once_are_one_span_each_statement(traced):
    engine, tracer, spans = traced
    with tracer.start_as_current_span("work"), engine.begin() as connection:
        connection.execute(text("create temporary table numbers (n int)"))
        connection.execute(text("insert into numbers values (:n)"), [{"n": n} for n in range(5)])
        assert connection.execute(text("select count(*) from numbers")).scalar() == 5
    assert [span.name for span in _statements(spans)] == ["CREATE postgres", "INSERT postgres", "SELECT postgres"]


def test_a_failed_statement_ends_its_span_as_an_error(traced):
    engine, tracer, spans = traced
    with tracer.start_as_current_span("work"), engine.connect() as connection, \
            pytest.raises(exc.ProgrammingError):
        connection.execute(text("select * from no_such_table"))
    [statement] = _statements(spans)
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


def test_tracing_turns_on_no_sqlalchemy_event_dispatch(traced):
    engine, _, _ = traced
    assert not engine._has_events  # every execute, begin and commit would go through it
