"""the trace context of each event

Every outbox keeps the W3C traceparent current when its event was written,
so the relay can send it with the event and the consumers continue the trace.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SCHEMAS_WITH_AN_OUTBOX = ("customers", "inventory", "orders", "notifications", "invoices")


def upgrade():
    for schema in SCHEMAS_WITH_AN_OUTBOX:
        op.add_column("outbox", sa.Column("traceparent", sa.String(64), nullable=True), schema=schema)


def downgrade():
    for schema in SCHEMAS_WITH_AN_OUTBOX:
        op.drop_column("outbox", "traceparent", schema=schema)
