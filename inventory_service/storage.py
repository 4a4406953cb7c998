"""inventory schema: products and stock reservations.

Stock safety lives in SQL: a reservation is a conditional UPDATE
(`stock - reserved >= quantity`) of rows first locked in sku order, inside one
transaction, and CHECK constraints refuse any row with reserved > stock.
Whatever the concurrency, no two orders can hold the same unit.
"""
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    bindparam,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import UUID, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key
from sqlalchemy.sql import func
from sqlalchemy.types import DateTime

from common.contract.errors import AlreadyExists
from common.kit.db import constraint_name
from common.kit.outbox import outbox_model
from common.kit.unit_of_work import StorageLayout
from inventory_service.domain import ProductRules

SCHEMA = "inventory"


class InventoryBase(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Product(ProductRules, InventoryBase):
    __tablename__ = "products"
    __table_args__ = (
        CheckConstraint("stock >= 0", name="stock_not_negative"),
        CheckConstraint("reserved >= 0", name="reserved_not_negative"),
        CheckConstraint("reserved <= stock", name="reserved_within_stock"),
        CheckConstraint("unit_price >= 0", name="price_not_negative"),
    )

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    unit_price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    currency: Mapped[str] = mapped_column(String(3))
    stock: Mapped[int] = mapped_column(Integer)
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    low_stock_threshold: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Reservation(InventoryBase):
    """One per order: its state makes reserve/release/commit idempotent."""
    __tablename__ = "reservations"

    order_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    __table_args__ = (
        Index("ix_reservations_to_check", "checked_at", postgresql_where=text("status = 'reserved'")),
    )

    status: Mapped[str] = mapped_column(String(16))  # reserved | released | committed
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # When the reconciler last confirmed (or the reservation was made): see stale_reservations.
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ReservationItem(InventoryBase):
    __tablename__ = "reservation_items"

    order_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("inventory.reservations.order_id", ondelete="CASCADE"),
        primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), ForeignKey("inventory.products.sku"), primary_key=True)
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    currency: Mapped[str] = mapped_column(String(3))


@dataclass(frozen=True)
class ProductSnapshot(ProductRules):
    """A product as an UPDATE ... RETURNING left it (no ORM identity-map work on the hot path)."""
    sku: str
    name: str
    description: str
    unit_price: Decimal
    currency: str
    stock: int
    reserved: int
    low_stock_threshold: int
    created_at: datetime
    updated_at: datetime


_products = Product.__table__
_quantity, _sku, _at = bindparam("quantity"), bindparam("sku_"), bindparam("at")
# Hot-path statements built once, so their compiled form is reused.
_TAKE_STOCK = (update(_products)
               .where(_products.c.sku == _sku, _products.c.stock - _products.c.reserved >= _quantity)
               .values(reserved=_products.c.reserved + _quantity, updated_at=_at).returning(*_products.c))
_GIVE_BACK_STOCK = (update(_products).where(_products.c.sku == _sku)
                    .values(reserved=_products.c.reserved - _quantity, updated_at=_at).returning(*_products.c))
_COMMIT_STOCK = (update(_products).where(_products.c.sku == _sku)
                 .values(stock=_products.c.stock - _quantity, reserved=_products.c.reserved - _quantity,
                         updated_at=_at).returning(*_products.c))

