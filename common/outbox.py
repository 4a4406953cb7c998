"""Transactional outbox: an event exists if and only if its change committed.

A service writes the event row in the same transaction as the change
(`Outbox.add`). After the commit it publishes at once (`Outbox.relay` with
the new ids); a Nameko timer (`OutboxRelay`) publishes whatever that missed
(broker down, process killed between commit and publish), with backoff,
until the broker confirms it. Publishing is at-least-once: consumers
deduplicate by `event_id`.
"""
import logging
import os
import uuid
from datetime import datetime, timedelta, timezone

from nameko.timer import timer
from sqlalchemy import Index, Integer, String, delete, select, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import DateTime

from common.db import transaction
from common.errors import ServiceUnavailable
from common.events import make_envelope

log = logging.getLogger(__name__)

RELAY_INTERVAL_SECONDS = float(os.environ.get("OUTBOX_RELAY_INTERVAL", "1"))
# The timer leaves fresh rows to the after-commit publish for this long.
FRESH_GRACE = timedelta(seconds=2)
RETENTION = timedelta(hours=float(os.environ.get("OUTBOX_RETENTION_HOURS", "168")))
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

    return OutboxEvent


class Outbox:
    def __init__(self, model):
        self.model = model

    def add(self, session, event_type, data, request_id=None):
        """Record an event in the caller's transaction; returns its envelope."""
        envelope = make_envelope(event_type, data, request_id)
        now = datetime.now(timezone.utc)
        session.add(self.model(event_id=uuid.UUID(envelope["event_id"]), event_type=event_type,
                               payload=envelope, created_at=now, next_attempt_at=now + FRESH_GRACE,
                               attempts=0))
        return envelope

    def relay(self, db, dispatch, event_ids=None):
        """Publish unsent events (the given ones, or all that are due); the number sent.

        Rows are locked with SKIP LOCKED, so the after-commit publish, the
        timer and other instances of the service never send one row at once.
        """
        model = self.model
        now = datetime.now(timezone.utc)
        query = select(model).where(model.sent_at.is_(None))
        if event_ids is not None:
            query = query.where(model.event_id.in_(event_ids))
        else:
            query = query.where(model.next_attempt_at <= now)
        query = query.order_by(model.created_at).limit(BATCH_SIZE).with_for_update(skip_locked=True)
        sent = 0
        with transaction(db) as session:
            for row in session.scalars(query):
                try:
                    dispatch(row.event_type, row.payload)
                except Exception as exc:
                    row.attempts += 1
                    delay = min(2 ** row.attempts, MAX_BACKOFF_SECONDS)
                    row.next_attempt_at = now + timedelta(seconds=delay)
                    log.warning("event %s not published (attempt %d, next in %ss): %r",
                                row.event_id, row.attempts, delay, exc)
                    break  # the broker is likely down: the rest waits for the timer
                row.sent_at = datetime.now(timezone.utc)
                sent += 1
        return sent

    def prune(self, db, retention=RETENTION):
        """Delete events sent longer ago than `retention`."""
        cutoff = datetime.now(timezone.utc) - retention
        with transaction(db) as session:
            session.execute(delete(self.model).where(self.model.sent_at < cutoff))


class OutboxRelay:
    """Mixed into a service that has `db`, `dispatch` and `outbox`: the relay timers."""

    @timer(interval=RELAY_INTERVAL_SECONDS)
    def relay_outbox(self):
        try:
            self.outbox.relay(self.db, self.dispatch)
        except ServiceUnavailable:
            log.warning("outbox relay: the database is unavailable; retrying")

    @timer(interval=3600)
    def prune_outbox(self):
        self.outbox.prune(self.db)

    def publish_now(self, envelopes):
        """After commit: try to publish these events at once (the timer retries on failure)."""
        if envelopes:
            try:
                self.outbox.relay(self.db, self.dispatch, [e["event_id"] for e in envelopes])
            except Exception:
                log.exception("after-commit publish failed; the relay timer will retry")
