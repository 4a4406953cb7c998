"""Transactional outbox: an event exists if and only if its change committed.

A service writes the event row in the same transaction as the change and,
after the commit, wakes its `OutboxRelay` (both done by its unit of work,
common/kit/unit_of_work.py). The relay is one background greenthread per service
process: woken after each commit and every OUTBOX_RELAY_INTERVAL seconds, it
publishes due rows in batches, waits for the broker to confirm the whole
batch (publisher confirms), marks them sent, and backs off the rows of a
batch the broker would not take.
Rows are locked with SKIP LOCKED, so several instances of a service
never send one row at once. Publishing is at-least-once (a crash between
publish and mark resends): consumers deduplicate by `event_id`.

Publishing off the request path keeps an order's reply from waiting on the
broker's confirm, and batching marks many rows sent in one UPDATE.
"""
import json
import logging
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from functools import partial

from sqlalchemy import Index, Integer, String, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import DateTime

from common.contract.context import REQUEST_ID_KEY
from common.contract.events import make_envelope
from common.kit.db import MAX_PRUNING_SECONDS, bounded_delete, prune_in_batches
from common.observability.tracing import TRACEPARENT_KEY, current_traceparent

log = logging.getLogger(__name__)

PRUNE_EVERY_SECONDS = 3600
BATCH_SIZE = 200

MAX_BACKOFF_SECONDS = 60


def outbox_model(base):
    """The `outbox` table in `base`'s schema (each service has its own)."""

    class OutboxEvent(base):
        __tablename__ = "outbox"
        __table_args__ = (
            Index("ix_outbox_pending", "next_attempt_at", postgresql_where=text("sent_at IS NULL")),
        )

        event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
        event_type: Mapped[str] = mapped_column(String(64))
        payload: Mapped[dict] = mapped_column(JSONB)
        created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
        next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
        attempts: Mapped[int] = mapped_column(Integer, default=0)
        sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
        # The trace context of the change that wrote the event (W3C traceparent), if traced.
        traceparent: Mapped[str | None] = mapped_column(String(64))

    return OutboxEvent


class Outbox:
    """Writes event rows into one service's outbox table."""

    def __init__(self, model):
        self.model = model
        # Built once: SQLAlchemy then reuses its compiled form for every event.
        self._insert = insert(model.__table__)

    def add(self, session, rows):
        """Write `rows` (one dict, see `row`, or a list of them) in the caller's transaction;
        a list goes in one multi-row INSERT."""
        if rows:
            session.connection().execute(self._insert, rows)

    @staticmethod
    def arrays(rows):
        """`rows` (see `row`) as one array per column, the parameters of a statement that
        writes them with `unnest` (its text the same for any number of events)."""
        return {"event_ids": [str(row["event_id"]) for row in rows],
                "event_types": [row["event_type"] for row in rows],
                "payloads": [json.dumps(row["payload"]) for row in rows],
                "event_times": [row["created_at"] for row in rows],
                "due": [row["next_attempt_at"] for row in rows],
                "traceparents": [row["traceparent"] for row in rows]}

    @staticmethod
    def row(event_type, data, request_id=None, traceparent=None):
        """The outbox row of a new event; its trace context the active span's unless given."""
        envelope = make_envelope(event_type, data, request_id)
        now = datetime.now(timezone.utc)
        return {"event_id": uuid.UUID(envelope["event_id"]), "event_type": event_type, "payload": envelope,
                "created_at": now, "next_attempt_at": now, "attempts": 0,
                "traceparent": traceparent or current_traceparent()}


