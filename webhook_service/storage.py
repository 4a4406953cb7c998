"""webhooks schema: the SQLAlchemy models and `WebhookStore`, its queries.

- `webhooks`: the subscriptions, their secret encrypted (Fernet, WEBHOOK_SECRET_KEY);
- `webhook_versions`: what each webhook was subscribed to from when on (a row per create,
  and per change of `enabled` or `event_types`), so an event is matched against the
  webhook as it was when the event occurred, however late the event is handled;
- `events`: the envelope of each event some webhook was subscribed to, as its bytes are
  sent on every attempt; its event id is the event's dedup record;
- `deliveries`: one per (event, webhook), written with the event in one statement, then
  claimed by the sender under a lease like notifications (see notification_service/storage.py):
  one committed statement gives due rows a claim token and the time the claim lasts
  until; each outcome is recorded only while the row is under the claim that sent it.

Which event types reach the service at all is decided here too (`wanted_event_types`, under
`lock_bindings`; see bindings.py): those some webhook is, or was a moment ago, enabled for.

Deliveries that ended (delivered or failed) and events no delivery needs any more are pruned
WEBHOOK_RETENTION_DAYS after they last changed / arrived, in bounded batches (`prune_deliveries`,
`prune_events`); a pending delivery, and so its event, is never pruned.
"""
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    delete,
    func,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import DateTime

from common.kit.outbox import outbox_model
from common.kit.unit_of_work import StorageLayout
from common.observability.metrics import Backlog

SCHEMA = "webhooks"


