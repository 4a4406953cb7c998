"""OpenTelemetry traces across every hop, when OTEL_EXPORTER_OTLP_ENDPOINT is set.

- Each process exports its spans over OTLP/HTTP (protobuf) with the library's
  exporter. Its resource is the SDK's: OTEL_RESOURCE_ATTRIBUTES' pairs, and
  `service.name` from OTEL_SERVICE_NAME, else from those pairs, else the
  process's name (`gateway`, `order_service`, ...). Unset endpoint: no
  provider is installed, nothing below starts a span or touches the context,
  and the cost is a flag test per call.
- Which traces are kept is the standard OTEL_TRACES_SAMPLER and its
  OTEL_TRACES_SAMPLER_ARG; the default, parentbased_traceidratio, starts a
  share of new traces and always follows the sampled flag of an incoming
  `traceparent`, so a trace is kept whole or not at all.
- The trace context crosses RPC in Nameko context data under `traceparent`
  (W3C trace-context): the gateway's client span, or a service's, is the
  parent of the callee's server span (`Tracing` below; the ready-made nameko
  instrumentation needs nameko 3).
- An event carries the context of the change that caused it: the outbox row
  keeps the `traceparent` current when the event was written, the relay sends
  it as a message header, and the consumer's span continues that trace.
- SQL statements are spans (`_SqlSpans` on each traced engine), and every
  JSON log line carries `trace_id` and `span_id` while a span is active
  (common/observability/log.py).
"""
import copy
from contextlib import contextmanager

from nameko.events import EventHandler
from nameko.extensions import DependencyProvider
from nameko.rpc import Rpc
from opentelemetry import context, trace
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACEPARENT_KEY = "traceparent"
# OTEL_TRACES_SAMPLER's standard values (the OpenTelemetry SDK configuration spec) -> sampler,
# given OTEL_TRACES_SAMPLER_ARG (the ratio; the others ignore it).
SAMPLERS = {
    "always_on": lambda ratio: ALWAYS_ON,
    "always_off": lambda ratio: ALWAYS_OFF,
    "traceidratio": TraceIdRatioBased,
    "parentbased_always_on": lambda ratio: ParentBased(ALWAYS_ON),
    "parentbased_always_off": lambda ratio: ParentBased(ALWAYS_OFF),
    "parentbased_traceidratio": ParentBasedTraceIdRatio,
}

_state = {"enabled": False, "tracer": None}
# Only the W3C traceparent crosses our hops: no baggage to parse or write on every call.
_propagator = TraceContextTextMapPropagator()


def configure_tracing(process_name, settings):
    """Install the exporting tracer provider for this process; False (and nothing
    installed) when OTEL_EXPORTER_OTLP_ENDPOINT is empty."""
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    sampler = SAMPLERS[settings.otel_traces_sampler](settings.otel_traces_sampler_arg)
    provider = TracerProvider(resource=resource(process_name, settings), sampler=_TracedWorkOnly(sampler))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")))
    trace.set_tracer_provider(provider)
    _state.update(enabled=True, tracer=provider.get_tracer("order-management"))
    return True


def resource(process_name, settings):
    """The resource of this process's spans, as the SDK documents OTEL_SERVICE_NAME and
    OTEL_RESOURCE_ATTRIBUTES, with the process's name where the SDK says "unknown_service".
    (Resource.create reads both variables from the environment too; the settings' values,
    which include config.yml's, are merged over them.)"""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    attributes = dict(settings.otel_resource_attributes)
    attributes[SERVICE_NAME] = settings.otel_service_name or attributes.get(SERVICE_NAME) or process_name
    return Resource.create(attributes)


