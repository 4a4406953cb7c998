"""notifications claimed under a lease

The sender marks the due notifications it is about to send as claimed (a
token and the time the claim lasts until) and commits before sending; an
outcome is recorded only under the claim that sent it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SCHEMA = "notifications"


def upgrade():
    op.add_column("notifications", sa.Column("claim_token", UUID(as_uuid=True)), schema=SCHEMA)
    op.add_column("notifications", sa.Column("claimed_until", sa.DateTime(timezone=True)), schema=SCHEMA)
    op.create_check_constraint("notification_claim_whole", "notifications",
                               "(claim_token IS NULL) = (claimed_until IS NULL)", schema=SCHEMA)


def downgrade():
    op.drop_constraint("notification_claim_whole", "notifications", schema=SCHEMA, type_="check")
    op.drop_column("notifications", "claimed_until", schema=SCHEMA)
    op.drop_column("notifications", "claim_token", schema=SCHEMA)
