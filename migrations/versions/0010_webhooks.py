"""webhooks schema: subscriptions, what they were subscribed to when, events, deliveries, outbox

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SCHEMA = "webhooks"


def upgrade():
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    op.create_table(
        "webhooks",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("event_types", ARRAY(sa.String(64)), nullable=False),
        sa.Column("description", sa.String(500)),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("disabled_reason", sa.Text),
        sa.Column("secret_encrypted", sa.Text, nullable=False),
        sa.Column("failing_since", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_index("ix_webhooks_created", "webhooks", [sa.text("created_at DESC"), sa.text("id DESC")],
                    schema=SCHEMA)
    op.create_table(
        "webhook_versions",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("webhook_id", UUID(as_uuid=True), sa.ForeignKey(f"{SCHEMA}.webhooks.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("event_types", ARRAY(sa.String(64)), nullable=False),
        schema=SCHEMA,
    )
    op.create_index("ix_webhook_versions_in_force", "webhook_versions", ["webhook_id", sa.text("valid_from DESC")],
                    schema=SCHEMA)
    op.create_table(
        "events",
        sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "deliveries",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("event_id", UUID(as_uuid=True), sa.ForeignKey(f"{SCHEMA}.events.event_id"), nullable=False),
        sa.Column("webhook_id", UUID(as_uuid=True), sa.ForeignKey(f"{SCHEMA}.webhooks.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("attempts_before_resend", sa.Integer, nullable=False),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claim_token", UUID(as_uuid=True)),
        sa.Column("claimed_until", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("event_id", "webhook_id", name="deliveries_event_webhook_key"),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="delivery_status"),
        sa.CheckConstraint("attempts >= attempts_before_resend AND attempts_before_resend >= 0",
                           name="delivery_attempts_counted"),
        sa.CheckConstraint("(claim_token IS NULL) = (claimed_until IS NULL)", name="delivery_claim_whole"),
        schema=SCHEMA,
    )
    op.create_index("ix_deliveries_due", "deliveries", ["next_attempt_at"], schema=SCHEMA,
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_index("ix_deliveries_webhook_created", "deliveries",
                    ["webhook_id", sa.text("created_at DESC"), sa.text("id DESC")], schema=SCHEMA)
    op.create_index("ix_deliveries_event", "deliveries", ["event_id"], schema=SCHEMA)
    op.create_table(
        "outbox",
        sa.Column("event_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.Column("traceparent", sa.String(64)),
        schema=SCHEMA,
    )
    op.create_index("ix_outbox_pending", "outbox", ["next_attempt_at"], schema=SCHEMA,
                    postgresql_where=sa.text("sent_at IS NULL"))


def downgrade():
    op.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