class _TracedWorkOnly(Sampler):
    """What `kept` (OTEL_TRACES_SAMPLER) keeps, except a CLIENT span with no parent:
    an SQL statement run outside any traced work (the outbox relay's and the
    sender's polling under load) would be a one-span trace of its own, many per
    second, each costing its export and telling nothing."""

    def __init__(self, kept=ParentBased(ALWAYS_ON)):
        self._kept = kept

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                      trace_state=None):
        has_parent = trace.get_current_span(parent_context).get_span_context().is_valid
        if kind == SpanKind.CLIENT and not has_parent:
            return SamplingResult(Decision.DROP)
        return self._kept.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self):
        return f"TracedWorkOnly({self._kept.get_description()})"


def enabled():
    return _state["enabled"]


def shutdown():
    """Send what is buffered (at process exit)."""
    if enabled():
        trace.get_tracer_provider().shutdown()


def tracer():
    """This process's tracer (made once: get_tracer builds a new one per call)."""
    return _state["tracer"] or trace.get_tracer("order-management")


def instrument_engine(engine):
    """SQL statements on `engine` (psycopg2) become spans (when tracing is on); see _SqlSpans."""
    if enabled():
        _SqlSpans(engine, tracer())
    return engine


class _SqlSpans:
    """Each statement a CLIENT span named "<verb> <database>" with the attributes
    opentelemetry-instrumentation-sqlalchemy's engine tracer gives it (db.system,
    db.name, db.statement, db.operation, net.peer.name/port).

    Made by the cursors of the engine's psycopg2 connections (psycopg2's own
    extension point, a cursor class, as opentelemetry-instrumentation-psycopg2
    uses), set on each connection by a pool event as the pool opens it: an
    engine event would turn on SQLAlchemy's event dispatch for every execute,
    begin and commit, which costs as much again as the spans."""

    def __init__(self, engine, span_tracer):
        import psycopg2.extensions
        from sqlalchemy import event

        url = engine.url
        database = f" {url.database}" if url.database else ""  # the span name's suffix
        constant = {"db.system": engine.dialect.name, "db.name": url.database or ""}
        if url.host:
            constant.update({"net.peer.name": url.host, "net.peer.port": url.port or 5432})

        def statement_span(statement):
            if not trace.get_current_span().is_recording():
                # Outside traced work, or in a trace sampled out: every sampler we offer would drop it
                # too (see _TracedWorkOnly), so not even a no-op span is made.
                return None
            statement = statement.decode() if isinstance(statement, bytes) else str(statement)
            verb = statement.split(None, 1)[0].upper() if statement.strip() else "SQL"
            return span_tracer.start_span(verb + database, kind=SpanKind.CLIENT, attributes={
                **constant, "db.statement": statement, "db.operation": verb})

        class TracedCursor(psycopg2.extensions.cursor):
            def execute(self, query, vars=None):
                return _within(statement_span(query), super().execute, query, vars)

            def executemany(self, query, vars_list):
                return _within(statement_span(query), super().executemany, query, vars_list)

        self.cursor_class = TracedCursor
        event.listen(engine, "connect", self._on_connect)  # a pool event: no dispatch per statement

    def _on_connect(self, dbapi_connection, connection_record):
        dbapi_connection.cursor_factory = self.cursor_class


def _within(span, call, *args):
    """call(*args), inside `span` if there is one (ended after it, an error if it raised)."""
    if span is None:
        return call(*args)
    with _ending(span):
        return call(*args)


class _ending:
    """Ends `span` on leaving; an error status first if an exception left the block."""

    def __init__(self, span):
        self._span = span

    def __enter__(self):
        return self._span

    def __exit__(self, kind, error, _):
        if error is not None:
            self._span.set_status(Status(StatusCode.ERROR, str(error)))
        self._span.end()
        return False


def current_traceparent():
    """The W3C traceparent of the active span, or None."""
    if not enabled():
        return None
    carrier = {}
    _propagator.inject(carrier)
    return carrier.get(TRACEPARENT_KEY)


