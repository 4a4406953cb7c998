"""Transactional outbox: an event exists if and only if its change committed.

A service writes the event row in the same transaction as the change
(`Outbox.add`) and, after the commit, wakes its `OutboxRelay`. The relay is
one background greenthread per service process: woken after each commit and
every OUTBOX_RELAY_INTERVAL seconds, it publishes due rows in batches,
waits for the broker to confirm the whole batch (publisher confirms), marks
them sent, and backs off the rows of a batch the broker would not take.
Rows are locked with SKIP LOCKED, so several instances of a service
never send one row at once. Publishing is at-least-once (a crash between
publish and mark resends): consumers deduplicate by `event_id`.

Publishing off the request path keeps an order's reply from waiting on the
broker's confirm, and batching marks many rows sent in one UPDATE.
"""
import logging
import os
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.extensions import DependencyProvider
from nameko.standalone.events import get_event_exchange
from nameko_sqlalchemy.database import DB_URIS_KEY
from sqlalchemy import Index, Integer, String, create_engine, delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import DateTime

from common.batch_publisher import ConfirmedBatchPublisher
from common.events import make_envelope

log = logging.getLogger(__name__)

RELAY_INTERVAL_SECONDS = float(os.environ.get("OUTBOX_RELAY_INTERVAL", "1"))
RETENTION = timedelta(hours=float(os.environ.get("OUTBOX_RETENTION_HOURS", "168")))
PRUNE_EVERY_SECONDS = 3600
BATCH_SIZE = 200
GATHER_SECONDS = float(os.environ.get("OUTBOX_GATHER_SECONDS", "0.05"))
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

    return OutboxEvent


class Outbox:
    def __init__(self, model):
        self.model = model
        # Built once: SQLAlchemy then reuses its compiled form for every event.
        self._insert = insert(model.__table__)

    def add(self, session, event_type, data, request_id=None):
        """Record an event in the caller's transaction."""
        session.connection().execute(self._insert, self.row(event_type, data, request_id))

    @staticmethod
    def row(event_type, data, request_id=None):
        """The outbox row of a new event, for a storage module that writes it
        in one statement with the change itself (one round trip fewer)."""
        envelope = make_envelope(event_type, data, request_id)
        now = datetime.now(timezone.utc)
        return {"event_id": uuid.UUID(envelope["event_id"]), "event_type": event_type, "payload": envelope,
                "created_at": now, "next_attempt_at": now, "attempts": 0}


class OutboxRelay(DependencyProvider):
    """The service's background publisher; `self.<name>.wake()` after a commit with events."""

    def __init__(self, outbox):
        self.model = outbox.model
        self._wake = threading.Event()  # green under eventlet's monkey patching
        self._running = False

    def setup(self):
        config = self.container.config
        base_name = self.model.__mro__[1].__name__  # the service's declarative base
        db_uri = config[DB_URIS_KEY][f"{self.container.service_name}:{base_name}"]
        self.engine = create_engine(db_uri, pool_size=2, max_overflow=0)
        exchange = get_event_exchange(self.container.service_name, config)
        self.publisher = ConfirmedBatchPublisher(config[AMQP_URI_CONFIG_KEY], exchange)

    def start(self):
        self._running = True
        self._thread = self.container.spawn_managed_thread(self._run, identifier="outbox_relay")

    def stop(self):
        # Workers have finished by now: one last pass sends what they wrote.
        self._running = False
        self._wake.set()
        self._thread.wait()
        self.publisher.close()
        self.engine.dispose()

    def kill(self):
        self._running = False
        self.publisher.close()
        self.engine.dispose()

    def get_dependency(self, worker_ctx):
        return self

    def wake(self):
        self._wake.set()

    def _run(self):
        last_prune = time.monotonic()
        while True:
            if self._wake.wait(RELAY_INTERVAL_SECONDS) and self._running:
                # Let the commits of the next few milliseconds join this batch:
                # one SELECT and one UPDATE for many events instead of each.
                time.sleep(GATHER_SECONDS)
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
                select(model.event_id, model.event_type, model.payload)
                .where(model.sent_at.is_(None), model.next_attempt_at <= now)
                .order_by(model.created_at).limit(BATCH_SIZE).with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return 0
            batch = model.event_id.in_([row.event_id for row in rows])
            try:
                self.publisher.publish([(row.event_type, row.payload) for row in rows])
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

    def prune(self, retention=RETENTION):
        """Delete events sent longer ago than `retention`."""
        with self.engine.begin() as connection:
            connection.execute(delete(self.model).where(
                self.model.sent_at < datetime.now(timezone.utc) - retention))
