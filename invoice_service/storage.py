"""invoices schema: the SQLAlchemy models and `InvoiceStore`, its queries.

Numbering is gap-free because the number is taken in the issuing transaction
from a counter row per year (`invoice_counters`), whose row lock the
transaction holds until it commits: a rollback undoes the increment with
everything else, and the next issuer waits for the lock and then sees the
committed count. A Postgres sequence would not do: nextval() is never rolled
back, so a failed issue would leave a hole.
"""
import uuid
from datetime import datetime, timezone
from decimal import Decimal

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    cast,
    exists,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID, aggregate_order_by, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import func
from sqlalchemy.types import DateTime

from common.kit.consumers import processed_events_model
from common.kit.customer_directory import CustomerDirectory, known_customer_model
from common.kit.outbox import outbox_model
from common.kit.unit_of_work import StorageLayout

SCHEMA = "invoices"


class InvoicesBase(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Invoice(InvoicesBase):
    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("order_id", name="invoices_order_id_key"),  # exactly one invoice per order
        UniqueConstraint("year", "sequence", name="invoices_year_sequence_key"),
        CheckConstraint("number = 'INV-' || year || '-' || lpad(sequence::text, 6, '0')", name="invoice_number"),
        # Lists are newest (highest number) first, optionally for one customer or a time range.
        Index("ix_invoices_customer_number", "customer_id", text("number DESC")),
        Index("ix_invoices_issued_at", "issued_at"),
    )

    number: Mapped[str] = mapped_column(String(15), primary_key=True)
    year: Mapped[int] = mapped_column(Integer)
    sequence: Mapped[int] = mapped_column(Integer)
    order_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    # Ids from order_service and customer_service: no foreign keys across schemas.
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seller: Mapped[dict] = mapped_column(JSONB)
    bill_to: Mapped[dict] = mapped_column(JSONB)
    currency: Mapped[str] = mapped_column(String(3))
    subtotal: Mapped[Decimal] = mapped_column(Numeric(20, 2))
    tax_rate: Mapped[Decimal] = mapped_column(Numeric(5, 4))
    tax_amount: Mapped[Decimal] = mapped_column(Numeric(20, 2))
    total_amount: Mapped[Decimal] = mapped_column(Numeric(20, 2))


