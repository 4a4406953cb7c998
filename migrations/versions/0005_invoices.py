"""invoices schema: invoices, their lines, the per-year counter, the customer directory

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SCHEMA = "invoices"


def upgrade():
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    op.create_table(
        "invoices",
        sa.Column("number", sa.String(15), primary_key=True),
        sa.Column("year", sa.Integer, nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False),
        sa.Column("order_id", UUID(as_uuid=True), nullable=False),
        sa.Column("customer_id", UUID(as_uuid=True), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seller", JSONB, nullable=False),
        sa.Column("bill_to", JSONB, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("subtotal", sa.Numeric(20, 2), nullable=False),
        sa.Column("tax_rate", sa.Numeric(5, 4), nullable=False),
        sa.Column("tax_amount", sa.Numeric(20, 2), nullable=False),
        sa.Column("total_amount", sa.Numeric(20, 2), nullable=False),
        sa.UniqueConstraint("order_id", name="invoices_order_id_key"),
        sa.UniqueConstraint("year", "sequence", name="invoices_year_sequence_key"),
        sa.CheckConstraint("number = 'INV-' || year || '-' || lpad(sequence::text, 6, '0')", name="invoice_number"),
        schema=SCHEMA,
    )
    op.create_index("ix_invoices_customer_number", "invoices", ["customer_id", sa.text("number DESC")],
                    schema=SCHEMA)
    op.create_index("ix_invoices_issued_at", "invoices", ["issued_at"], schema=SCHEMA)
    op.create_table(
        "invoice_lines",
        sa.Column("invoice_number", sa.String(15),
                  sa.ForeignKey(f"{SCHEMA}.invoices.number", ondelete="CASCADE"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
        sa.Column("line_total", sa.Numeric(20, 2), nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "invoice_counters",
        sa.Column("year", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_number", sa.Integer, nullable=False),
        sa.CheckConstraint("last_number BETWEEN 0 AND 999999", name="counter_six_digits"),
        schema=SCHEMA,
    )
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
    op.drop_table("invoice_counters", schema=SCHEMA)
    op.drop_table("invoice_lines", schema=SCHEMA)
    op.drop_table("invoices", schema=SCHEMA)
    op.execute(f"DROP SCHEMA IF EXISTS {SCHEMA}")
