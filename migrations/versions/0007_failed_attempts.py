"""how each failed create_order attempt failed

A create_order run that fails records its answer for the attempt (the order
id the gateway fixed), so no other run of that attempt can make the order
after its client was told it failed.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "failed_attempts",
        sa.Column("order_id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("error", postgresql.JSONB(), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        schema="orders")
    op.create_index("ix_failed_attempts_failed_at", "failed_attempts", ["failed_at"], schema="orders")


def downgrade():
    op.drop_table("failed_attempts", schema="orders")
