"""How a service writes: one unit of work per `with self.uow as tx:`.

    with self.uow as tx:
        order = tx.store.get_order(order_id, lock=True)
        updated = order.change_status(new_status, caller, now)

Inside the block: one SQLAlchemy session and one transaction, the service's
store (its storage module's queries) bound to it, and the service's events,
written to its outbox table in that same transaction: those the aggregates the
store handed out recorded (a store lists them in `seen`; each keeps its
`events`, (event type, data) pairs), collected when the block ends, and any
written with `tx.emit`. Leaving the block commits; any exception rolls back
the whole of it. After a commit that wrote events, the outbox relay is woken,
so an event leaves as soon as its change is committed; no service method does
that itself.

Right before COMMIT the caller's deadline is checked (common/contract/context.py): a
change whose client has been (or is about to be) told 503/504 rolls back
instead (DeadlineExceeded). A lost or refused database connection before
COMMIT is ServiceUnavailable (503: rolled back, nothing changed); lost
during COMMIT it is OutcomeUnknown (504: the server may have committed).

For work that is one SQL statement (a read, or a write that is atomic on its
own), `with self.uow.single_statement() as store:` runs it in autocommit:
one round trip instead of three (no BEGIN, no COMMIT).

`UnitOfWork` is the Nameko DependencyProvider that owns the service's
database engine and its outbox relay (see common/kit/outbox.py).
"""
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from nameko.extensions import DependencyProvider
from nameko.standalone.events import get_event_exchange
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import sessionmaker

from common.contract.context import COMMIT_MARGIN_SECONDS, DEADLINE_KEY, REQUEST_ID_KEY, check_deadline
from common.contract.errors import OutcomeUnknown, ServiceUnavailable
from common.contract.settings import settings_of
from common.kit.batch_publisher import ConfirmedBatchPublisher
from common.kit.consumers import first_time, first_times
from common.kit.outbox import Outbox, OutboxRelay
from common.observability import metrics, tracing

# No pool_pre_ping (a round trip per transaction): after a Postgres restart the
# first transaction on a dead connection fails (503) and SQLAlchemy then
# replaces every pooled connection made before the failure.
# Transactions: one connection per Nameko worker (MAX_WORKERS) and a little slack.
# Single statements: a pool of their own, as many as there are workers kept: a
# smaller pool that opened more under load closed them again at once, and starting a
# Postgres backend for every few statements cost more CPU than the statements.
# The relay: RELAY_POOL. See connections_per_process.
POOL_SLACK = 2
RELAY_POOL = 2


def connections_per_process(max_workers):
    """The most Postgres connections one service process holds: what all instances together
    must fit into the server's max_connections."""
    return 2 * (max_workers + POOL_SLACK) + RELAY_POOL


@dataclass(frozen=True)
class StorageLayout:
    """What a service's storage module declares for its unit of work."""
    base: Any               # the SQLAlchemy declarative base of the service's schema
    store: type             # its queries: store(session)
    outbox: Any             # common.kit.outbox.outbox_model(base)
    processed_events: Any = None  # common.kit.consumers.processed_events_model(base), for consumers
    backlog: Any = None     # common.observability.metrics.Backlog: what it has yet to send, in its metrics


class Transaction:
    """One unit of work in progress: `store`, `session`, and the events it emits."""

    def __init__(self, session, layout, outbox, request_id):
        self.session = session
        self.store = layout.store(session)
        self._layout = layout
        self._outbox = outbox
        self._request_id = request_id
        self.emitted = 0

    def collect_new_events(self):
        """The events the store's aggregates recorded, each taken once, in the order recorded."""
        for aggregate in getattr(self.store, "seen", ()):
            while aggregate.events:
                yield aggregate.events.pop(0)

    def emit(self, event_type, data, request_id=None):
        """Write an event to the outbox in this transaction (sent after the commit).
        `request_id`: the request it is part of, when not the worker's (a batch
        consumer passes each incoming event's)."""
        self._outbox.add(self.session, self.event_row(event_type, data, request_id))

    def emit_all(self, events):
        """`emit` for many (event_type, data) at once: one INSERT for all of them."""
        self._outbox.add(self.session, [self.event_row(event_type, data) for event_type, data in events])

    def event_row(self, event_type, data, request_id=None, traceparent=None):
        """The outbox row of an event, for a store method that writes it in one
        statement with the change itself (one round trip fewer). A batch gives each
        entry's own request id and trace context (default: the worker's)."""
        self.emitted += 1
        return Outbox.row(event_type, data, request_id or self._request_id, traceparent)

    def first_time(self, event_id, handler):
        """Record that `handler` handled `event_id`; False if it had before."""
        return first_time(self.session, self._layout.processed_events, event_id, handler)

    def first_times(self, event_ids, handler):
        """`first_time` for a batch, in one statement: the set of `event_ids` `handler` had not handled."""
        return first_times(self.session, self._layout.processed_events, event_ids, handler)


