"""Notification rules: plain Python, no I/O.

Which events tell the customer what, on which channels (email, SMS, push:
one notification per event, recipient and channel, each channel on per the
customer's preferences and only with an address), what each message says,
when a failed attempt is tried again, which answers are final, and how a
notification's status may move:

    queued -> sent      the mail server took the message
    queued -> failed    refused for good (5xx for the recipient or message), or out of attempts
    failed -> queued    an admin's retry (attempts start again from 0)
"""
import json
import re
import smtplib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parseaddr

from common.contract.errors import InvalidTransition
from common.contract.schemas.customers import DEFAULT_PREFERENCES
from common.contract.schemas.notifications import CUSTOMER_KINDS

QUEUED, SENT, FAILED = "queued", "sent", "failed"
TRANSITIONS = {QUEUED: (SENT, FAILED), FAILED: (QUEUED,), SENT: ()}
ORDER_CONFIRMATION, ORDER_SHIPPED, ORDER_DELIVERED, ORDER_CANCELLED = CUSTOMER_KINDS
STOCK_LOW = "stock_low"  # the staff's alert
EMAIL, SMS, PUSH = "email", "sms", "push"
# The order events a customer hears about (each status's own event, which carries the reason), and what
# they are told.
KIND_OF_EVENT = {"order_created": ORDER_CONFIRMATION, "order_shipped": ORDER_SHIPPED,
                 "order_delivered": ORDER_DELIVERED, "order_cancelled": ORDER_CANCELLED}
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


SHORT_TEXTS = {  # SMS bodies and push texts: each names the order id
    ORDER_CONFIRMATION: "We received your order {id} ({total}).",
    ORDER_SHIPPED: "Your order {id} has shipped{shipping}.",
    ORDER_DELIVERED: "Your order {id} was delivered.",
    ORDER_CANCELLED: "Your order {id} was cancelled.{reason}",
}
# GSM 03.38: the basic set (one septet each) and its extension (two: an escape and the character).
GSM7_BASIC = set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                 "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENDED = set("^{}\\[~]|€")
# What two concatenated segments hold: 2 x 153 septets, or 2 x 67 UCS-2 code units.
TWO_SEGMENTS_GSM7, TWO_SEGMENTS_UCS2 = 306, 134
MAX_PUSH_TEXT = 1000  # characters: the encrypted payload must stay under a push service's 4 KiB


class ProviderAnswer(Exception):
    """An SMS provider or a push service answered an attempt with something other than success."""

    def __init__(self, channel, status, text):
        super().__init__(f"{status} {text}")
        self.channel, self.status, self.text = channel, status, text


# Answers that the same message would get again: the recipient or the message is refused.
# (401/403 mean our credentials or VAPID key: fixed in the configuration while it waits.)
PERMANENT_STATUSES = {SMS: {400, 404, 413, 422}, PUSH: {400, 404, 410, 413}}
GONE_STATUSES = {404, 410}  # RFC 8030: the push subscription no longer exists
UNREACHABLE = {EMAIL: "mail server", SMS: "SMS provider", PUSH: "push service"}


def notification_kind(event_type, order=None):
    """What an order event tells the customer, or None when it is not worth a message."""
    return KIND_OF_EVENT.get(event_type)


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
    """The row of a new, queued email of `order` to `customer` (id, name, email),
    without its bodies (rendered from templates by the caller)."""
    notification_id = notification_id or uuid.uuid4()
    return {
        "id": notification_id,
        "channel": EMAIL,
        "kind": kind,
        "order_id": order["id"],
        "customer_id": customer["id"],
        "recipient": customer["email"],
        "subject": subject(kind, order),
        "message_id": message_id(notification_id, mail_from),
        "push_subscription": None,
    }


def preferences_of(contacts):
    return {**DEFAULT_PREFERENCES, **((contacts or {}).get("notification_preferences") or {})}


def channel_notifications(kind, order, customer, contacts):
    """The queued SMS and push notifications of `order` to `customer`: an SMS when the
    customer's preferences turn SMS on and they have a phone, a push to each of their
    subscriptions when push is on (the email row is new_notification's)."""
    contacts = contacts or {}
    preferences = preferences_of(contacts)
    text = short_text(kind, order)
    rows = []
    base = {"kind": kind, "order_id": order["id"], "customer_id": customer["id"], "subject": subject(kind, order),
            "message_id": None, "body_html": ""}
    if preferences[SMS] and contacts.get("phone"):
        rows.append({**base, "id": uuid.uuid4(), "channel": SMS, "recipient": contacts["phone"],
                     "body_text": fit_sms(text), "push_subscription": None})
    if preferences[PUSH]:
        payload = push_payload(kind, order, base["subject"], text)
        for subscription in contacts.get("push_subscriptions") or []:
            rows.append({**base, "id": uuid.uuid4(), "channel": PUSH, "recipient": subscription["endpoint"],
                         "body_text": payload,
                         "push_subscription": {"id": subscription["id"], "keys": subscription["keys"]}})
    return rows


