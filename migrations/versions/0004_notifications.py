"""notifications schema: the notification log, its customer directory, dedup and outbox

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SCHEMA = "notifications"


def upgrade():
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    op.create_table(
        "notifications",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("order_id", UUID(as_uuid=True)),
        sa.Column("customer_id", UUID(as_uuid=True), nullable=False),
        sa.Column("recipient", sa.String(254), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("body_text", sa.Text, nullable=False),
        sa.Column("body_html", sa.Text, nullable=False),
        sa.Column("message_id", sa.String(300), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("event_id", "recipient", name="notifications_event_recipient_key"),
        sa.CheckConstraint("status IN ('queued', 'sent', 'failed')", name="notification_status"),
        sa.CheckConstraint("attempts >= 0", name="notification_attempts_not_negative"),
        schema=SCHEMA,
    )
    op.create_index("ix_notifications_due", "notifications", ["next_attempt_at"], schema=SCHEMA,
                    postgresql_where=sa.text("status = 'queued'"))
    # Keyset paging is newest first: (created_at, id) descending, per filter.
    op.create_index("ix_notifications_created", "notifications",
                    [sa.text("created_at DESC"), sa.text("id DESC")], schema=SCHEMA)
    for column in ("order_id", "customer_id", "status"):
        op.create_index(f"ix_notifications_{column.removesuffix('_id')}_created", "notifications",
                        [column, sa.text("created_at DESC"), sa.text("id DESC")], schema=SCHEMA)

    op.create_table(
        "known_customers",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "processed_events",
        sa.Column("event_id", UUID(as_uuid=False), primary_key=True),
        sa.Column("handler", sa.String(100), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "outbox",
        sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        schema=SCHEMA,
    )
    op.create_index("ix_outbox_pending", "outbox", ["next_attempt_at"], schema=SCHEMA,
                    postgresql_where=sa.text("sent_at IS NULL"))


def downgrade():
    op.drop_table("outbox", schema=SCHEMA)
    op.drop_table("processed_events", schema=SCHEMA)
    op.drop_table("known_customers", schema=SCHEMA)
    op.drop_table("notifications", schema=SCHEMA)  # its indexes go with it
    op.execute(f"DROP SCHEMA IF EXISTS {SCHEMA}")