class WorkerUnitOfWork:
    """What a worker sees as `self.uow`."""

    def __init__(self, provider, request_id, deadline):
        self._provider = provider
        self._request_id = request_id
        self._deadline = deadline
        self._open = None

    def __enter__(self):
        if self._open is not None:
            raise RuntimeError("one unit of work at a time per worker")
        self._open = self.transaction()
        return self._open.__enter__()

    def __exit__(self, *exc_info):
        opened, self._open = self._open, None
        return opened.__exit__(*exc_info)

    @contextmanager
    def transaction(self):
        provider = self._provider
        session = provider.sessions()
        tx = Transaction(session, provider.layout, provider.outbox, self._request_id)
        try:
            try:
                yield tx
                for event_type, data in tx.collect_new_events():
                    tx.emit(event_type, data)
                session.flush()
                check_deadline(self._deadline, COMMIT_MARGIN_SECONDS, "committing")
            except BaseException as exc:
                _rollback_quietly(session)
                _raise_unavailable_if_connection_lost(exc)
                raise
            try:
                session.commit()
            except DBAPIError as exc:
                _rollback_quietly(session)
                if _connection_lost(exc):
                    raise OutcomeUnknown("The database connection was lost during COMMIT: the change may or "
                                         "may not have been made.", {"database": "commit outcome unknown"}) from None
                raise
        finally:
            session.close()
        if tx.emitted:
            provider.relay.wake()

    @contextmanager
    def single_statement(self):
        session = self._provider.autocommit_sessions()
        try:
            yield self._provider.layout.store(session)
        except BaseException as exc:
            _raise_unavailable_if_connection_lost(exc)
            raise
        finally:
            session.close()


class UnitOfWork(DependencyProvider):
    """The service's database (DATABASE_URL) and outbox relay; `self.uow` in workers."""

    def __init__(self, layout):
        self.layout = layout

    def setup(self):
        settings = settings_of(self.container)
        self.engine = tracing.instrument_engine(create_engine(
            settings.database_url, pool_size=settings.max_workers, max_overflow=POOL_SLACK))
        self.sessions = sessionmaker(bind=self.engine, expire_on_commit=False)
        # Single statements on a pool of their own, in autocommit from connect: switching a pooled
        # connection to autocommit and back cost two more round trips per statement.
        self.autocommit_engine = tracing.instrument_engine(create_engine(
            settings.database_url, isolation_level="AUTOCOMMIT", pool_size=settings.max_workers,
            max_overflow=POOL_SLACK))
        self.autocommit_sessions = sessionmaker(bind=self.autocommit_engine, expire_on_commit=False)
        self.outbox = Outbox(self.layout.outbox)
        exchange = get_event_exchange(self.container.service_name, self.container.config)
        relay_engine = create_engine(settings.database_url, pool_size=RELAY_POOL, max_overflow=0)  # not traced: no request
        metrics.watch_storage(self.container.service_name, settings.metrics_port, self.engine, relay_engine,
                              self.layout.outbox, self.layout.backlog)
        self.relay = OutboxRelay(
            self.layout.outbox, relay_engine,
            ConfirmedBatchPublisher(settings.amqp_uri, exchange),
            interval=settings.outbox_relay_interval, gather_seconds=settings.outbox_gather_seconds,
            retention_hours=settings.outbox_retention_hours,
            dedup=None if self.layout.processed_events is None else (
                self.layout.processed_events, timedelta(hours=settings.event_dedup_retention_hours)))

    def start(self):
        self.relay.start(self.container.spawn_managed_thread)

    def stop(self):
        # Workers have finished by now: the relay's last pass sends what they wrote.
        self.relay.stop()
        self.engine.dispose()
        self.autocommit_engine.dispose()

    def kill(self):
        self.relay.kill()
        self.engine.dispose()
        self.autocommit_engine.dispose()

    def get_dependency(self, worker_ctx):
        return WorkerUnitOfWork(self, worker_ctx.data.get(REQUEST_ID_KEY), worker_ctx.data.get(DEADLINE_KEY))


def _connection_lost(exc):
    return (isinstance(exc, DBAPIError) and not isinstance(exc, IntegrityError)
            and (exc.connection_invalidated or _is_connection_error(exc)))


def _raise_unavailable_if_connection_lost(exc):
    if _connection_lost(exc):
        raise ServiceUnavailable("The database is unavailable.", {"database": "unreachable"}) from None


def _rollback_quietly(session):
    # On a dead connection rollback fails too; the original error matters more.
    try:
        session.rollback()
    except DBAPIError:
        pass


def _is_connection_error(exc):
    import psycopg2

    return isinstance(exc.orig, (psycopg2.OperationalError, psycopg2.InterfaceError))
