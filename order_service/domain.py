"""Order rules: plain Python, no I/O."""
import hashlib
import json
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from common.contract.caller import ADMIN, SERVICE
from common.contract.errors import (
    DeadlineExceeded,
    DomainError,
    FailureNotRecorded,
    Forbidden,
    IdempotencyKeyReused,
    InvalidTransition,
    OutcomeUnknown,
    ServiceUnavailable,
    Unprocessable,
    UpstreamTimeout,
    ValidationFailed,
    VersionConflict,
)
from common.contract.schemas.base import uuid_or_none
from common.contract.schemas.orders import MAX_IDEMPOTENCY_KEY, ORDER_STATUSES, OrderSchema

PENDING, PROCESSING, SHIPPED, DELIVERED, CANCELLED = ORDER_STATUSES

# The contract's status machine: the only legal moves.
TRANSITIONS = {
    PENDING: (PROCESSING, CANCELLED),
    PROCESSING: (SHIPPED, CANCELLED),
    SHIPPED: (DELIVERED,),
    DELIVERED: (),
    CANCELLED: (),
}
# The event of each status an order can move to, recorded with order_status_changed.
STATUS_EVENTS = {status: f"order_{status}" for status in (PROCESSING, SHIPPED, DELIVERED, CANCELLED)}
# What each new status does to the order's stock reservation.
STOCK_ACTION = {SHIPPED: "commit", CANCELLED: "release"}
EDITABLE = (PENDING,)
SHIPPING_EDITABLE = (PENDING, PROCESSING)
DELETABLE = (PENDING, CANCELLED)
_order_schema = OrderSchema()


@dataclass
class OrderItem:
    sku: str
    quantity: int
    unit_price: Decimal
    line_total: Decimal


@dataclass
class StatusChange:
    order_id: uuid.UUID
    from_status: str | None
    to_status: str
    changed_at: datetime
    changed_by: str
    reason: str | None = None


class Order:
    """The order aggregate: every change to an order goes through one of its methods,
    which checks the change, applies it, bumps `version` (the ETag) and `updated_at`,
    and records its event in `events` for the unit of work to write to the outbox.

    Its state (id, customer_id, status, currency, total_amount, shipping_address,
    carrier, tracking_number, version, created_at, updated_at, items) lives in the
    class that holds it: order_service.storage.Order maps it to the orders tables
    (with its own mapped `item_type` and `status_change_type`), the unit tests' fake
    keeps it in memory. That class gives `status_changes`, the order's history, as an
    append-only collection (`add`): new entries are written, old ones never loaded.
    """

    item_type = OrderItem
    status_change_type = StatusChange

    @property
    def events(self):
        """(event type, data) recorded since the unit of work last collected them."""
        return self.__dict__.setdefault("_events", [])

    def check_version(self, expected_version):
        if expected_version is not None and self.version != expected_version:
            raise VersionConflict("The order changed since you read it.",
                                  {"expected_version": expected_version, "current_version": self.version})

    def check_status_in(self, allowed, action):
        if self.status not in allowed:
            raise InvalidTransition(f"Cannot {action} an order that is {self.status}.",
                                    {"status": self.status, "allowed_statuses": list(allowed)})

    def check_editable(self, expected_version):
        """Items and shipping address change only while pending (checked before inventory is asked)."""
        self.check_version(expected_version)
        self.check_status_in(EDITABLE, "change the items of")

    def edit(self, now, lines=None, reservation=None, **changes):
        """New `lines` priced from `reservation` and/or a new shipping_address (in `changes`)."""
        if lines is not None:
            self.currency, self.total_amount, rows = price_lines(lines, reservation)
            self.items = [self.item_type(**row) for row in rows]
        if "shipping_address" in changes:
            self.shipping_address = changes["shipping_address"]
        return self._changed("order_updated", now)

    def update_shipping(self, changes, by, now, expected_version=None):
        """Set any of shipping_address, carrier, tracking_number before the order ships."""
        by.require(ADMIN, SERVICE)
        self.check_version(expected_version)
        self.check_status_in(SHIPPING_EDITABLE, "change the shipping of")
        for name, value in changes.items():
            setattr(self, name, value)
        return self._changed("order_updated", now)

    def change_status(self, to, by, now, expected_version=None, reason=None):
        """Move along the status machine; shipping needs the carrier and tracking number.

        Records order_status_changed (the order) and the new status's own event
        (order_processing, order_shipped, ...: the order with `previous_status` and `reason`)."""
        check_may_set_status(by, to)
        self.check_version(expected_version)
        self._check_transition(to)
        previous = self.status
        self.status_changes.add(self.status_change_type(
            order_id=self.id, from_status=previous, to_status=to, changed_at=now, changed_by=by.sub, reason=reason))
        self.status = to
        changed = self._changed("order_status_changed", now)
        self.events.append((STATUS_EVENTS[to], {**changed, "previous_status": previous, "reason": reason}))
        return changed

    def delete(self, by, expected_version=None):
        """Check that the order may go (pending or cancelled, by an admin or a service) and record
        order_deleted; the store then removes it."""
        by.require(ADMIN, SERVICE)
        self.check_version(expected_version)
        self.check_status_in(DELETABLE, "delete")
        return self._record("order_deleted")

    def lines(self):
        return [{"sku": item.sku, "quantity": item.quantity} for item in self.items]

    def _check_transition(self, to):
        allowed = TRANSITIONS[self.status]
        if to not in allowed:
            raise InvalidTransition(f"An order cannot go from {self.status} to {to}.",
                                    {"status": self.status, "requested": to, "allowed": list(allowed)})
        if to == SHIPPED:
            missing = [name for name in ("carrier", "tracking_number") if not getattr(self, name)]
            if missing:
                raise InvalidTransition("Set the carrier and tracking number (PUT .../shipping) before shipping.",
                                        {"status": self.status, "requested": to, "missing": missing})

    def _changed(self, event_type, now):
        self.version += 1
        self.updated_at = now
        return self._record(event_type)

    def _record(self, event_type):
        """The order as its event tells it, recorded with the event."""
        data = _order_schema.dump(self)
        self.events.append((event_type, data))
        return data


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


