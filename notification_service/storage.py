"""notifications schema: the SQLAlchemy models and `NotificationStore`, its queries.

A notification is one message (an email, an SMS or a push) to one recipient
on one channel for one event: a row written
`queued` (with the event's id recorded in `processed_events` in the same
statement), then claimed by the sender under a lease: one committed
statement gives the due rows a claim token and the time the claim lasts
until, and no other claim takes them before then, so several instances
never send one row at once while no transaction stays open across SMTP.
Each outcome moves the row to `sent` or `failed` (or leaves it `queued` for
its next attempt) and releases the claim, in the transaction that writes its
event, and only if the row is still under the claim that sent it.
"""
import json
import uuid
from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import DateTime

from common.kit.consumers import processed_events_model
from common.kit.customer_directory import CustomerDirectory, known_customer_model
from common.kit.outbox import outbox_model
from common.kit.unit_of_work import StorageLayout
from common.observability.metrics import Backlog
from notification_service import domain

SCHEMA = "notifications"


class NotificationsBase(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Notification(NotificationsBase):
    __tablename__ = "notifications"
    __table_args__ = (
        # One per (event, channel, recipient), whatever happens to the event's dedup record.
        UniqueConstraint("event_id", "channel", "recipient", name="notifications_event_channel_recipient_key"),
        CheckConstraint("status IN ('queued', 'sent', 'failed')", name="notification_status"),
        CheckConstraint("channel IN ('email', 'sms', 'push')", name="notification_channel"),
        CheckConstraint("attempts >= 0", name="notification_attempts_not_negative"),
        CheckConstraint("(claim_token IS NULL) = (claimed_until IS NULL)", name="notification_claim_whole"),
        # The sender's question: which queued ones are due?
        Index("ix_notifications_due", "next_attempt_at", postgresql_where=text("status = 'queued'")),
        # Keyset paging is newest first, optionally within one order, customer or status.
        Index("ix_notifications_created", text("created_at DESC"), text("id DESC")),
        Index("ix_notifications_order_created", "order_id", text("created_at DESC"), text("id DESC")),
        Index("ix_notifications_customer_created", "customer_id", text("created_at DESC"), text("id DESC")),
        Index("ix_notifications_status_created", "status", text("created_at DESC"), text("id DESC")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    event_type: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    # Ids from order_service and customer_service: no foreign keys across schemas.
    order_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    customer_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))  # None: a staff alert
    channel: Mapped[str] = mapped_column(String(8), server_default="email")  # email | sms | push
    # The email address, the phone number (E.164) or the push subscription's endpoint.
    recipient: Mapped[str] = mapped_column(Text)
    # The message as rendered when the event arrived: every attempt sends the same one. An SMS's
    # text is its body; a push's, the JSON payload encrypted for the subscription; only email has HTML.
    subject: Mapped[str] = mapped_column(String(300))
    body_text: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(300))  # email only
    # Push only: {"id", "keys": {"p256dh", "auth"}} of the subscription as the event found it.
    push_subscription: Mapped[dict | None] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The sender's claim on the row (see NotificationStore.claim_due); both None when unclaimed.
    claim_token: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


KnownCustomer = known_customer_model(NotificationsBase, with_contacts=True)