def short_text(kind, order):
    """The text of an SMS or a push about `order`: it names the order id, and a cancellation's reason."""
    shipping = ""
    if order.get("carrier") or order.get("tracking_number"):
        shipping = f" with {order.get('carrier') or 'the carrier'}, tracking {order.get('tracking_number') or '-'}"
    reason = f" Reason: {one_line(order['reason'])}" if order.get("reason") else ""
    total = " ".join(str(part) for part in (order.get("total_amount"), order.get("currency")) if part)
    return SHORT_TEXTS[kind].format(id=order["id"], total=total or "see your email", shipping=shipping,
                                    reason=reason)


def sms_length(text):
    """(units, what two segments hold) for `text`: GSM-7 septets when every character has one,
    else UCS-2 code units."""
    if all(char in GSM7_BASIC or char in GSM7_EXTENDED for char in text):
        return sum(2 if char in GSM7_EXTENDED else 1 for char in text), TWO_SEGMENTS_GSM7
    return len(text.encode("utf-16-le")) // 2, TWO_SEGMENTS_UCS2


def fit_sms(text):
    """`text`, cut at its end (with "...") so that it fits in two SMS segments."""
    units, limit = sms_length(text)
    if units <= limit:
        return text
    text = text[:limit]  # every character takes at least one unit
    while sms_length(text + "...")[0] > limit:
        text = text[:-1]
    return text.rstrip() + "..."


def push_payload(kind, order, title, text):
    """What a push carries (JSON, encrypted for the subscription): a notification a service
    worker can show as it is, and what it is about."""
    if len(text) > MAX_PUSH_TEXT:
        text = text[:MAX_PUSH_TEXT - 3] + "..."
    return json.dumps({"title": title, "body": text, "kind": kind, "order_id": order["id"],
                       "status": order.get("status"), "tag": f"order-{order['id']}"}, ensure_ascii=False)


def staff_alert(product, address, mail_from, notification_id=None):
    """The row of a queued stock_low email about `product` (as the event carried it) to a staff
    `address`, without its bodies: no order, no customer."""
    notification_id = notification_id or uuid.uuid4()
    return {
        "id": notification_id,
        "channel": EMAIL,
        "push_subscription": None,
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
            "customer_name": one_line(customer["name"]), "reason": order.get("reason")}


def retry_delay(attempt, base_seconds):
    """Seconds after failed attempt number `attempt` (1, 2, ...) before the next:
    base, 2 x base, 4 x base, ... never more than five minutes."""
    return min(base_seconds * 2 ** (attempt - 1), MAX_RETRY_DELAY_SECONDS)


def classify_send_error(exc, channel=EMAIL):
    """(permanent, message) for what sending one message on `channel` raised.

    SMS and push: a provider's answer in PERMANENT_STATUSES is final (the number,
    the subscription or the message is refused); any other answer, and a provider
    that cannot be reached, is worth another attempt.

    Email:
    Permanent: the server refused the recipient or the message itself with a
    5xx reply; trying again would get the same answer. Everything else is
    worth another attempt: the server unreachable or timing out, a 4xx
    (try later), and also what needs the operator rather than the customer
    (a refused login or sender, STARTTLS not offered): those are fixed in
    the configuration while the notification waits.
    """
    if isinstance(exc, ProviderAnswer):
        return exc.status in PERMANENT_STATUSES[exc.channel], _reply_text(exc.status, exc.text)
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, reply = next(iter(exc.recipients.values()), (None, b""))
        return _is_5xx(code), _reply_text(code, reply)
    if isinstance(exc, smtplib.SMTPDataError):
        return _is_5xx(exc.smtp_code), _reply_text(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, smtplib.SMTPResponseException):
        return False, _reply_text(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, smtplib.SMTPServerDisconnected) or (
            isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPException)):  # refused, timeout, DNS, TLS
        return False, _clip(f"{UNREACHABLE[channel]} unreachable: {_described(exc)}")
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
    permanent, message = classify_send_error(error, getattr(notification, "channel", EMAIL))
    if permanent or attempts >= max_attempts:
        check_transition(notification.status, FAILED)
        return Attempt(FAILED, attempts, message, None, None)
    return Attempt(QUEUED, attempts, message, now + timedelta(seconds=retry_delay(attempts, base_seconds)), None)


def subscription_gone(notification, error):
    """The push subscription a failed push went to, when the push service said it no longer exists."""
    if notification.channel == PUSH and isinstance(error, ProviderAnswer) and error.status in GONE_STATUSES:
        return notification.push_subscription["id"]
    return None


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