def check_same_caller(caller, order):
    """A repeated attempt id answers only the caller it could have been theirs."""
    if not caller.owns(order.customer_id):
        raise ValidationFailed("This attempt id names another order.", {"attempt_id": ["Already used."]})
    return order


def replayed_change(caller, order_id, answer):
    """The answer a change attempt committed, given again to another run of it: only for
    the order and the caller it could have been theirs."""
    if answer["id"] != str(uuid_or_none(order_id)) or not caller.owns(answer["customer_id"]):
        raise ValidationFailed("This attempt id names another change.", {"attempt_id": ["Already used."]})
    return answer


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
    """What a failed attempt (a create or a change) answers from now on, as JSON: the
    DomainError it raised, or internal_error for anything else (a bug)."""
    if not isinstance(error, DomainError):
        error = DomainError("The request could not be carried out.")
    return json.loads(json.dumps(error.to_dict(), default=str))


def is_final_failure(error):
    """Whether `error` may become its attempt's answer. Not when the outcome is open
    (OutcomeUnknown: a COMMIT cut off may have made it) nor past the deadline
    (DeadlineExceeded: no run of the attempt can commit any more, so nothing to record)."""
    return not isinstance(error, (OutcomeUnknown, DeadlineExceeded))


def failure_not_recorded(order_id):
    """A run of an attempt on `order_id` failed and could not make that final."""
    return FailureNotRecorded("Nothing was done, but that could not be made final: another run of this request "
                              "may still do it.", {"order_id": str(order_id), "reason": "failure_not_recorded"})


# ---- who may do what (the caller is a common.contract.caller.Caller) ------------------


def check_may_order_for(caller, customer_id):
    if not caller.owns(customer_id):
        raise Forbidden("You may create orders only for yourself.", {"customer_id": str(customer_id)})


def check_may_set_status(caller, new_status):
    """Customers may only cancel (their own orders); admins and services move orders along."""
    if caller.is_customer and new_status != CANCELLED:
        raise Forbidden("Customers may only cancel their orders.", {"status": new_status, "allowed": [CANCELLED]})