_notifications = Notification.__table__
# Built once: every order event runs them, so their compiled form is reused.
# One statement for a batch of events: record their ids and queue the notifications
# of those that were new (one array per column, so the text is the same for any
# number of them; ids inserted in order, so overlapping batches never deadlock).
# Atomic on its own, so it needs no BEGIN/COMMIT round trips; a redelivered event
# finds its id and queues nothing.
_QUEUE_ONCE = text(f"""
WITH first_time AS (
    INSERT INTO {SCHEMA}.processed_events (event_id, handler, processed_at)
    SELECT DISTINCT event.id, :handler, :at FROM unnest(CAST(:event_ids AS uuid[])) AS event(id)
    ORDER BY event.id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
)
INSERT INTO {SCHEMA}.notifications (id, event_id, event_type, kind, order_id, customer_id, channel, recipient,
                                    subject, body_text, body_html, message_id, push_subscription, status, attempts,
                                    next_attempt_at, created_at, updated_at)
SELECT row.id, row.event_id, row.event_type, row.kind, row.order_id, row.customer_id, row.channel,
       row.recipient, row.subject, row.body_text, row.body_html, row.message_id, row.push_subscription, 'queued', 0,
       :at, :at, :at
FROM unnest(CAST(:ids AS uuid[]), CAST(:event_ids AS uuid[]), CAST(:event_types AS varchar[]),
            CAST(:kinds AS varchar[]), CAST(:order_ids AS uuid[]), CAST(:customer_ids AS uuid[]),
            CAST(:channels AS varchar[]), CAST(:recipients AS text[]), CAST(:subjects AS varchar[]),
            CAST(:bodies_text AS text[]), CAST(:bodies_html AS text[]), CAST(:message_ids AS varchar[]),
            CAST(:push_subscriptions AS jsonb[]))
     AS row(id, event_id, event_type, kind, order_id, customer_id, channel, recipient, subject, body_text,
            body_html, message_id, push_subscription)
WHERE row.event_id IN (SELECT event_id FROM first_time)
ON CONFLICT ON CONSTRAINT notifications_event_channel_recipient_key DO NOTHING
RETURNING id
""")

# A batch's outcomes in one statement (a round trip per outcome was a fifth of the service's
# CPU): each row changes only while the claim that sent it still holds it.
_RECORD_ATTEMPTS = text(f"""
UPDATE {SCHEMA}.notifications AS n
SET status = v.status, attempts = v.attempts, last_error = v.last_error, next_attempt_at = v.next_attempt_at,
    sent_at = v.sent_at, updated_at = :now, claim_token = NULL, claimed_until = NULL
FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS uuid[]), CAST(:statuses AS varchar[]), CAST(:attempts AS int[]),
            CAST(:errors AS text[]), CAST(:next_attempts AS timestamptz[]), CAST(:sent AS timestamptz[]))
     AS v(id, claim_token, status, attempts, last_error, next_attempt_at, sent_at)
WHERE n.id = v.id AND n.claim_token = v.claim_token
RETURNING n.*
""")


def _text_or_none(value):
    return str(value) if value else None


