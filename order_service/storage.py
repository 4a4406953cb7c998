"""orders schema: SQLAlchemy models and queries."""
import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import ForeignKey, Integer, MetaData, Numeric, String, select
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload
from sqlalchemy.sql import func
from sqlalchemy.types import DateTime

SCHEMA = "orders"


class OrdersBase(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Order(OrdersBase):
    __tablename__ = "orders"

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


class OrderItem(OrdersBase):
    __tablename__ = "order_items"

    order_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("orders.orders.id", ondelete="CASCADE"), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    line_total: Mapped[Decimal] = mapped_column(Numeric(20, 2))


def insert_order(session, order_fields, item_fields):
    order = Order(**order_fields, items=[OrderItem(**item) for item in item_fields])
    session.add(order)
    session.flush()
    return order


def get_order(session, order_id):
    return session.scalars(
        select(Order).where(Order.id == order_id).options(selectinload(Order.items))
    ).first()


def ping(session):
    session.execute(select(1))