class WebhooksBase(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Webhook(WebhooksBase):
    __tablename__ = "webhooks"
    __table_args__ = (
        Index("ix_webhooks_created", text("created_at DESC"), text("id DESC")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    host: Mapped[str] = mapped_column(String(255))  # the URL's, lower case: concurrency is bounded per host
    event_types: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    description: Mapped[str | None] = mapped_column(String(500))
    enabled: Mapped[bool] = mapped_column(Boolean)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    secret_encrypted: Mapped[str] = mapped_column(Text)
    # Since when every attempt failed (None: the last one succeeded, or none failed yet).
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebhookVersion(WebhooksBase):
    __tablename__ = "webhook_versions"
    __table_args__ = (
        Index("ix_webhook_versions_in_force", "webhook_id", text("valid_from DESC")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    webhook_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), ForeignKey("webhooks.id", ondelete="CASCADE"))
    valid_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    enabled: Mapped[bool] = mapped_column(Boolean)
    event_types: Mapped[list[str]] = mapped_column(ARRAY(String(64)))


class Event(WebhooksBase):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_received", "received_at"),  # pruning: the oldest first
    )

    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    event_type: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    body: Mapped[str] = mapped_column(Text)  # the envelope's JSON, byte for byte what every attempt posts
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Delivery(WebhooksBase):
    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "webhook_id", name="deliveries_event_webhook_key"),
        CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="delivery_status"),
        CheckConstraint("attempts >= attempts_before_resend AND attempts_before_resend >= 0",
                        name="delivery_attempts_counted"),
        CheckConstraint("(claim_token IS NULL) = (claimed_until IS NULL)", name="delivery_claim_whole"),
        Index("ix_deliveries_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
        Index("ix_deliveries_webhook_created", "webhook_id", text("created_at DESC"), text("id DESC")),
        Index("ix_deliveries_event", "event_id"),
        # Pruning: those that ended, the longest ago first (pending ones are never pruned).
        Index("ix_deliveries_ended", "updated_at", postgresql_where=text("status <> 'pending'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), ForeignKey("events.event_id"))
    webhook_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    # `attempts` when an admin last re-sent it: WEBHOOK_MAX_ATTEMPTS counts from there.
    attempts_before_resend: Mapped[int] = mapped_column(Integer)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claim_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


Outbox = outbox_model(WebhooksBase)

# Built once: every event of the system runs it. One statement for a batch of events of one type:
# find the webhooks subscribed to the type as they were when each event occurred (the version in
# force at its occurred_at), record the events some webhook wants (the id is the dedup: a redelivery
# inserts nothing; in id order, so overlapping batches never deadlock) and, for those that were new,
# one pending delivery per webhook. With no webhook subscribed it writes nothing.
_RECORD_DELIVERIES = text(f"""
WITH batch AS (
    SELECT * FROM unnest(CAST(:event_ids AS uuid[]), CAST(:occurred_ats AS timestamptz[]), CAST(:bodies AS text[]))
        AS event(event_id, occurred_at, body)
), matching AS (
    SELECT DISTINCT batch.event_id, in_force.webhook_id
    FROM batch CROSS JOIN LATERAL (
        SELECT DISTINCT ON (webhook_id) webhook_id, enabled, event_types
        FROM {SCHEMA}.webhook_versions
        WHERE valid_from <= batch.occurred_at
        ORDER BY webhook_id, valid_from DESC, id DESC) AS in_force
    WHERE in_force.enabled AND CAST(:event_type AS varchar) = ANY(in_force.event_types)
), first_time AS (
    INSERT INTO {SCHEMA}.events (event_id, event_type, occurred_at, body, received_at)
    SELECT DISTINCT ON (batch.event_id) batch.event_id, :event_type, batch.occurred_at, batch.body, :now
    FROM batch WHERE batch.event_id IN (SELECT event_id FROM matching)
    ORDER BY batch.event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
)
INSERT INTO {SCHEMA}.deliveries (id, event_id, webhook_id, event_type, status, attempts, attempts_before_resend,
                                 next_attempt_at, created_at, updated_at)
SELECT gen_random_uuid(), matching.event_id, matching.webhook_id, :event_type, 'pending', 0, 0, :now, :now, :now
FROM matching JOIN first_time ON first_time.event_id = matching.event_id
ON CONFLICT ON CONSTRAINT deliveries_event_webhook_key DO NOTHING
RETURNING id
""")

# The sender's claim: due pending deliveries of enabled webhooks that no claim holds, oldest due
# first, at most :per_host per host counting those already in flight (:hosts, :in_flight), at
# most :limit in all. Rows another claim is taking now are skipped, not waited for. The answer
# carries what sending needs: the webhook's URL and secret, the event's body.
_CLAIM_DUE = text(f"""
WITH busy AS (
    SELECT * FROM unnest(CAST(:hosts AS varchar[]), CAST(:in_flight AS int[])) AS busy(host, in_flight)
), due AS MATERIALIZED (
    SELECT d.id, w.host, d.next_attempt_at
    FROM {SCHEMA}.deliveries d JOIN {SCHEMA}.webhooks w ON w.id = d.webhook_id
    WHERE d.status = 'pending' AND d.next_attempt_at <= :now
      AND (d.claimed_until IS NULL OR d.claimed_until <= :now) AND w.enabled
      AND NOT EXISTS (SELECT FROM busy WHERE busy.host = w.host AND busy.in_flight >= :per_host)
    ORDER BY d.next_attempt_at
    LIMIT :scan
    FOR UPDATE OF d SKIP LOCKED
), picked AS (
    SELECT ranked.id FROM (
        SELECT due.id, due.next_attempt_at, coalesce(busy.in_flight, 0) AS in_flight,
               row_number() OVER (PARTITION BY due.host ORDER BY due.next_attempt_at) AS rank
        FROM due LEFT JOIN busy ON busy.host = due.host) AS ranked
    WHERE ranked.rank <= :per_host - ranked.in_flight
    ORDER BY ranked.next_attempt_at
    LIMIT :limit
)
UPDATE {SCHEMA}.deliveries d SET claim_token = :token, claimed_until = :until
FROM picked, {SCHEMA}.webhooks w, {SCHEMA}.events e
WHERE d.id = picked.id AND w.id = d.webhook_id AND e.event_id = d.event_id
RETURNING d.id, d.webhook_id, d.event_id, d.attempts, d.attempts_before_resend, d.next_attempt_at, d.claim_token,
          w.url, w.host, w.secret_encrypted, e.body
""")


# Pruning, one bounded batch per statement, the oldest first. Rows another transaction holds (an
# admin's re-send, a delivery being recorded for an event) are skipped, not waited for.
_PRUNE_DELIVERIES = text(f"""
DELETE FROM {SCHEMA}.deliveries WHERE id IN (
    SELECT id FROM {SCHEMA}.deliveries
    WHERE status <> 'pending' AND updated_at < :before
    ORDER BY updated_at LIMIT :limit
    FOR UPDATE SKIP LOCKED)
""")
# An event goes once no delivery refers to it: those of a webhook that was deleted, or that were
# pruned; a pending delivery keeps its event (and its dedup) however old.
_PRUNE_EVENTS = text(f"""
DELETE FROM {SCHEMA}.events WHERE event_id IN (
    SELECT e.event_id FROM {SCHEMA}.events e
    WHERE e.received_at < :before
      AND NOT EXISTS (SELECT FROM {SCHEMA}.deliveries d WHERE d.event_id = e.event_id)
    ORDER BY e.received_at LIMIT :limit
    FOR UPDATE SKIP LOCKED)
""")

# The event types some webhook wants, under any version of it in force at :since or later (the current
# one, or one that a later version took over from after :since): an event that occurred while the
# version was in force may still be on its way (in its emitter's outbox), and is to be delivered.
_WANTED_EVENT_TYPES = text(f"""
SELECT DISTINCT unnest(v.event_types) AS event_type
FROM {SCHEMA}.webhook_versions v
WHERE v.enabled AND NOT EXISTS (
    SELECT FROM {SCHEMA}.webhook_versions later
    WHERE later.webhook_id = v.webhook_id AND (later.valid_from, later.id) > (v.valid_from, v.id)
      AND later.valid_from <= :since)
""")
# The advisory lock every decision to bind or unbind an event type's queue is taken under (see lock_bindings).
_BINDINGS_LOCK = "webhooks.bindings"


@dataclass(frozen=True)
class Claimed:
    """A delivery the sender claimed, with what sending it needs."""
    id: uuid.UUID
    webhook_id: uuid.UUID
    event_id: uuid.UUID
    attempts: int
    attempts_before_resend: int
    next_attempt_at: datetime
    claim_token: uuid.UUID
    url: str
    host: str
    secret_encrypted: str
    body: str


class WebhookStore:
    """The webhooks schema's queries, on one session (see common/kit/unit_of_work.py)."""

    def __init__(self, session):
        self.session = session

    # -- the event path ----------------------------------------------------------------

    def record_deliveries(self, event_type, events, now):
        """For each of `events` ((event_id, occurred_at, body), all of `event_type`), one pending
        delivery to each webhook subscribed to it when it occurred, unless the event was recorded
        before; their ids. One statement for the batch."""
        result = self.session.connection().execute(_RECORD_DELIVERIES, {
            "event_ids": [str(event_id) for event_id, _, _ in events],
            "occurred_ats": [occurred_at for _, occurred_at, _ in events],
            "bodies": [body for _, _, body in events], "event_type": event_type, "now": now})
        return [row.id for row in result]

    def lock_bindings(self):
        """Serialize the decisions to bind or unbind event types' queues, till the end of the transaction:
        a webhook that wants a type is committed before another process reads what is wanted, or after
        that process is done unbinding."""
        self.session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(_BINDINGS_LOCK, 0))))

    def wanted_event_types(self, since):
        """The event types some enabled webhook subscribes to now, or did at some moment from `since` on."""
        return {row.event_type for row in self.session.execute(_WANTED_EVENT_TYPES, {"since": since})}

    # -- webhooks ----------------------------------------------------------------------------

    def insert_webhook(self, webhook_id, fields, host, secret_encrypted, now):
        """A new webhook (fields: url, event_types, description, enabled) in force from `now`;
        None when one with this id exists."""
        webhook = Webhook(id=webhook_id, host=host, secret_encrypted=secret_encrypted, disabled_reason=None,
                          failing_since=None, created_at=now, updated_at=now, **fields)
        self.session.add(webhook)
        self._new_version(webhook, now)
        self.session.flush()
        return webhook

    def get_webhook(self, webhook_id, lock=False):
        query = select(Webhook).where(Webhook.id == webhook_id)
        if lock:
            query = query.with_for_update()
        return self.session.scalars(query).first()

    def lock_webhook_id(self, webhook_id):
        """Serialize the runs of one create attempt (a transaction-scoped advisory lock on its id)."""
        self.session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(str(webhook_id), 0))))

    def list_webhooks(self, filters, limit, after=None):
        """Newest first; `after` is the (created_at, id) of the last seen."""
        query = select(Webhook).order_by(Webhook.created_at.desc(), Webhook.id.desc()).limit(limit)
        if after is not None:
            query = query.where(tuple_(Webhook.created_at, Webhook.id) < tuple_(*after))
        return self.session.scalars(query).all()

    def update_webhook(self, webhook, changes, now):
        """Apply `changes` (url, host, event_types, description, enabled, disabled_reason,
        failing_since); a change of what it is subscribed to is in force from `now`."""
        subscribed = (webhook.enabled, list(webhook.event_types))
        for name, value in changes.items():
            setattr(webhook, name, value)
        webhook.updated_at = now
        if (webhook.enabled, list(webhook.event_types)) != subscribed:
            self._new_version(webhook, now)
        self.session.flush()
        return webhook

    def delete_webhook(self, webhook):
        """The webhook, its versions and its deliveries (its events go when pruning finds no delivery needs them)."""
        self.session.execute(delete(Webhook).where(Webhook.id == webhook.id))

    def _new_version(self, webhook, now):
        self.session.add(WebhookVersion(webhook_id=webhook.id, valid_from=now, enabled=webhook.enabled,
                                        event_types=list(webhook.event_types)))

    def note_delivered(self, webhook_id):
        """The webhook's last attempt succeeded: it is failing no more."""
        self.session.execute(update(Webhook).where(Webhook.id == webhook_id, Webhook.failing_since.is_not(None))
                             .values(failing_since=None), execution_options={"synchronize_session": False})

    def note_failed(self, webhook_id, now):
        """The webhook's last attempt failed: failing since the first failure after its last success.
        The webhook as it is now (locked till the end of the transaction); None if it was deleted."""
        return self.session.scalars(
            update(Webhook).where(Webhook.id == webhook_id)
            .values(failing_since=func.coalesce(Webhook.failing_since, now)).returning(Webhook),
            execution_options={"synchronize_session": False, "populate_existing": True}).first()

    # -- deliveries -------------------------------------------------------------------------

    def get_delivery(self, webhook_id, delivery_id, lock=False):
        query = select(Delivery).where(Delivery.id == delivery_id, Delivery.webhook_id == webhook_id)
        if lock:
            query = query.with_for_update()
        return self.session.scalars(query).first()

    def list_deliveries(self, webhook_id, filters, limit, after=None):
        """A webhook's deliveries, newest first; filters: status."""
        query = (select(Delivery).where(Delivery.webhook_id == webhook_id)
                 .order_by(Delivery.created_at.desc(), Delivery.id.desc()).limit(limit))
        if "status" in filters:
            query = query.where(Delivery.status == filters["status"])
        if after is not None:
            query = query.where(tuple_(Delivery.created_at, Delivery.id) < tuple_(*after))
        return self.session.scalars(query).all()

    def resend(self, delivery, now):
        """The delivery pending again, due now, with a new round of attempts; its claim released (an
        attempt in flight under it records nothing)."""
        delivery.status = "pending"
        delivery.attempts_before_resend = delivery.attempts
        delivery.next_attempt_at = now
        delivery.claim_token = delivery.claimed_until = None
        delivery.updated_at = now
        self.session.flush()
        return delivery

    # -- the sender --------------------------------------------------------------------

    def claim_due(self, now, until, limit, per_host, in_flight):
        """Claim up to `limit` due deliveries until `until`, at most `per_host` per host counting
        `in_flight` ({host: deliveries being sent}). One statement: run it in autocommit
        (`uow.single_statement()`), so the claim is committed before anything is sent."""
        hosts = list(in_flight)
        rows = self.session.connection().execute(_CLAIM_DUE, {
            "now": now, "until": until, "limit": limit, "per_host": per_host, "scan": limit * 4,
            "hosts": hosts, "in_flight": [in_flight[host] for host in hosts], "token": str(uuid.uuid4())})
        return sorted((Claimed(**row._mapping) for row in rows), key=lambda claimed: claimed.next_attempt_at)

    def record_attempt(self, claimed, attempt, now):
        """Apply a domain.Attempt to a claimed delivery and release the claim, if the claim still
        holds the row; the row as recorded, or None (another claim or a re-send took it since)."""
        return self.session.scalars(
            update(Delivery)
            .where(Delivery.id == claimed.id, Delivery.claim_token == claimed.claim_token)
            .values(status=attempt.status, attempts=attempt.attempts, last_status_code=attempt.last_status_code,
                    last_error=attempt.last_error, next_attempt_at=attempt.next_attempt_at,
                    delivered_at=attempt.delivered_at, updated_at=now, claim_token=None, claimed_until=None)
            .returning(Delivery),
            execution_options={"synchronize_session": False, "populate_existing": True}).first()

    # -- retention ---------------------------------------------------------------------

    def prune_deliveries(self, before, limit):
        """Delete up to `limit` deliveries that ended (delivered or failed) and last changed before
        `before`, the oldest first; how many. Never a pending one."""
        return self.session.connection().execute(_PRUNE_DELIVERIES, {"before": before, "limit": limit}).rowcount

    def prune_events(self, before, limit):
        """Delete up to `limit` events received before `before` that no delivery refers to, the
        oldest first; how many. A redelivery of one of them is then recorded as a new event."""
        return self.session.connection().execute(_PRUNE_EVENTS, {"before": before, "limit": limit}).rowcount

    def ping(self):
        self.session.execute(select(1))


# What the sender has yet to deliver, read when metrics are scraped: pending deliveries of enabled
# webhooks (a disabled webhook's wait for an admin; ix_deliveries_due holds exactly the pending ones).
PENDING = Backlog(
    waiting=("webhook_deliveries_pending", "Deliveries waiting for an attempt (enabled webhooks)"),
    oldest=("webhook_oldest_pending_seconds", "Age of the oldest pending delivery"),
    query=select(func.count(), func.min(Delivery.created_at)).join(Webhook, Webhook.id == Delivery.webhook_id)
    .where(Delivery.status == "pending", Webhook.enabled))

layout = StorageLayout(base=WebhooksBase, store=WebhookStore, outbox=Outbox, backlog=PENDING)
