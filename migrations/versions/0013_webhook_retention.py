"""webhooks: what pruning past WEBHOOK_RETENTION_DAYS reads

- deliveries that ended (delivered or failed), by when they last changed;
- events, by when they arrived (the dedup of a redelivery lasts that long).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

SCHEMA = "webhooks"


def upgrade():
    op.create_index("ix_deliveries_ended", "deliveries", ["updated_at"], schema=SCHEMA,
                    postgresql_where=sa.text("status <> 'pending'"))
    op.create_index("ix_events_received", "events", ["received_at"], schema=SCHEMA)


def downgrade():
    op.drop_index("ix_events_received", "events", schema=SCHEMA)
    op.drop_index("ix_deliveries_ended", "deliveries", schema=SCHEMA)
