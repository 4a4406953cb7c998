"""order lifecycle: history, idempotency keys, list indexes, one outbox per schema

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMAS = ("customers", "inventory", "orders")


def upgrade():
    for schema in SCHEMAS:
        op.create_table(
            "outbox",
            sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
            sa.Column("event_type", sa.String(64), nullable=False),
            sa.Column("payload", JSONB, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("sent_at", sa.DateTime(timezone=True)),
            schema=schema,
        )
        op.create_index("ix_outbox_pending", "outbox", ["next_attempt_at"], schema=schema,
                        postgresql_where=sa.text("sent_at IS NULL"))

    op.create_table(
        "order_status_history",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("order_id", UUID(as_uuid=True),
                  sa.ForeignKey("orders.orders.id", ondelete="CASCADE"), nullable=False),
        sa.Column("from_status", sa.String(16)),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.String(200), nullable=False),
        schema="orders",
    )
    op.create_index("ix_order_status_history_order", "order_status_history", ["order_id", "id"],
                    schema="orders")

    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("order_id", UUID(as_uuid=True), nullable=False),
        # JSON text, not JSONB: a replay must repeat the first response byte for byte.
        sa.Column("response", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        schema="orders",
    )

    # Keyset paging is newest first: (created_at, id) descending, per filter.
    op.create_index("ix_orders_created", "orders",
                    [sa.text("created_at DESC"), sa.text("id DESC")], schema="orders")
    op.create_index("ix_orders_customer_created", "orders",
                    ["customer_id", sa.text("created_at DESC"), sa.text("id DESC")], schema="orders")
    op.create_index("ix_orders_status_created", "orders",
                    ["status", sa.text("created_at DESC"), sa.text("id DESC")], schema="orders")


def downgrade():
    op.drop_index("ix_orders_status_created", "orders", schema="orders")
    op.drop_index("ix_orders_customer_created", "orders", schema="orders")
    op.drop_index("ix_orders_created", "orders", schema="orders")
    op.drop_table("idempotency_keys", schema="orders")
    op.drop_table("order_status_history", schema="orders")
    for schema in reversed(SCHEMAS):
        op.drop_table("outbox", schema=schema)