class NotificationStore(CustomerDirectory):
    """The notifications schema's queries, on one session (see common/kit/unit_of_work.py)."""
    known_customers = KnownCustomer

    def __init__(self, session):
        self.session = session

    # -- the event path ----------------------------------------------------------------

    def queue_once(self, events, handler, at):
        """Queue each event's rows, for the events not handled before: `events` is a list of
        (event_id, event_type, rows), rows dicts of id, kind, order_id, customer_id, channel,
        recipient, subject, body_text, body_html, message_id, push_subscription. One statement for
        any number of events; the ids queued (none for a redelivered event)."""
        rows = [(event_id, event_type, row) for event_id, event_type, event_rows in events for row in event_rows]
        if not rows:
            return []
        optional = _text_or_none
        result = self.session.connection().execute(_QUEUE_ONCE, {
            "handler": handler, "at": at,
            "ids": [str(row["id"]) for _, _, row in rows],
            "event_ids": [str(event_id) for event_id, _, _ in rows],
            "event_types": [event_type for _, event_type, _ in rows],
            "kinds": [row["kind"] for _, _, row in rows],
            "order_ids": [optional(row["order_id"]) for _, _, row in rows],
            "customer_ids": [optional(row["customer_id"]) for _, _, row in rows],
            "channels": [row["channel"] for _, _, row in rows],
            "recipients": [row["recipient"] for _, _, row in rows],
            "subjects": [row["subject"] for _, _, row in rows],
            "bodies_text": [row["body_text"] for _, _, row in rows],
            "bodies_html": [row["body_html"] for _, _, row in rows],
            "message_ids": [row["message_id"] for _, _, row in rows],
            "push_subscriptions": [json.dumps(row["push_subscription"]) if row["push_subscription"] else None
                                   for _, _, row in rows],
        })
        return [row.id for row in result]

    # -- the sender --------------------------------------------------------------------

    def claim_due(self, now, until, limit):
        """Claim up to `limit` queued notifications due by `now` that no claim holds at
        `now`, oldest due first: each is marked claimed until `until` under one new
        claim token, which the returned rows carry. One statement: run in autocommit
        (`uow.single_statement()`), the claim is committed before any mail goes out.
        Rows another claim is taking at this moment are skipped, not waited for."""
        due = (select(Notification.id)
               .where(Notification.status == "queued", Notification.next_attempt_at <= now,
                      or_(Notification.claimed_until.is_(None), Notification.claimed_until <= now))
               .order_by(Notification.next_attempt_at).limit(limit).with_for_update(skip_locked=True)
               .cte("due").prefix_with("MATERIALIZED"))  # run once: exactly the rows it locked
        claimed = self.session.scalars(
            update(Notification).where(Notification.id == due.c.id)
            .values(claim_token=uuid.uuid4(), claimed_until=until).returning(Notification),
            execution_options={"synchronize_session": False}).all()
        return sorted(claimed, key=lambda notification: notification.next_attempt_at)

    def record_attempt(self, notification, outcome, now):
        """Apply a domain.Attempt (the outcome of one try) to a claimed notification and
        release the claim, if the claim `notification` carries still holds the row; the
        row as recorded, or None when another claim has taken it since (nothing changed)."""
        return self.record_attempts([(notification, outcome)], now)[0]

    def record_attempts(self, attempts, now):
        """`record_attempt` for a batch of (notification, outcome) in one statement: the rows as
        recorded, in the order given, None for each whose claim no longer holds."""
        if any(notification.claim_token is None for notification, _ in attempts):
            raise ValueError("only a claimed notification has an outcome to record")
        if not attempts:
            return []
        recorded = self.session.scalars(select(Notification).from_statement(_RECORD_ATTEMPTS), {
            "now": now,
            "ids": [str(notification.id) for notification, _ in attempts],
            "tokens": [str(notification.claim_token) for notification, _ in attempts],
            "statuses": [outcome.status for _, outcome in attempts],
            "attempts": [outcome.attempts for _, outcome in attempts],
            "errors": [outcome.last_error for _, outcome in attempts],
            "next_attempts": [outcome.next_attempt_at for _, outcome in attempts],
            "sent": [outcome.sent_at for _, outcome in attempts],
        }, execution_options={"populate_existing": True}).all()
        by_id = {row.id: row for row in recorded}
        return [by_id.get(notification.id) for notification, _ in attempts]

    def requeue(self, notification, now):
        """A failed notification queued again: attempts from 0, due now."""
        notification.status = "queued"
        notification.attempts = 0
        notification.next_attempt_at = now
        notification.updated_at = now
        self.session.flush()

    # -- reads ---------------------------------------------------------------------------

    def get_notification(self, notification_id, lock=False):
        query = select(Notification).where(Notification.id == notification_id)
        if lock:
            query = query.with_for_update()
        return self.session.scalars(query).first()

    def list_notifications(self, filters, limit, after=None):
        """Newest first; filters: order_id, customer_id, status; `after` is the (created_at, id) of the last seen."""
        query = (select(Notification).order_by(Notification.created_at.desc(), Notification.id.desc())
                 .limit(limit))
        for name in ("order_id", "customer_id", "status"):
            if name in filters:
                query = query.where(getattr(Notification, name) == filters[name])
        if after is not None:
            query = query.where(tuple_(Notification.created_at, Notification.id) < tuple_(*after))
        return self.session.scalars(query).all()

    def ping(self):
        self.session.execute(select(1))


# What the sender has yet to send, per channel, read when metrics are scraped: every queued notification,
# due or waiting for its next attempt (a gauge of the due ones only would read 0 between the retries
# of a provider that is down, since the sender takes due rows within seconds), its age since it was
# queued. Only queued rows are read (ix_notifications_due holds exactly those).
WAITING = Backlog(
    waiting=("notifications_waiting", "Notifications queued for their first attempt or a retry"),
    oldest=("notifications_oldest_waiting_seconds", "Age of the oldest queued notification"),
    query=select(Notification.channel, func.count(), func.min(Notification.created_at))
    .where(Notification.status == "queued").group_by(Notification.channel),
    labels=("channel",), every=tuple((channel,) for channel in (domain.EMAIL, domain.SMS, domain.PUSH)))

layout = StorageLayout(base=NotificationsBase, store=NotificationStore, outbox=outbox_model(NotificationsBase),
                       processed_events=processed_events_model(NotificationsBase), backlog=WAITING)