_INSERT_RESERVATION_ITEMS = insert(ReservationItem.__table__)
# A new reservation in one round trip: claim the order id (the primary key
# decides between concurrent calls for one order), lock the wanted products in
# sku order (the lock order every reservation shares, so none can deadlock;
# byte order, as Python sorts the plan, whatever the database's collation),
# and take each quantity only where that much is available. One row always
# comes back: `claimed` says whether the order id was new, and each product
# taken follows, as the UPDATE left it; a sku with too little stock (or none
# such) is simply missing.
_CLAIM_AND_TAKE = text(f"""
WITH claim AS (
    INSERT INTO {SCHEMA}.reservations (order_id, status, created_at, updated_at, checked_at)
    VALUES (CAST(:order_id AS uuid), 'reserved', :at, :at, :at)
    ON CONFLICT (order_id) DO NOTHING
    RETURNING order_id
), wanted AS (
    SELECT want.sku, want.quantity
    FROM unnest(CAST(:skus AS varchar[]), CAST(:quantities AS integer[])) AS want(sku, quantity)
    WHERE EXISTS (SELECT FROM claim)
), locked AS MATERIALIZED (
    SELECT product.sku FROM {SCHEMA}.products AS product JOIN wanted USING (sku)
    ORDER BY product.sku COLLATE "C" FOR UPDATE OF product
), taken AS (
    UPDATE {SCHEMA}.products AS product
    SET reserved = product.reserved + wanted.quantity, updated_at = :at
    FROM wanted JOIN locked USING (sku)
    WHERE product.sku = wanted.sku AND product.stock - product.reserved >= wanted.quantity
    RETURNING product.*
)
SELECT EXISTS (SELECT FROM claim) AS claimed, taken.*
FROM (SELECT) AS always_one_row LEFT JOIN taken ON true
""")
_LOCK_PRODUCTS = text(f"""
SELECT sku FROM {SCHEMA}.products WHERE sku = ANY(CAST(:skus AS varchar[]))
ORDER BY sku COLLATE "C" FOR UPDATE
""")
# A new reservation's items and its events in one round trip, deleting the
# unsent stock_reservation_failed of an earlier, refused run of the same
# attempt (see inventory_service.service); one array per column, so the text
# is the same for any number of items and events.
_RECORD_RESERVATION = text(f"""
WITH refusal_withdrawn AS (
    DELETE FROM {SCHEMA}.outbox WHERE event_id = CAST(:refusal_event_id AS uuid) AND sent_at IS NULL
), new_items AS (
    INSERT INTO {SCHEMA}.reservation_items (order_id, sku, quantity, unit_price, currency)
    SELECT CAST(:order_id AS uuid), item.*
    FROM unnest(CAST(:skus AS varchar[]), CAST(:quantities AS integer[]),
                CAST(:unit_prices AS numeric[]), CAST(:currencies AS varchar[]))
         AS item(sku, quantity, unit_price, currency)
)
INSERT INTO {SCHEMA}.outbox (event_id, event_type, payload, created_at, next_attempt_at, attempts, traceparent)
SELECT event.event_id, event.event_type, event.payload, event.created_at, event.created_at, 0, event.traceparent
FROM unnest(CAST(:event_ids AS uuid[]), CAST(:event_types AS varchar[]), CAST(:payloads AS jsonb[]),
            CAST(:event_times AS timestamptz[]), CAST(:traceparents AS varchar[]))
     AS event(event_id, event_type, payload, created_at, traceparent)
""")


def _now():
    return datetime.now(timezone.utc)


