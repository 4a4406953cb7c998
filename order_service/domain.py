"""Order rules: plain Python, no I/O."""
import uuid
from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal

from common.errors import Unprocessable, ValidationFailed

PENDING = "pending"


def merge_lines(items):
    """One line per sku, quantities added up, in sku order."""
    quantities = Counter()
    for item in items:
        quantities[item["sku"]] += item["quantity"]
    return [{"sku": sku, "quantity": quantity} for sku, quantity in sorted(quantities.items())]


def price_order(order_id, customer, lines, reservation, shipping_address, now=None):
    """The order row and its item rows, priced from the reservation.

    Prices come from inventory (the reservation records the price each unit
    was reserved at); totals are computed here, never taken from the client.
    """
    reserved = {item["sku"]: item for item in reservation["items"]}
    currencies = {reserved[line["sku"]]["currency"] for line in lines}
    if len(currencies) != 1:
        raise Unprocessable("All items of an order must share one currency.",
                            {"currencies": sorted(currencies)})
    item_rows = []
    for line in lines:
        unit_price = Decimal(reserved[line["sku"]]["unit_price"])
        item_rows.append({
            "sku": line["sku"],
            "quantity": line["quantity"],
            "unit_price": unit_price,
            "line_total": unit_price * line["quantity"],
        })
    now = now or datetime.now(timezone.utc)
    order_row = {
        "id": order_id,
        "customer_id": uuid.UUID(customer["id"]),
        "status": PENDING,
        "currency": currencies.pop(),
        "total_amount": sum((row["line_total"] for row in item_rows), Decimal("0.00")),
        "shipping_address": shipping_address if shipping_address is not None else customer.get("shipping_address"),
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }
    return order_row, item_rows


def parse_order_id(value):
    """A UUID, or None when `value` cannot name an order."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def require_uuid(value, field):
    parsed = parse_order_id(value)
    if parsed is None:
        raise ValidationFailed(f"Invalid {field}.", {field: ["Not a valid UUID."]})
    return parsed
