"""customers.api_keys: keys for machine clients, kept only as their SHA-256

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SCHEMA = "customers"


def upgrade():
    op.create_table(
        "api_keys",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("customer_id", UUID(as_uuid=True), sa.ForeignKey(f"{SCHEMA}.customers.id")),
        sa.Column("prefix", sa.String(8), nullable=False),
        sa.Column("key_digest", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("key_digest", name="api_keys_key_digest_key"),
        sa.CheckConstraint("role IN ('admin', 'customer')", name="api_key_role"),
        sa.CheckConstraint("(role = 'customer') = (customer_id IS NOT NULL)", name="api_key_customer_for_customers"),
        schema=SCHEMA,
    )
    # A gateway looks a key up by its prefix, then compares digests in constant time.
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"], schema=SCHEMA)
    op.create_index("ix_api_keys_created", "api_keys", ["created_at", "id"], schema=SCHEMA)


def downgrade():
    op.drop_table("api_keys", schema=SCHEMA)