class OutboxRelay:
    """A service's background publisher of its outbox (one greenthread).

    Owned by the service's UnitOfWork, which wakes it after each commit that
    wrote events.
    """

    def __init__(self, model, engine, publisher, interval, gather_seconds, retention_hours, dedup=None):
        """`dedup`: (a consumer's processed_events model, how long its records are kept: timedelta)."""
        self.model = model
        self.dedup = dedup
        self.engine = engine
        self.publisher = publisher
        self.interval = interval
        self.gather_seconds = gather_seconds
        self.retention = timedelta(hours=retention_hours)
        self._wake = threading.Event()  # green under eventlet's monkey patching
        self._running = False
        self._thread = None

    def start(self, spawn):
        """spawn: e.g. the container's spawn_managed_thread."""
        self._running = True
        self._thread = spawn(self._run, identifier="outbox_relay")

    def stop(self):
        # One last pass sends what the (finished) workers wrote.
        self._running = False
        self._wake.set()
        if self._thread is not None:
            self._thread.wait()
        self._close()

    def kill(self):
        self._running = False
        self._close()

    def wake(self):
        self._wake.set()

    def _close(self):
        self.publisher.close()
        self.engine.dispose()

    def _run(self):
        last_prune = time.monotonic()
        while True:
            if self._wake.wait(self.interval) and self._running:
                # Let the commits of the next few milliseconds join this batch:
                # one SELECT and one UPDATE for many events instead of each.
                time.sleep(self.gather_seconds)
            self._wake.clear()
            try:
                while self.relay_batch() == BATCH_SIZE:
                    pass
                if time.monotonic() - last_prune > PRUNE_EVERY_SECONDS:
                    self.prune()
                    last_prune = time.monotonic()
            except Exception as exc:  # database or broker down: keep trying, never die
                log.warning("outbox relay: %r; retrying", exc)
            if not self._running:
                return
    def relay_batch(self):
        """Publish up to BATCH_SIZE due events, oldest first; the number of rows looked at."""
        model = self.model
        now = datetime.now(timezone.utc)
        with self.engine.begin() as connection:
            rows = connection.execute(
                select(model.event_id, model.event_type, model.payload, model.traceparent)
                .where(model.sent_at.is_(None), model.next_attempt_at <= now)
                .order_by(model.created_at).limit(BATCH_SIZE).with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return 0
            batch = model.event_id.in_([row.event_id for row in rows])
            try:
                self.publisher.publish([(row.event_type, row.payload, _headers(row)) for row in rows])
            except Exception as exc:
                # Nothing of this batch counts as sent (consumers deduplicate
                # what the broker did take); each row backs off on its own count.
                connection.execute(update(model).where(batch).values(
                    attempts=model.attempts + 1,
                    next_attempt_at=now + func.make_interval(0, 0, 0, 0, 0, 0, func.least(
                        func.power(2, model.attempts + 1), MAX_BACKOFF_SECONDS))))
                log.warning("%d event(s) not published (next attempt in 2-%ss): %r",
                            len(rows), MAX_BACKOFF_SECONDS, exc)
                return 0
            connection.execute(update(model).where(batch).values(sent_at=datetime.now(timezone.utc)))
        return len(rows)

    def prune(self):
        """Delete events sent longer ago than the retention and, for a consumer, the dedup records
        of events handled longer ago than theirs, a bounded batch per transaction; the rows deleted."""
        now = datetime.now(timezone.utc)
        stop_at = time.monotonic() + MAX_PRUNING_SECONDS
        doomed = [bounded_delete(self.model, self.model.sent_at, now - self.retention)]
        if self.dedup is not None:
            model, retention = self.dedup
            doomed.append(bounded_delete(model, model.processed_at, now - retention))
        deleted = sum(prune_in_batches(partial(self._delete, statement), stop_at) for statement in doomed)
        if deleted:
            log.info("pruned %d sent events and dedup records past their retention", deleted)
        return deleted

    def _delete(self, statement):
        with self.engine.begin() as connection:
            return connection.execute(statement).rowcount


def _headers(row):
    """Context data for the consumers (nameko reads `nameko.<key>` headers into it):
    the request id and the trace context of the change that caused the event."""
    headers = {f"nameko.{REQUEST_ID_KEY}": row.payload.get("request_id")}
    if row.traceparent:
        headers[f"nameko.{TRACEPARENT_KEY}"] = row.traceparent
    return {key: value for key, value in headers.items() if value is not None}