class InvoiceLine(InvoicesBase):
    __tablename__ = "invoice_lines"

    invoice_number: Mapped[str] = mapped_column(
        String(15), ForeignKey("invoices.invoices.number", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    line_total: Mapped[Decimal] = mapped_column(Numeric(20, 2))


class InvoiceCounter(InvoicesBase):
    """The last number issued in a year; its row lock serializes issuing within the year."""
    __tablename__ = "invoice_counters"
    __table_args__ = (CheckConstraint("last_number BETWEEN 0 AND 999999", name="counter_six_digits"),)

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_number: Mapped[int] = mapped_column(Integer)


KnownCustomer = known_customer_model(InvoicesBase)


_invoices, _lines, _counters = Invoice.__table__, InvoiceLine.__table__, InvoiceCounter.__table__

# This year's counter row, made if missing; the year is the database clock's
# (one clock for every instance of the service). A concurrent first insert of
# the same year waits here for the other's transaction, then does nothing.
_ENSURE_COUNTER = text(f"""
WITH this_year AS (
    SELECT CAST(EXTRACT(YEAR FROM clock_timestamp() AT TIME ZONE 'UTC') AS integer) AS year
), ensured AS (
    INSERT INTO {SCHEMA}.invoice_counters (year, last_number)
    SELECT year, 0 FROM this_year
    ON CONFLICT (year) DO NOTHING
)
SELECT year FROM this_year
""")
# Count one up. The UPDATE waits for the row lock of any transaction issuing in
# the same year and keeps it until this transaction ends; the issue time is read
# after the lock is held, so numbers and issue times rise together.
_TAKE_NUMBER = text(f"""
UPDATE {SCHEMA}.invoice_counters SET last_number = last_number + 1
WHERE year = :year
RETURNING last_number, clock_timestamp() AS issued_at
""")


def _with_lines(invoices_query):
    """Each invoice with its lines in one round trip (a correlated json_agg), as plain rows."""
    page = invoices_query.subquery("page")
    lines = (select(func.coalesce(
        func.json_agg(aggregate_order_by(
            func.json_build_object("sku", _lines.c.sku, "name", _lines.c.name, "quantity", _lines.c.quantity,
                                   "unit_price", cast(_lines.c.unit_price, Text),
                                   "line_total", cast(_lines.c.line_total, Text)),
            _lines.c.position)),
        text("'[]'::json")))
        .where(_lines.c.invoice_number == page.c.number).scalar_subquery())
    return select(page, lines.label("lines")), page


_BY_ORDER, _ = _with_lines(select(_invoices).where(_invoices.c.order_id == bindparam("order_id")))
_BY_NUMBER, _ = _with_lines(select(_invoices).where(_invoices.c.number == bindparam("number")))
_HAS_INVOICE = select(exists().where(_invoices.c.order_id == bindparam("order_id")))


def _view(row):
    invoice = dict(row._mapping)
    invoice["issued_at"] = invoice["issued_at"].astimezone(timezone.utc)
    return invoice


class InvoiceStore(CustomerDirectory):
    """The invoices schema's queries, on one session (see common/kit/unit_of_work.py)."""
    known_customers = KnownCustomer

    def __init__(self, session):
        self.session = session

    # -- issuing (in the issuing transaction) --------------------------------

    def take_number(self):
        """(year, sequence, issued_at) of the next invoice: this year's counter,
        counted up and locked until the transaction ends (a rollback gives the
        number back), and the database's clock read once the lock is held."""
        connection = self.session.connection()
        year = connection.execute(_ENSURE_COUNTER).scalar_one()
        row = connection.execute(_TAKE_NUMBER, {"year": year}).one()
        return year, row.last_number, row.issued_at

    def insert_invoice(self, year, sequence, invoice):
        """The invoice and its lines (unique order_id and number: a second invoice for one order fails)."""
        connection = self.session.connection()
        connection.execute(insert(_invoices), {
            "year": year, "sequence": sequence,
            **{column: invoice[column] for column in (
                "number", "order_id", "customer_id", "issued_at", "seller", "bill_to", "currency", "subtotal",
                "tax_rate", "tax_amount", "total_amount")}})
        connection.execute(insert(_lines), [
            {"invoice_number": invoice["number"], "position": position, **line}
            for position, line in enumerate(invoice["lines"], start=1)])

    # -- reads ------------------------------------------------------------------

    def has_invoice_for_order(self, order_id):
        return self.session.connection().execute(_HAS_INVOICE, {"order_id": order_id}).scalar_one()

    def invoice_for_order(self, order_id):
        row = self.session.connection().execute(_BY_ORDER, {"order_id": order_id}).first()
        return _view(row) if row is not None else None

    def invoice_by_number(self, number):
        row = self.session.connection().execute(_BY_NUMBER, {"number": number}).first()
        return _view(row) if row is not None else None

    def list_invoices(self, filters, limit, after_number=None):
        """Invoices (dicts, with lines) newest first, i.e. by number descending (numbers rise with the
        issue time); `after_number` is the last one seen."""
        invoices = select(_invoices).order_by(_invoices.c.number.desc()).limit(limit)
        if "customer_id" in filters:
            invoices = invoices.where(_invoices.c.customer_id == filters["customer_id"])
        if "issued_after" in filters:
            invoices = invoices.where(_invoices.c.issued_at > filters["issued_after"])
        if "issued_before" in filters:
            invoices = invoices.where(_invoices.c.issued_at < filters["issued_before"])
        if after_number is not None:
            invoices = invoices.where(_invoices.c.number < after_number)
        query, page = _with_lines(invoices)
        query = query.order_by(page.c.number.desc())
        return [_view(row) for row in self.session.connection().execute(query)]

    def ping(self):
        self.session.execute(select(1))


layout = StorageLayout(base=InvoicesBase, store=InvoiceStore, outbox=outbox_model(InvoicesBase),
                       processed_events=processed_events_model(InvoicesBase))
