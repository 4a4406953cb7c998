"""Notification rules: plain Python, no I/O.

Which events email the customer and what about, when a failed attempt is
tried again, which SMTP answers are final, and how a notification's status
may move:

    queued -> sent      the mail server took the message
    queued -> failed    refused for good (5xx for the recipient or message), or out of attempts
    failed -> queued    an admin's retry (attempts start again from 0)
"""
import re
import smtplib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parseaddr

from common.contract.errors import InvalidTransition
from common.contract.schemas.notifications import CUSTOMER_KINDS

QUEUED, SENT, FAILED = "queued", "sent", "failed"
TRANSITIONS = {QUEUED: (SENT, FAILED), FAILED: (QUEUED,), SENT: ()}
ORDER_CONFIRMATION, ORDER_SHIPPED, ORDER_DELIVERED, ORDER_CANCELLED = CUSTOMER_KINDS
STOCK_LOW = "stock_low"  # the staff's alert
# The order statuses a customer hears about, and what they are told.
KIND_OF_STATUS = {"shipped": ORDER_SHIPPED, "delivered": ORDER_DELIVERED, "cancelled": ORDER_CANCELLED}
MAX_RETRY_DELAY_SECONDS = 300.0
MAX_ERROR_LENGTH = 1000
SUBJECTS = {
    ORDER_CONFIRMATION: "We received your order {reference}",
    ORDER_SHIPPED: "Your order {reference} has shipped",
    ORDER_DELIVERED: "Your order {reference} was delivered",
    ORDER_CANCELLED: "Your order {reference} was cancelled",
}
STAFF_SUBJECT = "Stock low: {sku} ({available} available, threshold {threshold})"
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def notification_kind(event_type, order):
    """What an order event tells the customer, or None when it is not worth an email."""
    if event_type == "order_created":
        return ORDER_CONFIRMATION
    if event_type == "order_status_changed":
        return KIND_OF_STATUS.get(order.get("status"))
    return None


def order_reference(order_id):
    """The short form of an order id people read in a subject line."""
    return str(order_id).split("-")[0].upper()


def subject(kind, order):
    return SUBJECTS[kind].format(reference=order_reference(order["id"]))


def one_line(text):
    """Text for one line (a display name, a greeting): no line breaks or control characters."""
    return _CONTROL.sub(" ", str(text)).strip()


def message_id(notification_id, mail_from):
    """The Message-ID of a notification's email: derived from its id, so every attempt
    (a retry, a resend after a crash) carries the same one."""
    domain = parseaddr(mail_from)[1].rpartition("@")[2] or "localhost"
    return f"<notification-{notification_id}@{domain}>"


def new_notification(kind, order, customer, mail_from, notification_id=None):
    """The row of a new, queued notification of `order` to `customer` (id, name, email),
    without its bodies (rendered from templates by the caller)."""
    notification_id = notification_id or uuid.uuid4()
    return {
        "id": notification_id,
        "kind": kind,
        "order_id": order["id"],
        "customer_id": customer["id"],
        "recipient": customer["email"],
        "subject": subject(kind, order),
        "message_id": message_id(notification_id, mail_from),
    }


def staff_alert(product, address, mail_from, notification_id=None):
    """The row of a queued stock_low email about `product` (as the event carried it) to a staff
    `address`, without its bodies: no order, no customer."""
    notification_id = notification_id or uuid.uuid4()
    return {
        "id": notification_id,
        "kind": STOCK_LOW,
        "order_id": None,
        "customer_id": None,
        "recipient": address,
        "subject": one_line(STAFF_SUBJECT.format(sku=product["sku"], available=product.get("available"),
                                                 threshold=product.get("low_stock_threshold"))),
        "message_id": message_id(notification_id, mail_from),
    }


ORDER_FIELDS = {"items": [], "total_amount": None, "currency": "", "shipping_address": None, "carrier": None,
                "tracking_number": None}  # what a template may test for; a missing one is None, never shown


def email_context(kind, order, customer):
    """What the templates of `kind` are rendered with: the order as its event carried it
    (the optional fields of a partial one filled in) and the customer's name."""
    return {"kind": kind, "order": {**ORDER_FIELDS, **order}, "reference": order_reference(order["id"]),
            "customer_name": one_line(customer["name"])}


def retry_delay(attempt, base_seconds):
    """Seconds after failed attempt number `attempt` (1, 2, ...) before the next:
    base, 2 x base, 4 x base, ... never more than five minutes."""
    return min(base_seconds * 2 ** (attempt - 1), MAX_RETRY_DELAY_SECONDS)


def classify_send_error(exc):
    """(permanent, message) for what sending one email raised.

    Permanent: the server refused the recipient or the message itself with a
    5xx reply; trying again would get the same answer. Everything else is
    worth another attempt: the server unreachable or timing out, a 4xx
    (try later), and also what needs the operator rather than the customer
    (a refused login or sender, STARTTLS not offered): those are fixed in
    the configuration while the notification waits.
    """
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, reply = next(iter(exc.recipients.values()), (None, b""))
        return _is_5xx(code), _reply_text(code, reply)
    if isinstance(exc, smtplib.SMTPDataError):
        return _is_5xx(exc.smtp_code), _reply_text(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, smtplib.SMTPResponseException):
        return False, _reply_text(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, smtplib.SMTPServerDisconnected) or (
            isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPException)):  # refused, timeout, DNS, TLS
        return False, _clip(f"mail server unreachable: {_described(exc)}")
    return False, _clip(_described(exc))


@dataclass(frozen=True)
class Attempt:
    """A notification after one attempt to send it."""
    status: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    sent_at: datetime | None


def after_attempt(notification, error, now, base_seconds, max_attempts):
    """The notification's state after an attempt that raised `error` (None: sent).

    A permanent refusal fails it at once; another error queues it again after
    `retry_delay`, until `max_attempts` (NOTIFY_MAX_ATTEMPTS) attempts have failed.
    """
    attempts = notification.attempts + 1
    if error is None:
        check_transition(notification.status, SENT)
        return Attempt(SENT, attempts, notification.last_error, None, now)
    permanent, message = classify_send_error(error)
    if permanent or attempts >= max_attempts:
        check_transition(notification.status, FAILED)
        return Attempt(FAILED, attempts, message, None, None)
    return Attempt(QUEUED, attempts, message, now + timedelta(seconds=retry_delay(attempts, base_seconds)), None)


def check_transition(current, new):
    allowed = TRANSITIONS[current]
    if new not in allowed:
        raise InvalidTransition(f"A notification cannot go from {current} to {new}.",
                                {"status": current, "requested": new, "allowed": list(allowed)})


def check_can_retry(notification):
    """Only a failed notification can be queued again."""
    if notification.status != FAILED:
        raise InvalidTransition(f"Only a failed notification can be retried; this one is {notification.status}.",
                                {"status": notification.status, "requested": QUEUED,
                                 "allowed": list(TRANSITIONS[notification.status])})


def _described(exc):
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__


def _is_5xx(code):
    return isinstance(code, int) and 500 <= code <= 599


def _reply_text(code, reply):
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return _clip(" ".join(part for part in (str(code) if code is not None else "", one_line(reply)) if part))


def _clip(text):
    return text if len(text) <= MAX_ERROR_LENGTH else text[:MAX_ERROR_LENGTH - 3] + "..."
