"""customers, inventory and orders schemas with their first tables

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMAS = ("customers", "inventory", "orders")


def _timestamps():
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    ]


def upgrade():
    for schema in SCHEMAS:
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")

    op.create_table(
        "customers",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("shipping_address", JSONB),
        *_timestamps(),
        sa.UniqueConstraint("email", name="customers_email_key"),
        schema="customers",
    )

    op.create_table(
        "products",
        sa.Column("sku", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("stock", sa.Integer, nullable=False),
        sa.Column("reserved", sa.Integer, nullable=False, server_default="0"),
        sa.Column("low_stock_threshold", sa.Integer, nullable=False, server_default="0"),
        *_timestamps(),
        sa.CheckConstraint("stock >= 0", name="stock_not_negative"),
        sa.CheckConstraint("reserved >= 0", name="reserved_not_negative"),
        sa.CheckConstraint("reserved <= stock", name="reserved_within_stock"),
        sa.CheckConstraint("unit_price >= 0", name="price_not_negative"),
        schema="inventory",
    )
    op.create_table(
        "reservations",
        sa.Column("order_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        *_timestamps(),
        sa.CheckConstraint("status IN ('reserved', 'released', 'committed')", name="reservation_status"),
        schema="inventory",
    )
    op.create_table(
        "reservation_items",
        sa.Column("order_id", UUID(as_uuid=True),
                  sa.ForeignKey("inventory.reservations.order_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("sku", sa.String(64), sa.ForeignKey("inventory.products.sku"), primary_key=True),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.CheckConstraint("quantity > 0", name="reserved_quantity_positive"),
        schema="inventory",
    )

    op.create_table(
        "orders",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("customer_id", UUID(as_uuid=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("total_amount", sa.Numeric(20, 2), nullable=False),
        sa.Column("shipping_address", JSONB),
        sa.Column("carrier", sa.String(100)),
        sa.Column("tracking_number", sa.String(100)),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        *_timestamps(),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'shipped', 'delivered', 'cancelled')",
            name="order_status"),
        schema="orders",
    )
    op.create_table(
        "order_items",
        sa.Column("order_id", UUID(as_uuid=True),
                  sa.ForeignKey("orders.orders.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("sku", sa.String(64), primary_key=True),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
        sa.Column("line_total", sa.Numeric(20, 2), nullable=False),
        sa.CheckConstraint("quantity > 0", name="order_quantity_positive"),
        schema="orders",
    )


def downgrade():
    op.drop_table("order_items", schema="orders")
    op.drop_table("orders", schema="orders")
    op.drop_table("reservation_items", schema="inventory")
    op.drop_table("reservations", schema="inventory")
    op.drop_table("products", schema="inventory")
    op.drop_table("customers", schema="customers")
    for schema in reversed(SCHEMAS):
        op.execute(f"DROP SCHEMA IF EXISTS {schema}")
