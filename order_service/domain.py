"""Order rules: plain Python, no I/O."""
import hashlib
import json
import uuid
from collections import Counter
from datetime import datetime
from decimal import Decimal

from common.contract.errors import (
    DomainError,
    Forbidden,
    IdempotencyKeyReused,
    InvalidTransition,
    ServiceUnavailable,
    Unprocessable,
    UpstreamTimeout,
    ValidationFailed,
    VersionConflict,
)

PENDING, PROCESSING, SHIPPED, DELIVERED, CANCELLED = (
    "pending", "processing", "shipped", "delivered", "cancelled")

# The contract's status machine: the only legal moves.
TRANSITIONS = {
    PENDING: (PROCESSING, CANCELLED),
    PROCESSING: (SHIPPED, CANCELLED),
    SHIPPED: (DELIVERED,),
    DELIVERED: (),
    CANCELLED: (),
}
# What each new status does to the order's stock reservation.
STOCK_ACTION = {SHIPPED: "commit", CANCELLED: "release"}
EDITABLE = (PENDING,)
SHIPPING_EDITABLE = (PENDING, PROCESSING)
DELETABLE = (PENDING, CANCELLED)
MAX_IDEMPOTENCY_KEY = 200


def merge_lines(items):
    """One line per sku, quantities added up, in sku order."""
    quantities = Counter()
    for item in items:
        quantities[item["sku"]] += item["quantity"]
    return [{"sku": sku, "quantity": quantity} for sku, quantity in sorted(quantities.items())]


def price_lines(lines, reservation):
    """(currency, total, item rows) priced from the reservation.

    Prices come from inventory (the reservation records the price each unit
    was reserved at); totals are computed here, never taken from the client.
    """
    reserved = {item["sku"]: item for item in reservation["items"]}
    currencies = {reserved[line["sku"]]["currency"] for line in lines}
    if len(currencies) != 1:
        raise Unprocessable("All items of an order must share one currency.",
                            {"currencies": sorted(currencies)})
    rows = []
    for line in lines:
        unit_price = Decimal(reserved[line["sku"]]["unit_price"])
        rows.append({"sku": line["sku"], "quantity": line["quantity"], "unit_price": unit_price,
                     "line_total": unit_price * line["quantity"]})
    total = sum((row["line_total"] for row in rows), Decimal("0.00"))
    return currencies.pop(), total, rows


def new_order(order_id, customer, lines, reservation, shipping_address, now):
    """The order row and its item rows for a new, pending order."""
    currency, total, item_rows = price_lines(lines, reservation)
    order_row = {
        "id": order_id,
        "customer_id": uuid.UUID(customer["id"]),
        "status": PENDING,
        "currency": currency,
        "total_amount": total,
        "shipping_address": shipping_address if shipping_address is not None else customer.get("shipping_address"),
        "carrier": None,
        "tracking_number": None,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }
    return order_row, item_rows


def customer_from_directory(known):
    return {"id": str(known.id), "shipping_address": known.shipping_address}


def check_reservation_held(reservation):
    """A reservation already released belongs to an earlier run of this attempt that
    failed and was undone (say its reply was lost, and the gateway sent the call
    again): nothing was made and nothing will be, so the answer is 503, safe to retry."""
    if reservation["status"] != "reserved":
        raise ServiceUnavailable("An earlier run of this attempt failed and was undone; nothing was made. "
                                 "Send the request again.", {"attempt": "failed", "reservation": reservation["status"]})


def check_create_deadline(started, now, deadline_seconds):
    """An order not committed `deadline_seconds` (ORDER_CREATE_DEADLINE_SECONDS) after
    it started is abandoned, and its reservation released; inventory's reconciler
    waits longer than that (RESERVATION_GRACE_SECONDS) before it releases
    reservations without an order."""
    if now - started > deadline_seconds:
        raise UpstreamTimeout("Creating the order took too long; nothing was created.",
                              {"deadline_seconds": deadline_seconds})


def touch(order, now: datetime):
    """Every change bumps the version (the ETag) and updated_at."""
    order.version += 1
    order.updated_at = now


def check_version(order, expected_version):
    if expected_version is not None and order.version != expected_version:
        raise VersionConflict("The order changed since you read it.",
                              {"expected_version": expected_version, "current_version": order.version})


def check_status_in(order, allowed, action):
    if order.status not in allowed:
        raise InvalidTransition(f"Cannot {action} an order that is {order.status}.",
                                {"status": order.status, "allowed_statuses": list(allowed)})


def check_transition(order, new_status):
    allowed = TRANSITIONS[order.status]
    if new_status not in allowed:
        raise InvalidTransition(f"An order cannot go from {order.status} to {new_status}.",
                                {"status": order.status, "requested": new_status, "allowed": list(allowed)})
    if new_status == SHIPPED:
        missing = [field for field in ("carrier", "tracking_number") if not getattr(order, field)]
        if missing:
            raise InvalidTransition("Set the carrier and tracking number (PUT .../shipping) before shipping.",
                                    {"status": order.status, "requested": new_status, "missing": missing})


def check_same_caller(caller, order):
    """A repeated attempt id answers only the caller it could have been theirs."""
    if not caller.owns(order.customer_id):
        raise ValidationFailed("This attempt id names another order.", {"attempt_id": ["Already used."]})
    return order


def check_idempotency_key(key):
    if key is None:
        return None
    key = str(key)
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise ValidationFailed("Invalid Idempotency-Key.",
                               {"Idempotency-Key": [f"1 to {MAX_IDEMPOTENCY_KEY} printable characters."]})
    return key


def request_fingerprint(data):
    """The same body in any key order has the same fingerprint."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def replay(first_use, fingerprint):
    """The response to repeat for a reused key, or IdempotencyKeyReused."""
    if first_use.request_hash != fingerprint:
        raise IdempotencyKeyReused("This Idempotency-Key was used with a different request.",
                                   {"order_id": str(first_use.order_id)})
    return json.loads(first_use.response)


def failure_record(error):
    """What a failed create_order attempt answers from now on, as JSON: the
    DomainError it raised, or internal_error for anything else (a bug)."""
    if not isinstance(error, DomainError):
        error = DomainError("The order could not be created.")
    return json.loads(json.dumps(error.to_dict(), default=str))


# ---- who may do what (the caller is a common.contract.caller.Caller) ------------------


def check_may_order_for(caller, customer_id):
    if not caller.owns(customer_id):
        raise Forbidden("You may create orders only for yourself.", {"customer_id": str(customer_id)})


def check_may_set_status(caller, new_status):
    """Customers may only cancel (their own orders); admins and services move orders along."""
    if caller.is_customer and new_status != CANCELLED:
        raise Forbidden("Customers may only cancel their orders.", {"status": new_status, "allowed": [CANCELLED]})
