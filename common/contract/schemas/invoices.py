"""Invoices: the number's pattern, the list query and what an invoice looks like."""
import decimal
from datetime import timezone

from marshmallow import fields

from common.contract.schemas.base import AddressSchema, ListQuery, Money, Schema, UtcDateTime

INVOICE_NUMBER_PATTERN = r"^INV-[0-9]{4}-[0-9]{6}\Z"


class InvoiceListQuery(ListQuery):
    customer_id = fields.UUID()
    # ISO-8601; a time without an offset is taken as UTC. Both exclusive.
    issued_after = UtcDateTime(default_timezone=timezone.utc)
    issued_before = UtcDateTime(default_timezone=timezone.utc)


class SellerSchema(Schema):
    name = fields.String()
    address = fields.String()
    tax_id = fields.String()


class BillToSchema(Schema):
    name = fields.String()
    email = fields.String()
    address = fields.Nested(AddressSchema, allow_none=True, metadata={
        "description": "The order's shipping address (null if the order had none)."})


class InvoiceLineSchema(Schema):
    sku = fields.String()
    name = fields.String(metadata={"description": "The product's name when the invoice was issued."})
    quantity = fields.Integer()
    unit_price = Money()
    line_total = Money()


class TaxRate(fields.Decimal):
    """A rate as a plain decimal string ("0.19" for 19 %), never in exponent form."""

    def __init__(self, **kwargs):
        super().__init__(as_string=True, **kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        return format(decimal.Decimal(value).normalize(), "f")


class InvoiceSchema(Schema):
    number = fields.String(metadata={"description": "`INV-<year>-<6 digits>`, consecutive without gaps "
                                                    "within a year.", "example": "INV-2026-000042"})
    order_id = fields.UUID()
    customer_id = fields.UUID()
    issued_at = fields.AwareDateTime()
    seller = fields.Nested(SellerSchema)
    bill_to = fields.Nested(BillToSchema)
    lines = fields.List(fields.Nested(InvoiceLineSchema))
    currency = fields.String()
    subtotal = Money(metadata={"description": "`total_amount - tax_amount`."})
    tax_rate = TaxRate(metadata={"description": "The rate in force when the invoice was issued (prices "
                                                "include tax).", "example": "0.19"})
    tax_amount = Money(metadata={"description": "`total_amount - total_amount / (1 + tax_rate)`, rounded "
                                                "half-up to cents."})
    total_amount = Money(metadata={"description": "The order's total."})
