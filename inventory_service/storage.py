"""inventory schema: products and stock reservations.

Stock safety lives in SQL: a reservation is a conditional UPDATE
(`stock - reserved >= quantity`) of rows first locked in sku order, inside one
transaction, and CHECK constraints refuse any row with reserved > stock.
Whatever the concurrency, no two orders can hold the same unit.
"""
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
from common.kit.outbox import Outbox, outbox_model
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
# A batch's claims and locks in one round trip. Every new order id is claimed
# (the primary key decides between concurrent calls for one order), then the
# wanted products are locked in sku order (byte order, as Python sorts the
# plan, whatever the database's collation). Every reserve takes its claims
# (in order id order) before its locks (in sku order), so no two can
# deadlock: the claim CTE gates the lock's scan, so it runs to the end first.
# One row always comes back, each locked product on its own.
_CLAIM_AND_LOCK = text(f"""
WITH claim AS (
    INSERT INTO {SCHEMA}.reservations (order_id, status, created_at, updated_at, checked_at)
    SELECT id, 'reserved', :at, :at, :at FROM unnest(CAST(:order_ids AS uuid[])) AS id ORDER BY id
    ON CONFLICT (order_id) DO NOTHING
    RETURNING order_id
), locked AS MATERIALIZED (
    SELECT product.* FROM {SCHEMA}.products AS product
    WHERE product.sku = ANY(CAST(:skus AS varchar[])) AND (SELECT count(*) FROM claim) IS NOT NULL
    ORDER BY product.sku COLLATE "C" FOR UPDATE
)
SELECT (SELECT coalesce(array_agg(order_id), '{{}}') FROM claim) AS claimed, locked.*
FROM (SELECT) AS always_one_row LEFT JOIN locked ON true
""")
# What a batch of reservations writes, in one round trip: the stock each
# takes, their items, the claims of the orders refused given up, the events,
# and the unsent stock_reservation_failed of earlier, refused runs of the
# attempts now reserved deleted (see inventory_service.service). An event id
# already written is left as it is: a refusal's is one per attempt. One array
# per column, so the text is the same for any batch.
_RECORD_RESERVATIONS = text(f"""
WITH given_up AS (
    DELETE FROM {SCHEMA}.reservations WHERE order_id = ANY(CAST(:given_up AS uuid[]))
), refusals_withdrawn AS (
    DELETE FROM {SCHEMA}.outbox WHERE event_id = ANY(CAST(:withdrawn AS uuid[])) AND sent_at IS NULL
), taken AS (
    UPDATE {SCHEMA}.products AS product SET reserved = product.reserved + take.quantity, updated_at = :at
    FROM (SELECT sku, sum(quantity) AS quantity
          FROM unnest(CAST(:skus AS varchar[]), CAST(:quantities AS integer[])) AS line(sku, quantity)
          GROUP BY sku) AS take
    WHERE product.sku = take.sku
), new_items AS (
    INSERT INTO {SCHEMA}.reservation_items (order_id, sku, quantity, unit_price, currency)
    SELECT * FROM unnest(CAST(:order_ids AS uuid[]), CAST(:skus AS varchar[]), CAST(:quantities AS integer[]),
                         CAST(:unit_prices AS numeric[]), CAST(:currencies AS varchar[]))
)
INSERT INTO {SCHEMA}.outbox (event_id, event_type, payload, created_at, next_attempt_at, attempts, traceparent)
SELECT event.event_id, event.event_type, event.payload, event.created_at, event.next_attempt_at, 0,
       event.traceparent
FROM unnest(CAST(:event_ids AS uuid[]), CAST(:event_types AS varchar[]), CAST(:payloads AS jsonb[]),
            CAST(:event_times AS timestamptz[]), CAST(:due AS timestamptz[]), CAST(:traceparents AS varchar[]))
     AS event(event_id, event_type, payload, created_at, next_attempt_at, traceparent)
ON CONFLICT (event_id) DO NOTHING
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

    def claim_and_lock(self, order_ids, skus, at):
        """Claim each of `order_ids` that has no reservation yet, then lock the products of
        `skus` for this transaction: (the set of order ids claimed, {sku: the product as
        locked}), a sku naming no product missing. What the lock read stays true until commit."""
        rows = self.session.connection().execute(_CLAIM_AND_LOCK, {
            "order_ids": [str(order_id) for order_id in order_ids], "skus": sorted(set(skus)), "at": at}).all()
        products = {row.sku: ProductSnapshot(**{column: value for column, value in row._mapping.items()
                                                if column != "claimed"})
                    for row in rows if row.sku is not None}
        return set(rows[0].claimed), products

    def _add_reservation_items(self, order_id, lines):
        """lines: (product, quantity), each at the product's price now."""
        self.session.connection().execute(_INSERT_RESERVATION_ITEMS, [
            {"order_id": order_id, "sku": product.sku, "quantity": quantity,
             "unit_price": product.unit_price, "currency": product.currency}
            for product, quantity in lines])

    def record_reservations(self, reservations, given_up, events, withdrawn, at):
        """In one statement: each reservation's (order_id, lines: (product, quantity), each at
        the product's price now) items and the stock it takes; the claims of the `given_up`
        order ids deleted; `events` (`Outbox.row`s) written unless their event id is there;
        the unsent events whose ids are in `withdrawn` deleted."""
        lines = [(order_id, product, quantity) for order_id, order_lines in reservations
                 for product, quantity in order_lines]
        self.session.connection().execute(_RECORD_RESERVATIONS, {
            "at": at, "given_up": [str(order_id) for order_id in given_up],
            "withdrawn": [str(event_id) for event_id in withdrawn],
            "order_ids": [str(order_id) for order_id, _, _ in lines],
            "skus": [product.sku for _, product, _ in lines],
            "quantities": [quantity for _, _, quantity in lines],
            "unit_prices": [product.unit_price for _, product, _ in lines],
            "currencies": [product.currency for _, product, _ in lines],
            **Outbox.arrays(events),
        })
        for _, product, _ in lines:  # the last line of a sku leaves it as the statement did
            self._taken(product)

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
