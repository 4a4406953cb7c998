"""reliable consumers and reservation reconciliation

processed_events per consuming schema, the orders-side customer directory
fed by customer events, customers.orders_count fed by order events, and
inventory.reservations.checked_at for the reconciler.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

CONSUMING_SCHEMAS = ("customers", "orders")


def upgrade():
    for schema in CONSUMING_SCHEMAS:
        op.create_table(
            "processed_events",
            sa.Column("event_id", UUID(as_uuid=False), primary_key=True),
            sa.Column("handler", sa.String(100), nullable=False),
            sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
            schema=schema,
        )
    op.create_table(
        "known_customers",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("shipping_address", JSONB),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        schema="orders",
    )
    op.add_column("customers", sa.Column("orders_count", sa.Integer, nullable=False, server_default="0"),
                  schema="customers")
    op.add_column("reservations", sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False,
                                            server_default=sa.func.now()), schema="inventory")
    op.create_index("ix_reservations_to_check", "reservations", ["checked_at"], schema="inventory",
                    postgresql_where=sa.text("status = 'reserved'"))


def downgrade():
    op.drop_index("ix_reservations_to_check", "reservations", schema="inventory")
    op.drop_column("reservations", "checked_at", schema="inventory")
    op.drop_column("customers", "orders_count", schema="customers")
    op.drop_table("known_customers", schema="orders")
    for schema in CONSUMING_SCHEMAS:
        op.drop_table("processed_events", schema=schema)
