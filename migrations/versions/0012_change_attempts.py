"""each change attempt's outcome, like a create's

A change to an order (update_order, update_shipping, update_status,
delete_order) carries an attempt id of its own from the gateway: the change
records it in its own transaction (change_attempts, with its answer), and a
run that fails records its failure (failed_attempts, whose key is now any
attempt's id, not only a create's order id), so no other run of the attempt
(a broker redelivery) applies the change after its client was told it was not.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade():
    op.alter_column("failed_attempts", "order_id", new_column_name="attempt_id", schema="orders")
    op.create_table(
        "change_attempts",
        sa.Column("attempt_id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("order_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("answer", postgresql.JSONB(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        schema="orders")
    op.create_index("ix_change_attempts_changed_at", "change_attempts", ["changed_at"], schema="orders")


def downgrade():
    op.drop_table("change_attempts", schema="orders")
    op.alter_column("failed_attempts", "attempt_id", new_column_name="order_id", schema="orders")