def parent_context(traceparent, tracestate=None):
    """The context whose current span is the (remote) one a W3C `traceparent` names; an empty
    context when it is missing or malformed (then a new trace starts)."""
    carrier = {TRACEPARENT_KEY: traceparent or ""}
    if tracestate:
        carrier["tracestate"] = tracestate
    return _propagator.extract(carrier)


def with_traceparent(data):
    """`data` (context data, a dict) plus the active span's traceparent, if any."""
    traceparent = current_traceparent()
    return {**data, TRACEPARENT_KEY: traceparent} if traceparent else data


@contextmanager
def entry_spans(name, traceparents):
    """Around the block, a span `name` for each entry of a batch that carries a traceparent:
    in that entry's own trace (its request's), linked to the batch's span (the current one).
    Yields each entry's traceparent to pass on (its span's; as given where no span was made)."""
    if not enabled() or not any(traceparents):
        yield list(traceparents)
        return
    batch = trace.get_current_span().get_span_context()
    links = [Link(batch)] if batch.is_valid else []
    spans = [tracer().start_span(name, context=parent_context(traceparent), kind=SpanKind.INTERNAL, links=links)
             if traceparent else None for traceparent in traceparents]
    try:
        yield [_traceparent_of(span) if span is not None else traceparent
               for span, traceparent in zip(spans, traceparents)]
    finally:
        for span in spans:
            if span is not None:
                span.end()


def _traceparent_of(span):
    carrier = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get(TRACEPARENT_KEY)


def client_span(service, method):
    """A CLIENT span around one RPC call (a no-op context when tracing is off, or when the
    work making the call is not recorded: the callee still gets its traceparent and follows
    its sampled flag)."""
    if not enabled() or not trace.get_current_span().is_recording():
        return _NO_SPAN
    return tracer().start_as_current_span(f"{service}.{method}", kind=SpanKind.CLIENT, attributes={
        "rpc.system": "nameko", "rpc.service": service, "rpc.method": method})


def worker_ctx_with_traceparent(worker_ctx):
    """A copy of `worker_ctx` whose context data carries the active span's traceparent."""
    traced = copy.copy(worker_ctx)
    traced.data = with_traceparent(worker_ctx.data)
    return traced


class _NoSpan:
    def __enter__(self):
        return None

    def __exit__(self, *exc_info):
        return False


_NO_SPAN = _NoSpan()


class Tracing(DependencyProvider):
    """One span per worker: SERVER for an RPC, CONSUMER for an event, INTERNAL for
    a timer; the child of the caller's (or the event's) traceparent, if any."""

    def setup(self):
        self._spans = {}

    def worker_setup(self, worker_ctx):
        if not enabled():
            return
        entrypoint = worker_ctx.entrypoint
        kind = (SpanKind.SERVER if isinstance(entrypoint, Rpc)
                else SpanKind.CONSUMER if isinstance(entrypoint, EventHandler) else SpanKind.INTERNAL)
        parent = parent_context(worker_ctx.data.get(TRACEPARENT_KEY))
        span = tracer().start_span(f"{worker_ctx.service_name}.{entrypoint.method_name}", context=parent,
                                   kind=kind, attributes={"rpc.system": "nameko",
                                                          "rpc.service": worker_ctx.service_name,
                                                          "rpc.method": entrypoint.method_name})
        token = context.attach(trace.set_span_in_context(span))
        self._spans[worker_ctx] = (span, token)

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        opened = self._spans.get(worker_ctx)
        if opened is None or exc_info is None:
            return
        span, _ = opened
        error = exc_info[1]
        span.set_attribute("error.type", type(error).__name__)
        # A refusal the contract expects (4xx) is the call working; anything else is an error.
        if getattr(error, "http_status", 500) >= 500:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))

    def worker_teardown(self, worker_ctx):
        opened = self._spans.pop(worker_ctx, None)
        if opened is None:
            return
        span, token = opened
        context.detach(token)
        span.end()

    def stop(self):
        shutdown()
