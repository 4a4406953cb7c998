"""customers schema: the SQLAlchemy models (customers, their API keys) and `CustomerStore`, its queries."""
import uuid
from datetime import datetime

from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql import func
from sqlalchemy.types import DateTime

from common.contract.errors import AlreadyExists
from common.contract.schemas.customers import DEFAULT_PREFERENCES
from common.kit.consumers import processed_events_model
from common.kit.db import advisory_lock, constraint_name
from common.kit.outbox import outbox_model
from common.kit.unit_of_work import StorageLayout

SCHEMA = "customers"


class CustomersBase(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Customer(CustomersBase):
    __tablename__ = "customers"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(254), unique=True)
    shipping_address: Mapped[dict | None] = mapped_column(JSONB)
    phone: Mapped[str | None] = mapped_column(String(16))  # E.164
    notification_preferences: Mapped[dict] = mapped_column(JSONB, default=lambda: dict(DEFAULT_PREFERENCES))
    # Fed by order_created events (a read model; eventually consistent).
    orders_count: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    push_subscriptions: Mapped[list["PushSubscription"]] = relationship(
        order_by="PushSubscription.created_at", cascade="all, delete-orphan", lazy="selectin")


class PushSubscription(CustomersBase):
    """A browser's Web Push subscription: where to push (its push service's endpoint) and the keys to
    encrypt for. One per (customer, endpoint): a browser subscribing again replaces its keys."""
    __tablename__ = "push_subscriptions"
    __table_args__ = (UniqueConstraint("customer_id", "endpoint", name="push_subscriptions_customer_endpoint_key"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("customers.customers.id", ondelete="CASCADE"))
    endpoint: Mapped[str] = mapped_column(Text)
    p256dh: Mapped[str] = mapped_column(String(200))
    auth: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKey(CustomersBase):
    """A machine client's key: only its SHA-256 digest is kept (common/contract/caller.py)."""
    __tablename__ = "api_keys"
    __table_args__ = (
        Index("ix_api_keys_prefix", "prefix"),  # a key is looked up by its prefix, then its digest compared
        Index("ix_api_keys_created", "created_at", "id"),  # the list, oldest first
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    customer_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), ForeignKey(Customer.id))
    prefix: Mapped[str] = mapped_column(String(8))
    key_digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# A batch of order_created events, one statement: record the event ids and
# count, per customer, the orders of the ids that were new. Atomic on its own,
# so it needs no BEGIN/COMMIT round trips; a redelivered event finds its id and
# counts nothing, also when it comes twice in one batch. Ids are recorded and
# customers locked in id order (`counts` locks each row as it emits it, sorted;
# the UPDATE only touches rows `counts` emitted), so two instances' overlapping
# batches wait for each other rather than deadlock.
_COUNT_ORDERS_ONCE = text(f"""
WITH batch AS (
    SELECT DISTINCT ON (event_id) event_id, customer_id
    FROM unnest(CAST(:event_ids AS uuid[]), CAST(:customer_ids AS uuid[])) AS delivered(event_id, customer_id)
    ORDER BY event_id
), first_time AS (
    INSERT INTO {SCHEMA}.processed_events (event_id, handler, processed_at)
    SELECT event_id, :handler, now() FROM batch ORDER BY event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
), counts AS MATERIALIZED (
    SELECT customer.id AS customer_id, new.orders
    FROM {SCHEMA}.customers customer
    JOIN (SELECT customer_id, count(*) AS orders FROM batch JOIN first_time USING (event_id)
          GROUP BY customer_id) new ON new.customer_id = customer.id
    ORDER BY customer.id
    FOR UPDATE OF customer
)
UPDATE {SCHEMA}.customers SET orders_count = orders_count + counts.orders
FROM counts WHERE id = counts.customer_id
""")