class InventoryStore:
    """The inventory schema's queries, on one session (see common/kit/unit_of_work.py)."""

    def __init__(self, session):
        self.session = session

    def _update_stock(self, statement, sku, quantity):
        row = self.session.connection().execute(statement, {"sku_": sku, "quantity": quantity, "at": _now()}).first()
        return self._taken(ProductSnapshot(**row._mapping)) if row is not None else None

    def _taken(self, snapshot):
        """`snapshot`, after bringing a Product this session loaded before in step with it:
        the UPDATE ran in SQL, past the ORM, and would leave that object's stock stale."""
        loaded = self.session.identity_map.get(identity_key(Product, snapshot.sku))
        if loaded is not None:
            for column in ("stock", "reserved", "updated_at"):
                set_committed_value(loaded, column, getattr(snapshot, column))
        return snapshot

    def insert_product(self, fields):
        now = _now()
        product = Product(reserved=0, created_at=now, updated_at=now, **fields)
        self.session.add(product)
        try:
            self.session.flush()
        except IntegrityError as exc:
            if constraint_name(exc) == "products_pkey":
                raise AlreadyExists("A product with this sku exists.", {"sku": fields["sku"]}) from None
            raise
        return product

    def get_product(self, sku, lock=False):
        return self.session.get(Product, sku, with_for_update=lock)

    def update_product(self, product, changes):
        for field, value in changes.items():
            setattr(product, field, value)
        product.updated_at = _now()
        self.session.flush()
        return product

    def get_products(self, skus):
        return self.session.scalars(select(Product).where(Product.sku.in_(skus)).order_by(Product.sku)).all()

    def list_products(self, limit, after_sku=None):
        query = select(Product).order_by(Product.sku).limit(limit)
        if after_sku is not None:
            query = query.where(Product.sku > after_sku)
        return self.session.scalars(query).all()

    def take_stock(self, sku, quantity):
        """Reserve `quantity` of `sku` if that many are available; the product after, or None."""
        return self._update_stock(_TAKE_STOCK, sku, quantity)

    def lock_products(self, skus):
        """Lock the rows of `skus` for this transaction, in the one order every reservation
        takes them (byte order): a batch of reservations then holds all it needs before
        its first one, so two batches over shared skus cannot deadlock."""
        self.session.connection().execute(_LOCK_PRODUCTS, {"skus": sorted(set(skus))})

    def claim_and_take_stock(self, order_id, plan):
        """Claim `order_id` and reserve every (sku, quantity) of `plan` that is available.

        None if a reservation for `order_id` already exists (nothing taken);
        else {sku: the product as the UPDATE left it} for each sku taken: fewer
        than `plan` when a sku is short or unknown (the caller rolls back).
        """
        rows = self.session.connection().execute(_CLAIM_AND_TAKE, {
            "order_id": str(order_id), "at": _now(),
            "skus": [sku for sku, _ in plan], "quantities": [quantity for _, quantity in plan],
        }).all()
        if not rows[0].claimed:
            return None
        return {row.sku: self._taken(ProductSnapshot(**{column: value for column, value in row._mapping.items()
                                                        if column != "claimed"}))
                for row in rows if row.sku is not None}

    def _add_reservation_items(self, order_id, lines):
        """lines: (product, quantity), each at the product's price now."""
        self.session.connection().execute(_INSERT_RESERVATION_ITEMS, [
            {"order_id": order_id, "sku": product.sku, "quantity": quantity,
             "unit_price": product.unit_price, "currency": product.currency}
            for product, quantity in lines])

    def record_reservation(self, order_id, lines, event_rows, refusal_event_id):
        """The items of a new reservation (lines: (product, quantity), each at the
        product's price now) and its events (`Outbox.row`s), in one statement that also
        deletes the event `refusal_event_id` if it is still unsent."""
        self.session.connection().execute(_RECORD_RESERVATION, {
            "order_id": str(order_id), "refusal_event_id": str(refusal_event_id),
            "skus": [product.sku for product, _ in lines],
            "quantities": [quantity for _, quantity in lines],
            "unit_prices": [product.unit_price for product, _ in lines],
            "currencies": [product.currency for product, _ in lines],
            "event_ids": [str(row["event_id"]) for row in event_rows],
            "event_types": [row["event_type"] for row in event_rows],
            "payloads": [json.dumps(row["payload"]) for row in event_rows],
            "event_times": [row["created_at"] for row in event_rows],
            "traceparents": [row["traceparent"] for row in event_rows],
        })

    def record_refusal(self, row):
        """Write the outbox row of a refused reservation (an `Outbox.row`), unless one with its event id exists."""
        outbox = layout.outbox.__table__
        self.session.execute(insert(outbox).values(**row).on_conflict_do_nothing(index_elements=["event_id"]))

    def get_reservation(self, order_id, lock=False):
        query = select(Reservation).where(Reservation.order_id == order_id)
        if lock:
            query = query.with_for_update()
        return self.session.scalars(query).first()

    def reservation_items(self, order_id):
        return self.session.scalars(
            select(ReservationItem).where(ReservationItem.order_id == order_id).order_by(ReservationItem.sku)
        ).all()

    def give_back_stock(self, sku, quantity):
        """Un-reserve `quantity` of `sku`; the product after."""
        return self._update_stock(_GIVE_BACK_STOCK, sku, quantity)

    def set_reservation_status(self, reservation, status):
        reservation.status = status
        reservation.updated_at = _now()

    def ping(self):
        self.session.execute(select(1))

    def available_stock(self, skus):
        """{sku: stock - reserved} as committed right now (no cached rows)."""
        rows = self.session.execute(
            select(Product.sku, Product.stock - Product.reserved).where(Product.sku.in_(skus)))
        return dict(rows.all())

    def commit_stock(self, sku, quantity):
        """Turn a reservation of `quantity` into a permanent decrement of stock; the product after."""
        return self._update_stock(_COMMIT_STOCK, sku, quantity)

    def replace_reservation_items(self, order_id, new_items):
        """new_items: [(product, quantity)] with the prices in force now."""
        self.session.query(ReservationItem).filter(ReservationItem.order_id == order_id).delete()
        self._add_reservation_items(order_id, new_items)
        self.session.flush()

    def stale_reservations(self, checked_before, limit):
        """Held reservations nobody has confirmed since `checked_before`, locked, oldest first."""
        return self.session.scalars(
            select(Reservation).where(Reservation.status == "reserved", Reservation.checked_at < checked_before)
            .order_by(Reservation.checked_at).limit(limit).with_for_update(skip_locked=True)
        ).all()

    def mark_checked(self, reservations):
        for reservation in reservations:
            reservation.checked_at = _now()


layout = StorageLayout(base=InventoryBase, store=InventoryStore, outbox=outbox_model(InventoryBase))
