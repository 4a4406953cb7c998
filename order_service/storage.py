"""orders schema: the SQLAlchemy models and `OrderStore`, its queries."""
import json
import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    bindparam,
    cast,
    delete,
    exists,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID, aggregate_order_by, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, WriteOnlyMapped, mapped_column, relationship
from sqlalchemy.sql import func
from sqlalchemy.types import DateTime

from common.kit.consumers import processed_events_model
from common.kit.db import bounded_delete
from common.kit.outbox import Outbox, outbox_model
from common.kit.unit_of_work import StorageLayout
from order_service import domain

SCHEMA = "orders"


class OrdersBase(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class OrderItem(OrdersBase):
    __tablename__ = "order_items"

    order_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("orders.orders.id", ondelete="CASCADE"), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    line_total: Mapped[Decimal] = mapped_column(Numeric(20, 2))


class StatusChange(OrdersBase):
    __tablename__ = "order_status_history"
    __table_args__ = (Index("ix_order_status_history_order", "order_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    order_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("orders.orders.id", ondelete="CASCADE"))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    changed_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)


class Order(OrdersBase, domain.Order):
    """An order (the aggregate of order_service.domain), with its items and history."""
    __tablename__ = "orders"
    # Keyset paging is newest first, optionally within one customer or status.
    __table_args__ = (
        Index("ix_orders_created", text("created_at DESC"), text("id DESC")),
        Index("ix_orders_customer_created", "customer_id", text("created_at DESC"), text("id DESC")),
        Index("ix_orders_status_created", "status", text("created_at DESC"), text("id DESC")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    # A customer id from customer_service: no foreign key across schemas.
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    status: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    total_amount: Mapped[Decimal] = mapped_column(Numeric(20, 2))
    shipping_address: Mapped[dict | None] = mapped_column(JSONB)
    carrier: Mapped[str | None] = mapped_column(String(100))
    tracking_number: Mapped[str | None] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    items: Mapped[list["OrderItem"]] = relationship(
        order_by="OrderItem.sku", cascade="all, delete-orphan", lazy="selectin")
    # The database deletes the history with its order (ON DELETE CASCADE).
    status_changes: WriteOnlyMapped["StatusChange"] = relationship(passive_deletes=True)

    item_type = OrderItem
    status_change_type = StatusChange


class IdempotencyKey(OrdersBase):
    """The first successful POST /orders for a key, replayed for its repeats."""
    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    response: Mapped[str | None] = mapped_column(Text)  # JSON text: JSONB would reorder keys
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FailedAttempt(OrdersBase):
    """How an attempt failed: a create_order (its attempt id is its order's id) or a
    change to an order (update_order, update_shipping, update_status, delete_order:
    an attempt id of its own). Its client was told so; no other run of the attempt
    (a broker redelivery, an earlier send still queued) may then make the order or
    the change: each of them gives this answer again."""
    __tablename__ = "failed_attempts"
    __table_args__ = (Index("ix_failed_attempts_failed_at", "failed_at"),)

    attempt_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    error: Mapped[dict] = mapped_column(JSONB)  # DomainError.to_dict()
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ChangeAttempt(OrdersBase):
    """A change to an order that committed, by its attempt id, written in the change's
    own transaction with its answer: every other run of the attempt gives that answer
    again and changes nothing (what a create's order is to its attempt)."""
    __tablename__ = "change_attempts"
    __table_args__ = (Index("ix_change_attempts_changed_at", "changed_at"),)

    attempt_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    # No foreign key: the record outlives a deleted order.
    order_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    answer: Mapped[dict] = mapped_column(JSONB)  # the order as the change answered it
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class KnownCustomer(OrdersBase):
    """customer_service's customers as their events told us (a local read model)."""
    __tablename__ = "known_customers"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    shipping_address: Mapped[dict | None] = mapped_column(JSONB)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# Creating orders is the hot path: a batch of creates takes three statements
# for all of them (the attempt locks, the context read) and one insert each,
# each statement built once so its compiled form is reused.
_orders, _items, _known = Order.__table__, OrderItem.__table__, KnownCustomer.__table__
_failed, _changes = FailedAttempt.__table__, ChangeAttempt.__table__


_ATTEMPT_OUTCOME = (
    exists().where(_orders.c.id == bindparam("attempt_id")).label("created"),
    select(_failed.c.error).where(_failed.c.attempt_id == bindparam("attempt_id")).scalar_subquery().label("failure"),
    select(_changes.c.answer).where(_changes.c.attempt_id == bindparam("attempt_id")).scalar_subquery()
    .label("changed"))

# For each (order id, customer id) of a batch: whether the order exists, how its
# attempt failed, and the customer as the local directory knows it.
_CREATE_CONTEXTS = text(f"""
SELECT want.order_id,
       EXISTS (SELECT FROM {SCHEMA}.orders AS made WHERE made.id = want.order_id) AS done_before,
       (SELECT failed.error FROM {SCHEMA}.failed_attempts AS failed WHERE failed.attempt_id = want.order_id)
           AS failure,
       known.id, known.shipping_address
FROM unnest(CAST(:order_ids AS uuid[]), CAST(:customer_ids AS uuid[])) AS want(order_id, customer_id)
LEFT JOIN {SCHEMA}.known_customers AS known ON known.id = want.customer_id
""")
# Transaction-scoped locks on attempt ids, taken in one order by every batch, so
# two batches sharing an attempt (a re-drive) cannot deadlock.
_LOCK_ATTEMPTS = text("""
SELECT count(pg_advisory_xact_lock(hashtextextended(key, 0)))
FROM (SELECT key FROM unnest(CAST(:keys AS text[])) AS key ORDER BY key) AS sorted
""")

# A batch's new orders, their items, first status changes and order_created
# events in one round trip; one array per column, so the text is the same for
# any batch (items and events carry their order's id). Foreign keys are
# checked at the end of the statement, when the orders exist.
_INSERT_NEW_ORDERS = text(f"""
WITH new_orders AS (
    INSERT INTO {SCHEMA}.orders (id, customer_id, status, currency, total_amount, shipping_address,
                                 carrier, tracking_number, version, created_at, updated_at)
    SELECT * FROM unnest(
        CAST(:ids AS uuid[]), CAST(:customer_ids AS uuid[]), CAST(:statuses AS varchar[]),
        CAST(:currencies AS varchar[]), CAST(:totals AS numeric[]), CAST(:addresses AS jsonb[]),
        CAST(:carriers AS varchar[]), CAST(:tracking_numbers AS varchar[]), CAST(:versions AS integer[]),
        CAST(:created AS timestamptz[]), CAST(:updated AS timestamptz[]))
), new_items AS (
    INSERT INTO {SCHEMA}.order_items (order_id, sku, quantity, unit_price, line_total)
    SELECT * FROM unnest(CAST(:item_order_ids AS uuid[]), CAST(:skus AS varchar[]),
                         CAST(:quantities AS integer[]), CAST(:unit_prices AS numeric[]),
                         CAST(:line_totals AS numeric[]))
), first_status AS (
    INSERT INTO {SCHEMA}.order_status_history (order_id, from_status, to_status, changed_at, changed_by)
    SELECT change.order_id, NULL, change.status, change.changed_at, change.changed_by
    FROM unnest(CAST(:ids AS uuid[]), CAST(:statuses AS varchar[]), CAST(:created AS timestamptz[]),
                CAST(:changed_by AS varchar[])) AS change(order_id, status, changed_at, changed_by)
)
INSERT INTO {SCHEMA}.outbox (event_id, event_type, payload, created_at, next_attempt_at, attempts, traceparent)
SELECT event.event_id, event.event_type, event.payload, event.created_at, event.next_attempt_at, 0,
       event.traceparent
FROM unnest(CAST(:event_ids AS uuid[]), CAST(:event_types AS varchar[]), CAST(:payloads AS jsonb[]),
            CAST(:event_times AS timestamptz[]), CAST(:due AS timestamptz[]), CAST(:traceparents AS varchar[]))
     AS event(event_id, event_type, payload, created_at, next_attempt_at, traceparent)
""")


# The arrays of _INSERT_NEW_ORDERS taken as they are from each order's and item's fields.
_ORDER_ARRAYS = {"statuses": "status", "currencies": "currency", "totals": "total_amount", "carriers": "carrier",
                 "tracking_numbers": "tracking_number", "versions": "version", "created": "created_at",
                 "updated": "updated_at"}
_ITEM_ARRAYS = {"skus": "sku", "quantities": "quantity", "unit_prices": "unit_price", "line_totals": "line_total"}


# Reads build each order with its items in one round trip (a correlated
# json_agg per order), as plain rows: no ORM identity map, no second SELECT.
# Filters, keyset and LIMIT apply to orders alone first, so the list indexes
# serve the page and items are looked up for the page's orders only.
def _with_items(orders_query):
    page = orders_query.subquery("page")
    items = (select(func.coalesce(
        func.json_agg(aggregate_order_by(
            func.json_build_object("sku", _items.c.sku, "quantity", _items.c.quantity,
                                   "unit_price", cast(_items.c.unit_price, Text),
                                   "line_total", cast(_items.c.line_total, Text)),
            _items.c.sku)),
        text("'[]'::json")))
        .where(_items.c.order_id == page.c.id).scalar_subquery())
    return select(page, items.label("items")), page


# Built once (GET by id is the most frequent read).
_ORDER_VIEW, _ = _with_items(select(_orders).where(_orders.c.id == bindparam("order_id")))


class OrderStore:
    """The orders schema's queries, on one session (see common/kit/unit_of_work.py)."""

    def __init__(self, session):
        self.session = session
        self.seen = []  # the orders handed out: the unit of work collects their events

    def create_contexts(self, wanted):
        """{order id: (whether the order exists already, how its attempt failed or None,
        the customer as the local directory knows it or None)} for each (order id,
        customer id) of `wanted`, in one round trip."""
        rows = self.session.connection().execute(_CREATE_CONTEXTS, {
            "order_ids": [str(order_id) for order_id, _ in wanted],
            "customer_ids": [str(customer_id) for _, customer_id in wanted]})
        return {uuid.UUID(str(row.order_id)): (row.done_before, row.failure, row if row.id is not None else None)
                for row in rows}

    def attempt_outcome(self, attempt_id):
        """How attempt `attempt_id` ended so far: (whether it created its order (the order
        exists), how it failed or None, the answer of the change it made or None)."""
        row = self.session.connection().execute(select(*_ATTEMPT_OUTCOME), {"attempt_id": attempt_id}).one()
        return row.created, row.failure, row.changed

    def record_failed_attempt(self, attempt_id, error, at):
        self.session.execute(insert(FailedAttempt).values(attempt_id=attempt_id, error=error, failed_at=at)
                             .on_conflict_do_nothing(index_elements=["attempt_id"]))

    def record_change(self, attempt_id, order_id, answer, at):
        """Change attempt `attempt_id` made its change to `order_id`, answered `answer`
        (in the change's transaction, under the attempt's lock: a plain insert)."""
        self.session.execute(insert(ChangeAttempt).values(attempt_id=attempt_id, order_id=order_id, answer=answer,
                                                          changed_at=at))

    def insert_new_orders(self, new_orders):
        """Insert new orders, each (order fields, item fields, changed_by: who made its first
        status change, its event: an `Outbox.row`), with their items, first status changes and
        events, in one statement."""
        orders = [fields for fields, _, _, _ in new_orders]
        items = [(fields["id"], item) for fields, item_fields, _, _ in new_orders for item in item_fields]
        self.session.connection().execute(_INSERT_NEW_ORDERS, {
            **{name: [fields[column] for fields in orders] for name, column in _ORDER_ARRAYS.items()},
            "ids": [str(fields["id"]) for fields in orders],
            "customer_ids": [str(fields["customer_id"]) for fields in orders],
            "addresses": [None if fields["shipping_address"] is None else json.dumps(fields["shipping_address"])
                          for fields in orders],
            "changed_by": [changed_by for _, _, changed_by, _ in new_orders],
            "item_order_ids": [str(order_id) for order_id, _ in items],
            **{name: [item[column] for _, item in items] for name, column in _ITEM_ARRAYS.items()},
            **Outbox.arrays([event for _, _, _, event in new_orders]),
        })

    def lock_attempts(self, attempt_ids):
        """Transaction-scoped locks on attempt ids (a create's is the id of the order it
        may make), in one round trip: the runs of one attempt take turns."""
        self.session.connection().execute(_LOCK_ATTEMPTS, {"keys": [str(attempt_id) for attempt_id in attempt_ids]})

    def get_order(self, order_id, lock=False):
        query = select(Order).where(Order.id == order_id)
        if lock:
            # Serializes every change to one order, across workers and instances.
            query = query.with_for_update()
        order = self.session.scalars(query).first()
        if order is not None:
            self.seen.append(order)
        return order

    def order_view(self, order_id):
        """The order with its items as a dict, or None."""
        row = self.session.connection().execute(_ORDER_VIEW, {"order_id": order_id}).first()
        return dict(row._mapping) if row is not None else None

    def list_orders(self, filters, limit, after=None):
        """Orders (dicts, with items) newest first; `after` is the (created_at, id) of the last one seen."""
        orders = select(_orders).order_by(_orders.c.created_at.desc(), _orders.c.id.desc()).limit(limit)
        if "status" in filters:
            orders = orders.where(_orders.c.status == filters["status"])
        if "customer_id" in filters:
            orders = orders.where(_orders.c.customer_id == filters["customer_id"])
        if "created_after" in filters:
            orders = orders.where(_orders.c.created_at > filters["created_after"])
        if "created_before" in filters:
            orders = orders.where(_orders.c.created_at < filters["created_before"])
        if after is not None:
            orders = orders.where(tuple_(_orders.c.created_at, _orders.c.id) < tuple_(*after))
        query, page = _with_items(orders)
        query = query.order_by(page.c.created_at.desc(), page.c.id.desc())
        return [dict(row._mapping) for row in self.session.connection().execute(query)]

    def status_history(self, order_id):
        return self.session.scalars(
            select(StatusChange).where(StatusChange.order_id == order_id).order_by(StatusChange.id)).all()

    def delete_order(self, order):
        self.session.delete(order)
        self.session.flush()

    def claim_idempotency_key(self, key, request_hash, order_id, at):
        """Claim `key` for a new order, or return the row of whoever holds it.

        The primary key decides: a concurrent claim of the same key waits here
        until the holder's transaction ends, then sees its row (or, if the
        holder rolled back, claims the key itself). None means "claimed: go on".
        """
        claimed = self.session.execute(
            insert(IdempotencyKey)
            .values(key=key, request_hash=request_hash, order_id=order_id, created_at=at)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(IdempotencyKey.key)
        ).first()
        if claimed is not None:
            return None
        return self.session.scalars(select(IdempotencyKey).where(IdempotencyKey.key == key)).one()

    def unclaim_idempotency_key(self, key, order_id):
        """Give back `key` claimed for `order_id`, whose create failed: the key is not used up."""
        self.session.execute(delete(IdempotencyKey).where(IdempotencyKey.key == key,
                                                          IdempotencyKey.order_id == order_id))

    def remember_response(self, key, response):
        self.session.execute(
            update(IdempotencyKey).where(IdempotencyKey.key == key).values(response=json.dumps(response)))

    def ping(self):
        self.session.execute(select(1))

    def remember_customer(self, customer_id, shipping_address, updated_at):
        """Upsert; an older event never overwrites a newer one (events may arrive out of order)."""
        statement = insert(KnownCustomer).values(id=customer_id, shipping_address=shipping_address,
                                                 updated_at=updated_at)
        self.session.execute(statement.on_conflict_do_update(
            index_elements=["id"],
            set_={"shipping_address": statement.excluded.shipping_address,
                  "updated_at": statement.excluded.updated_at},
            where=KnownCustomer.updated_at < statement.excluded.updated_at))

    def order_states(self, order_ids):
        rows = self.session.execute(select(Order.id, Order.status).where(Order.id.in_(order_ids)))
        return {str(order_id): status for order_id, status in rows}

    def prune_attempts(self, kind, older_than):
        """Delete up to PRUNE_BATCH of `kind` (ATTEMPT_RECORDS) older than `older_than`; how many."""
        model, moment = ATTEMPT_RECORDS[kind]
        return self.session.execute(bounded_delete(model, moment, older_than)).rowcount


# What is forgotten IDEMPOTENCY_RETENTION_HOURS after it was made: idempotency keys and the
# attempts (failed, and changes made).
ATTEMPT_RECORDS = {"idempotency_keys": (IdempotencyKey, IdempotencyKey.created_at),
                   "failed_attempts": (FailedAttempt, FailedAttempt.failed_at),
                   "change_attempts": (ChangeAttempt, ChangeAttempt.changed_at)}


layout = StorageLayout(base=OrdersBase, store=OrderStore, outbox=outbox_model(OrdersBase),
                       processed_events=processed_events_model(OrdersBase))