class CustomerStore:
    """The customers schema's queries, on one session (see common/kit/unit_of_work.py)."""

    def __init__(self, session):
        self.session = session

    def lock_customer_id(self, customer_id):
        """A transaction-scoped lock on a customer id (it may not exist yet)."""
        advisory_lock(self.session, customer_id)

    def insert_customer(self, customer_id, fields, now):
        customer = Customer(id=customer_id, created_at=now, updated_at=now, push_subscriptions=[], **fields)
        self.session.add(customer)
        self._flush_unique_email(fields.get("email"))
        return customer

    def update_customer(self, customer, changes, now):
        for field, value in changes.items():
            setattr(customer, field, value)
        customer.updated_at = now
        self._flush_unique_email(changes.get("email"))
        return customer

    def _flush_unique_email(self, email):
        try:
            self.session.flush()
        except IntegrityError as exc:
            if constraint_name(exc) == "customers_email_key":
                raise AlreadyExists("A customer with this email exists.", {"email": email}) from None
            raise

    def save_push_subscription(self, customer, endpoint, keys, now):
        """The customer's subscription to `endpoint`, new or with its keys replaced; `customer` changed at `now`."""
        subscription = next((sub for sub in customer.push_subscriptions if sub.endpoint == endpoint), None)
        if subscription is None:
            subscription = PushSubscription(id=uuid.uuid4(), endpoint=endpoint, created_at=now, **keys)
            customer.push_subscriptions.append(subscription)
        else:
            subscription.p256dh, subscription.auth = keys["p256dh"], keys["auth"]
        customer.updated_at = now
        self.session.flush()
        return subscription

    def remove_push_subscription(self, customer, subscription_id, now):
        """Remove one of the customer's subscriptions; False if it has none by that id."""
        subscription = next((sub for sub in customer.push_subscriptions if sub.id == subscription_id), None)
        if subscription is None:
            return False
        customer.push_subscriptions.remove(subscription)
        customer.updated_at = now
        self.session.flush()
        return True

    def get_customer(self, customer_id, lock=False):
        return self.session.get(Customer, customer_id, with_for_update=lock)

    def get_customers(self, customer_ids):
        return self.session.scalars(select(Customer).where(Customer.id.in_(customer_ids))).all()

    def list_customers(self, limit, after=None, only_id=None):
        """Customers oldest first; `after` is the (created_at, id) of the last one seen."""
        query = select(Customer).order_by(Customer.created_at, Customer.id).limit(limit)
        if only_id is not None:
            query = query.where(Customer.id == only_id)
        if after is not None:
            query = query.where(tuple_(Customer.created_at, Customer.id) > tuple_(*after))
        return self.session.scalars(query).all()

    def insert_api_key(self, key_id, fields, prefix, digest, now):
        api_key = ApiKey(id=key_id, prefix=prefix, key_digest=digest, created_at=now, **fields)
        self.session.add(api_key)
        self.session.flush()
        return api_key

    def get_api_key(self, key_id, lock=False):
        return self.session.get(ApiKey, key_id, with_for_update=lock)

    def list_api_keys(self, limit, after=None):
        """Keys oldest first, revoked ones too; `after` is the (created_at, id) of the last one seen."""
        query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id).limit(limit)
        if after is not None:
            query = query.where(tuple_(ApiKey.created_at, ApiKey.id) > tuple_(*after))
        return self.session.scalars(query).all()

    def live_api_keys_with_prefix(self, prefix):
        """The keys not revoked whose first characters are `prefix` (a handful at most)."""
        return self.session.scalars(
            select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))).all()

    def mark_api_key_used(self, key_id, now, not_since):
        """last_used_at = now, unless it is already later than `not_since`: one write per period, not per use."""
        self.session.execute(update(ApiKey).where(
            ApiKey.id == key_id, (ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < not_since)
        ).values(last_used_at=now))

    def ping(self):
        self.session.execute(select(1))

    def count_orders_once(self, orders, handler):
        """Count the orders `orders` lists, (event id, customer id or None) pairs, one per
        event id not counted before; a customer id that names no customer counts nothing."""
        self.session.connection().execute(_COUNT_ORDERS_ONCE, {
            "event_ids": [event_id for event_id, _ in orders], "handler": handler,
            "customer_ids": [str(customer_id) if customer_id else None for _, customer_id in orders]})


layout = StorageLayout(base=CustomersBase, store=CustomerStore, outbox=outbox_model(CustomersBase),
                       processed_events=processed_events_model(CustomersBase))
