"""every event and channel of the order flow

- orders: a status change's reason, in the order's history.
- notifications: staff alerts, which are for no customer.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("order_status_history", sa.Column("reason", sa.Text), schema="orders")
    op.alter_column("notifications", "customer_id", nullable=True, schema="notifications")


def downgrade():
    op.execute("DELETE FROM notifications.notifications WHERE customer_id IS NULL")
    op.alter_column("notifications", "customer_id", nullable=False, schema="notifications")
    op.drop_column("order_status_history", "reason", schema="orders")
