"""Invoice rules: plain Python, no I/O.

Numbers are `INV-<year>-<6 digits>`; the storage's counter row per year hands
out the sequence (see storage.take_number), these rules format and check it.
Prices include tax: the tax is the part of the total that is tax, and the
total stays the order's to the cent.
"""
import re
import uuid
from datetime import timezone
from decimal import ROUND_HALF_UP, Decimal

from common.contract.schemas.invoices import INVOICE_NUMBER_PATTERN

SHIPPED = "shipped"
CENT = Decimal("0.01")
MAX_SEQUENCE = 999_999  # six digits
_NUMBER = re.compile(INVOICE_NUMBER_PATTERN)


class NumberingExhausted(Exception):
    """A year's six digits are used up: nothing is issued (the event is retried, then dead-lettered)."""


class YearTurned(Exception):
    """The year changed between choosing its counter and reading the issue time
    (a transaction that waited for the counter across midnight UTC on 31
    December). The transaction rolls back and the event is retried."""


class InconsistentOrder(Exception):
    """The order's lines do not add up to its total: no invoice could be right."""


def is_shipped(order):
    """Whether an order_status_changed event's order is the one to invoice."""
    return isinstance(order, dict) and order.get("status") == SHIPPED


def invoice_number(year, sequence):
    """INV-2026-000042 for the 42nd invoice of 2026."""
    if not 1 <= sequence <= MAX_SEQUENCE:
        raise NumberingExhausted(f"invoice {sequence} of {year} does not fit six digits")
    if not 1000 <= year <= 9999:
        raise ValueError(f"year {year} does not fit four digits")
    return f"INV-{year:04d}-{sequence:06d}"


def is_invoice_number(value):
    """Whether `value` could be an invoice number (anything else names no invoice)."""
    return isinstance(value, str) and _NUMBER.match(value) is not None


def parse_number_cursor(key):
    """The number inside a list cursor (see common.kit.paging.decode_cursor)."""
    if not is_invoice_number(key):
        raise ValueError("not an invoice number")
    return key


def check_issue_year(year, issued_at):
    """The number's year is the issue time's UTC year."""
    if issued_at.astimezone(timezone.utc).year != year:
        raise YearTurned(f"counter of {year}, issue time {issued_at.isoformat()}")


def tax_split(total, rate):
    """(subtotal, tax) of a tax-inclusive `total`: tax = total - total / (1 + rate),
    rounded half-up to cents, and subtotal = total - tax, so they add up to the total."""
    total, rate = Decimal(total), Decimal(rate)
    tax = (total - total / (1 + rate)).quantize(CENT, rounding=ROUND_HALF_UP)
    return total - tax, tax


def seller(name, address, tax_id):
    """The seller as printed on an invoice (from SELLER_NAME, SELLER_ADDRESS, SELLER_TAX_ID)."""
    return {"name": name, "address": address, "tax_id": tax_id}


def customer_from_directory(known):
    return {"id": str(known["id"]), "name": known["name"], "email": known["email"]}


def build_invoice(number, issued_at, order, customer, product_names, seller, tax_rate):
    """The invoice of a shipped `order` (as its event carries it).

    Lines are the order's (sku, quantity, unit price, line total) with the
    product's name when the invoice is issued (the sku where inventory knows
    none); bill-to is the customer's name and email and the order's shipping
    address; the total is the order's to the cent.
    """
    lines = [{"sku": item["sku"], "name": product_names.get(item["sku"]) or item["sku"],
              "quantity": int(item["quantity"]), "unit_price": Decimal(item["unit_price"]),
              "line_total": Decimal(item["line_total"])}
             for item in order["items"]]
    total = Decimal(order["total_amount"])
    if sum((line["line_total"] for line in lines), Decimal("0.00")) != total:
        raise InconsistentOrder(f"order {order['id']}: lines do not add up to {total}")
    subtotal, tax = tax_split(total, tax_rate)
    return {
        "number": number,
        "order_id": uuid.UUID(str(order["id"])),
        "customer_id": uuid.UUID(str(order["customer_id"])),
        "issued_at": issued_at.astimezone(timezone.utc),
        "seller": dict(seller),
        "bill_to": {"name": customer["name"], "email": customer["email"],
                    "address": order.get("shipping_address")},
        "lines": lines,
        "currency": order["currency"],
        "subtotal": subtotal,
        "tax_rate": Decimal(tax_rate),
        "tax_amount": tax,
        "total_amount": total,
    }
