"""notification_service: its rules (domain.py), its templates, and its entrypoints through nameko's
worker_factory on in-memory fakes (no Postgres, no broker, no SMTP server)."""
import json
import smtplib
import socket
import uuid
from datetime import datetime, timedelta, timezone
from email.contentmanager import raw_data_manager
from types import SimpleNamespace

import pytest
from nameko.testing.services import worker_factory

from common.contract.caller import Caller
from common.contract.errors import Forbidden, InvalidTransition, NotFound
from notification_service import domain, mail
from notification_service import service as service_module
from notification_service.service import NotificationService
from notification_service.storage import WAITING
from tests.unit.fakes import (
    SETTINGS,
    FakeCustomerService,
    FakeMailer,
    FakeProvider,
    FakeUnitOfWork,
    InMemoryNotificationStore,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
CUSTOMER_ID = str(uuid.uuid4())
OTHER_CUSTOMER_ID = str(uuid.uuid4())


def order(status="pending", customer_id=CUSTOMER_ID, **changes):
    return {"id": str(uuid.uuid4()), "customer_id": customer_id, "status": status,
            "items": [{"sku": "WIDGET-1", "quantity": 2, "unit_price": "29.99", "line_total": "59.98"}],
            "total_amount": "59.98", "currency": "EUR",
            "shipping_address": {"line1": "12 Analytical Way", "line2": None, "city": "London",
                                 "postal_code": "N1 9GU", "country": "GB"},
            "carrier": None, "tracking_number": None, "version": 1,
            "created_at": NOW.isoformat(), "updated_at": NOW.isoformat(), **changes}


def envelope(event_type, data, event_id=None):
    return {"event_id": event_id or str(uuid.uuid4()), "type": event_type, "occurred_at": NOW.isoformat(),
            "request_id": None, "data": data}


def refused(code, text, recipient="ada@example.com"):
    return smtplib.SMTPRecipientsRefused({recipient: (code, text.encode())})


# ---- rules ---------------------------------------------------------------------

@pytest.mark.parametrize("event_type, status, kind", [
    ("order_created", "pending", "order_confirmation"),
    ("order_shipped", "shipped", "order_shipped"),
    ("order_delivered", "delivered", "order_delivered"),
    ("order_cancelled", "cancelled", "order_cancelled"),
    ("order_processing", "processing", None),
    ("order_status_changed", "shipped", None),  # each status's own event tells it, with its reason
    ("order_updated", "pending", None),
    ("order_deleted", "cancelled", None),
])
def test_which_order_events_email_the_customer(event_type, status, kind):
    assert domain.notification_kind(event_type, order(status)) == kind


def test_retries_back_off_doubling_from_the_base_up_to_five_minutes():
    assert [domain.retry_delay(attempt, 5) for attempt in range(1, 10)] == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert domain.retry_delay(1, 0.5) == 0.5


@pytest.mark.parametrize("error, permanent, message", [
    (refused(550, "5.1.1 <ada@example.com>: Recipient address rejected"), True,
     "550 5.1.1 <ada@example.com>: Recipient address rejected"),
    (refused(450, "4.2.0 Mailbox busy"), False, "450 4.2.0 Mailbox busy"),
    (smtplib.SMTPDataError(554, b"5.6.0 Message rejected"), True, "554 5.6.0 Message rejected"),
    (smtplib.SMTPDataError(451, b"4.3.0 Try again later"), False, "451 4.3.0 Try again later"),
    (smtplib.SMTPSenderRefused(550, b"sender not allowed", "shop@example.com"), False, "550 sender not allowed"),
    (smtplib.SMTPAuthenticationError(535, b"bad credentials"), False, "535 bad credentials"),
    (ConnectionRefusedError(111, "Connection refused"), False,
     "mail server unreachable: ConnectionRefusedError: [Errno 111] Connection refused"),
    (socket.timeout("timed out"), False, "mail server unreachable: TimeoutError: timed out"),
    (smtplib.SMTPServerDisconnected("Connection unexpectedly closed"), False,
     "mail server unreachable: SMTPServerDisconnected: Connection unexpectedly closed"),
    (smtplib.SMTPNotSupportedError("STARTTLS extension not supported by server."), False,
     "SMTPNotSupportedError: STARTTLS extension not supported by server."),
])
def test_only_a_5xx_for_the_recipient_or_the_message_is_final(error, permanent, message):
    assert domain.classify_send_error(error) == (permanent, message)


def test_a_server_reply_is_kept_on_one_line_and_bounded():
    permanent, message = domain.classify_send_error(refused(550, "line one\r\nline two " + "x" * 2000))
    assert permanent and message.startswith("550 line one line two") and "\n" not in message
    assert len(message) == domain.MAX_ERROR_LENGTH


def _queued(attempts=0):
    return SimpleNamespace(status="queued", attempts=attempts, last_error=None)


def test_an_attempt_sends_retries_or_fails():
    sent = domain.after_attempt(_queued(), None, NOW, 5, 8)
    assert (sent.status, sent.attempts, sent.sent_at, sent.next_attempt_at) == ("sent", 1, NOW, None)

    later = domain.after_attempt(_queued(attempts=2), ConnectionRefusedError(111, "refused"), NOW, 5, 8)
    assert (later.status, later.attempts, later.sent_at) == ("queued", 3, None)
    assert later.next_attempt_at == NOW + timedelta(seconds=20)
    assert "unreachable" in later.last_error

    spent = domain.after_attempt(_queued(attempts=7), ConnectionRefusedError(111, "refused"), NOW, 5, 8)
    assert (spent.status, spent.attempts, spent.next_attempt_at) == ("failed", 8, None)

    final = domain.after_attempt(_queued(), refused(550, "no such user"), NOW, 5, 8)
    assert (final.status, final.attempts, final.last_error) == ("failed", 1, "550 no such user")


def test_status_moves():
    domain.check_transition("queued", "sent")
    domain.check_transition("queued", "failed")
    domain.check_transition("failed", "queued")
    for current, new in [("sent", "queued"), ("sent", "failed"), ("failed", "sent"), ("queued", "queued")]:
        with pytest.raises(InvalidTransition):
            domain.check_transition(current, new)
    domain.check_can_retry(SimpleNamespace(status="failed"))
    for status in ("queued", "sent"):
        with pytest.raises(InvalidTransition) as refusal:
            domain.check_can_retry(SimpleNamespace(status=status))
        assert refusal.value.details["status"] == status


def test_the_message_id_derives_from_the_notification_id_and_the_sender_domain():
    notification_id = uuid.uuid4()
    first = domain.message_id(notification_id, "Shop <orders@shop.example>")
    assert first == f"<notification-{notification_id}@shop.example>"
    assert domain.message_id(notification_id, "Shop <orders@shop.example>") == first


def test_a_name_becomes_one_line():
    assert domain.one_line("Ada\r\nBcc: someone@example.com\x00") == "Ada Bcc: someone@example.com"


# ---- templates and the message ------------------------------------------------------

def _rendered(kind, the_order, name="Ada Lovelace"):
    customer = {"id": CUSTOMER_ID, "name": name, "email": "ada@example.com"}
    row = domain.new_notification(kind, the_order, customer, "Shop <orders@shop.example>")
    row["body_text"], row["body_html"] = mail.render(kind, domain.email_context(kind, the_order, customer))
    return SimpleNamespace(**row)


def test_the_confirmation_names_the_order_its_items_and_total():
    the_order = order()
    notification = _rendered("order_confirmation", the_order)
    assert notification.subject == f"We received your order {the_order['id'][:8].upper()}"
    for body in (notification.body_text, notification.body_html):
        assert the_order["id"] in body and "59.98 EUR" in body and "WIDGET-1" in body and "London" in body


def test_the_shipping_email_carries_carrier_and_tracking_number():
    notification = _rendered("order_shipped", order("shipped", carrier="DHL", tracking_number="JD0146"))
    assert "has shipped" in notification.subject
    for body in (notification.body_text, notification.body_html):
        assert "DHL" in body and "JD0146" in body


def test_every_kind_renders_from_a_partial_order():
    address = {"line1": "1 Road", "city": "Paris", "postal_code": "75001", "country": "FR"}  # no line2
    for kind in ("order_confirmation", "order_shipped", "order_delivered", "order_cancelled"):
        for partial in ({"id": str(uuid.uuid4()), "customer_id": CUSTOMER_ID}, order(shipping_address=address)):
            notification = _rendered(kind, partial)
            assert notification.body_text and notification.body_html and "None" not in notification.body_text


def test_html_is_escaped_and_text_is_not():
    notification = _rendered("order_cancelled", order("cancelled"), name="<script>alert(1)</script>")
    assert "<script>" not in notification.body_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in notification.body_html
    assert "Hello <script>alert(1)</script>," in notification.body_text


@pytest.mark.parametrize("mail_from", ["Shop <orders@shop.example>", "Boutique Émile <commandes@shop.example>"])
def test_the_message_reads_back_the_same_whichever_policy_built_it(mail_from):
    from email import policy
    from email.parser import BytesParser

    notification = _rendered("order_confirmation", order(), name="Zoë <b>")
    message = mail.build_message(notification, mail_from)
    assert message.policy is (policy.compat32 if mail_from.isascii() else policy.default)
    raw = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
    assert all(line.isascii() for line in raw.split(b"\r\n")[:12])  # headers: 7-bit, as SMTP wants them
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert (parsed["From"], parsed["To"], parsed["Subject"], parsed["Message-ID"]) == \
        (mail_from, "ada@example.com", notification.subject, notification.message_id)
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == notification.body_text
    assert parsed.get_body(("html",)).get_content().replace("\r\n", "\n") == notification.body_html


def test_the_message_is_multipart_text_and_html_with_the_stored_message_id():
    notification = _rendered("order_confirmation", order())
    message = mail.build_message(notification, "Shop <orders@shop.example>")
    assert message["Message-ID"] == notification.message_id
    assert (message["From"], message["To"]) == ("Shop <orders@shop.example>", "ada@example.com")
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    html = message.get_body(("html",)).get_content(content_manager=raw_data_manager)
    assert html == notification.body_html
    assert mail.build_message(notification, "Shop <orders@shop.example>")["Message-ID"] == message["Message-ID"]


# ---- the service on fakes ------------------------------------------------------------

class World:
    def __init__(self, caller=Caller("admin-1", "admin"), settings=SETTINGS):
        self.store = InMemoryNotificationStore()
        self.store.know_customer(CUSTOMER_ID, "Ada Lovelace", "ada@example.com")
        self.mailer = FakeMailer()
        self.sms, self.pusher = FakeProvider(), FakeProvider()
        self.customers = FakeCustomerService({"id": OTHER_CUSTOMER_ID, "name": "Grace", "email": "grace@example.com",
                                     "updated_at": NOW.isoformat()})
        self.wakes = []
        self.service = worker_factory(NotificationService, uow=FakeUnitOfWork(self.store), settings=settings,
                                      caller=caller, mailer=self.mailer, customer_rpc=self.customers,
                                      sms=self.sms, pusher=self.pusher, wake_sender=lambda: self.wakes.append(1))

    def as_caller(self, caller):
        other = worker_factory(NotificationService, uow=self.service.uow, settings=self.service.settings,
                               caller=caller, mailer=self.mailer, customer_rpc=self.customers,
                               sms=self.sms, pusher=self.pusher, wake_sender=lambda: self.wakes.append(1))
        return other

    def notifications(self):
        return list(self.store.tables["notifications"].values())

    def events(self):
        return self.service.uow.events

    def send(self):
        return self.service.send_due_notifications()

    def make_due(self):
        for notification in self.notifications():
            if notification.next_attempt_at is not None:
                notification.next_attempt_at -= timedelta(hours=1)


@pytest.fixture
def world():
    return World()


def test_an_order_event_only_queues_a_notification(world):
    the_order = order()
    world.service.on_order_created([envelope("order_created", the_order)])
    [notification] = world.notifications()
    assert (notification.status, notification.attempts, notification.recipient) == ("queued", 0, "ada@example.com")
    assert (notification.event_type, notification.kind) == ("order_created", "order_confirmation")
    assert str(notification.order_id) == the_order["id"] and the_order["id"] in notification.body_text
    assert world.mailer.sent == [] and world.events() == []  # nothing sent, nothing emitted on the event path
    assert world.wakes == [1]


def test_the_same_event_twice_queues_one_notification(world):
    event = envelope("order_created", order())
    world.service.on_order_created([event])
    world.service.on_order_created([event])
    assert len(world.notifications()) == 1
    assert world.wakes == [1]


def test_status_changes_nobody_is_told_about_queue_nothing(world):
    world.service._queue_notifications([envelope("order_processing", order("processing"))])
    assert world.notifications() == []


def test_an_unknown_customer_is_asked_for_once_then_remembered(world):
    world.service.on_order_created([envelope("order_created", order(customer_id=OTHER_CUSTOMER_ID))])
    world.service.on_order_created([envelope("order_created", order(customer_id=OTHER_CUSTOMER_ID))])
    assert world.customers.calls == 1
    assert {n.recipient for n in world.notifications()} == {"grace@example.com"}


def test_no_such_customer_means_no_notification(world):
    world.service.on_order_created([envelope("order_created", order(customer_id=str(uuid.uuid4())))])
    assert world.notifications() == []


def test_a_batch_of_events_queues_each_ones_notifications_and_wakes_the_sender_once(world):
    ada, grace, nobody = order(), order(customer_id=OTHER_CUSTOMER_ID), order(customer_id=str(uuid.uuid4()))
    world.service.on_order_created([envelope("order_created", the_order) for the_order in (ada, grace, nobody)])
    assert sorted((str(n.order_id), n.recipient) for n in world.notifications()) == sorted(
        [(ada["id"], "ada@example.com"), (grace["id"], "grace@example.com")])
    assert world.wakes == [1] and world.customers.calls == 2  # grace asked for; nobody asked for and not found


def test_a_customer_update_changes_where_later_emails_go(world):
    world.service.on_customer_updated(envelope("customer_updated", {
        "id": CUSTOMER_ID, "name": "Ada King", "email": "ada@new.example",
        "updated_at": (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()}))
    world.service.on_order_created([envelope("order_created", order())])
    [notification] = world.notifications()
    assert notification.recipient == "ada@new.example" and "Hello Ada King" in notification.body_text


def test_the_sender_sends_due_notifications_and_emits_notification_sent(world):
    world.service.on_order_created([envelope("order_created", order())])
    assert world.send() is None  # no retry scheduled
    [message] = world.mailer.sent
    [notification] = world.notifications()
    assert (notification.status, notification.attempts) == ("sent", 1)
    assert notification.sent_at is not None and notification.next_attempt_at is None
    assert message["Message-ID"] == notification.message_id and message["To"] == "ada@example.com"
    [(event_type, data)] = world.events()
    assert event_type == "notification_sent" and data["id"] == str(notification.id) and data["status"] == "sent"


def test_an_unreachable_server_retries_with_backoff_then_fails(world):
    world.mailer.down = ConnectionRefusedError(111, "Connection refused")
    world.service.on_order_created([envelope("order_created", order())])
    [notification] = world.notifications()
    for attempt in range(1, SETTINGS.notify_max_attempts):
        due_in = world.send()
        assert (notification.status, notification.attempts) == ("queued", attempt)
        assert due_in == pytest.approx(domain.retry_delay(attempt, SETTINGS.notify_retry_base_seconds), abs=1)
        assert "unreachable" in notification.last_error
        assert world.send() is None  # not due yet: not tried again, no retry scheduled
        assert notification.attempts == attempt
        world.make_due()
    assert world.events() == []
    world.send()
    assert (notification.status, notification.attempts) == ("failed", SETTINGS.notify_max_attempts)
    assert [event_type for event_type, _ in world.events()] == ["notification_failed"]


def test_the_server_back_in_time_sends_once(world):
    world.mailer.down = ConnectionRefusedError(111, "Connection refused")
    world.service.on_order_created([envelope("order_created", order())])
    world.send()
    world.mailer.down = None
    world.make_due()
    world.send()
    world.make_due()
    world.send()
    assert len(world.mailer.sent) == 1
    [notification] = world.notifications()
    assert (notification.status, notification.attempts) == ("sent", 2)
    assert "unreachable" in notification.last_error  # what the failed attempt met stays readable


def _while_sending(world, action):
    """Run `action(message)` inside each send, before the fake relay takes the message."""
    send = world.mailer.send

    def hooked(message):
        action(message)
        send(message)
    world.mailer.send = hooked


def test_mail_is_sent_outside_any_transaction_under_a_lease_longer_than_the_batch(world):
    world.service.on_order_created([envelope("order_created", order())])
    seen = []  # (the unit of work open, the row's claimed_until) at each send
    _while_sending(world, lambda _: seen.append((world.service.uow._open, world.notifications()[0].claimed_until)))
    world.send()
    [(transaction, claimed_until)] = seen
    assert transaction is None
    lease = claimed_until - datetime.now(timezone.utc)
    assert lease > timedelta(seconds=SETTINGS.smtp_timeout_seconds * service_module.SEND_BATCH)
    [notification] = world.notifications()
    assert (notification.status, notification.claim_token, notification.claimed_until) == ("sent", None, None)


def test_a_notification_under_another_instances_lease_waits_for_it_to_expire(world):
    world.service.on_order_created([envelope("order_created", order())])
    [notification] = world.notifications()
    held = world.store.claim_due(datetime.now(timezone.utc), datetime.now(timezone.utc) + timedelta(minutes=4), 20)
    assert world.send() is None and world.mailer.sent == []
    notification.claimed_until -= timedelta(minutes=5)  # the instance that claimed it died without recording
    world.send()
    [message] = world.mailer.sent
    assert message["Message-ID"] == held[0].message_id == notification.message_id
    assert (notification.status, notification.attempts) == ("sent", 1)


def test_an_outcome_after_another_claim_took_the_row_changes_nothing(world):
    world.service.on_order_created([envelope("order_created", order())])
    [notification] = world.notifications()
    later = datetime.now(timezone.utc) + timedelta(hours=1)

    def lease_lost(message):  # this send outlasted its lease and another instance claimed the row
        world.store.claim_due(later, later + timedelta(minutes=4), 20)
    _while_sending(world, lease_lost)
    world.mailer.refuse["ada@example.com"] = refused(550, "5.1.1 User unknown")
    world.send()
    assert (notification.status, notification.attempts, notification.last_error) == ("queued", 0, None)
    assert world.events() == []


def test_a_refused_recipient_fails_at_once_with_the_servers_message(world):
    world.mailer.refuse["ada@example.com"] = refused(550, "5.1.1 User unknown")
    world.service.on_order_created([envelope("order_created", order())])
    world.send()
    [notification] = world.notifications()
    assert (notification.status, notification.attempts, notification.last_error) == \
        ("failed", 1, "550 5.1.1 User unknown")
    [(event_type, data)] = world.events()
    assert event_type == "notification_failed" and data["last_error"] == "550 5.1.1 User unknown"


def test_an_admin_retries_a_failed_notification_and_nothing_else(world):
    world.mailer.refuse["ada@example.com"] = refused(550, "5.1.1 User unknown")
    world.service.on_order_created([envelope("order_created", order())])
    world.send()
    [notification] = world.notifications()
    retried = world.service.retry_notification(str(notification.id))
    assert (retried["status"], retried["attempts"]) == ("queued", 0)
    assert world.wakes == [1, 1]
    with pytest.raises(InvalidTransition):
        world.service.retry_notification(str(notification.id))  # queued now
    del world.mailer.refuse["ada@example.com"]
    world.send()
    [notification] = world.notifications()  # a refused change rolled the fake's tables back: read again
    assert notification.status == "sent" and len(world.mailer.sent) == 1
    with pytest.raises(InvalidTransition):
        world.service.retry_notification(str(notification.id))


def test_customers_see_only_their_own_and_may_not_retry(world):
    world.service.on_order_created([envelope("order_created", order())])
    world.service.on_order_created([envelope("order_created", order(customer_id=OTHER_CUSTOMER_ID))])
    mine, theirs = sorted(world.notifications(), key=lambda n: n.recipient)
    ada = world.as_caller(Caller(f"customer:{CUSTOMER_ID}", "customer", CUSTOMER_ID))
    assert [n["id"] for n in ada.list_notifications()["items"]] == [str(mine.id)]
    assert ada.get_notification(str(mine.id))["recipient"] == "ada@example.com"
    with pytest.raises(NotFound):
        ada.get_notification(str(theirs.id))
    with pytest.raises(NotFound):
        ada.retry_notification(str(theirs.id))
    with pytest.raises(Forbidden):
        ada.retry_notification(str(mine.id))
    assert len(world.service.list_notifications()["items"]) == 2


def test_listing_filters_and_pages_newest_first(world):
    orders = [order() for _ in range(3)]
    for the_order in orders:
        world.service.on_order_created([envelope("order_created", the_order)])
    for n, notification in enumerate(sorted(world.notifications(), key=lambda n: str(n.order_id))):
        notification.created_at = NOW + timedelta(seconds=n)
    first = world.service.list_notifications(limit=2)
    second = world.service.list_notifications(limit=2, cursor=first["next_cursor"])
    assert second["next_cursor"] is None
    times = [item["created_at"] for item in first["items"] + second["items"]]
    assert times == sorted(times, reverse=True) and len(set(times)) == 3
    only = world.service.list_notifications({"order_id": orders[1]["id"]})["items"]
    assert [item["order_id"] for item in only] == [orders[1]["id"]]
    assert world.service.list_notifications({"status": "sent"})["items"] == []
    with pytest.raises(NotFound):
        world.service.get_notification("not-an-id")


# ---- staff alerts ------------------------------------------------------------------------

def product(**changes):
    return {"sku": "WIDGET-1", "name": "Widget", "stock": 10, "reserved": 8, "available": 2,
            "low_stock_threshold": 3, **changes}


def test_stock_low_emails_each_staff_address_once_per_event_naming_the_sku():
    world = World(settings=SETTINGS.model_copy(update={"staff_emails": ("stock@shop.example",
                                                                        "Ops <ops@shop.example>")}))
    event = envelope("stock_low", product())
    world.service.on_stock_low(event)
    world.service.on_stock_low(event)  # redelivered: nothing more
    alerts = world.notifications()
    assert sorted(n.recipient for n in alerts) == ["Ops <ops@shop.example>", "stock@shop.example"]
    for alert in alerts:
        assert (alert.kind, alert.event_type, alert.order_id, alert.customer_id) == (
            "stock_low", "stock_low", None, None)
        assert alert.subject == "Stock low: WIDGET-1 (2 available, threshold 3)"
        assert "WIDGET-1" in alert.body_text and "WIDGET-1" in alert.body_html
    world.send()
    assert sorted(message["To"] for message in world.mailer.sent) == ["Ops <ops@shop.example>", "stock@shop.example"]
    assert world.as_caller(Caller(f"customer:{CUSTOMER_ID}", "customer", CUSTOMER_ID)).list_notifications()[
        "items"] == []  # staff alerts are nobody's notifications but the admins'


def test_without_staff_emails_stock_low_queues_nothing(world):
    world.service.on_stock_low(envelope("stock_low", product()))
    assert world.notifications() == []



# ---- channels ------------------------------------------------------------------------------

SUBSCRIPTION = {"id": str(uuid.uuid4()), "endpoint": "https://push.example/send/abc", "created_at": NOW.isoformat(),
                "keys": {"p256dh": "BNcRdre", "auth": "tBHItJI"}}


def reach(world, phone="+14155552671", subscriptions=(SUBSCRIPTION,), **preferences):
    """The customer as a customer_updated event would tell the directory."""
    world.service.on_customer_updated(envelope("customer_updated", {
        "id": CUSTOMER_ID, "name": "Ada Lovelace", "email": "ada@example.com", "phone": phone,
        "notification_preferences": {"email": True, "sms": False, "push": False, **preferences},
        "push_subscriptions": list(subscriptions),
        "updated_at": (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()}))


def by_channel(world):
    return {channel: [n for n in world.notifications() if n.channel == channel] for channel in ("email", "sms", "push")}


@pytest.mark.parametrize("preferences, phone, subscriptions, expected", [
    ({}, "+14155552671", [SUBSCRIPTION], {"email": 1, "sms": 0, "push": 0}),
    ({"sms": True, "push": True}, "+14155552671", [SUBSCRIPTION], {"email": 1, "sms": 1, "push": 1}),
    ({"email": False, "sms": True, "push": True}, None, [], {"email": 0, "sms": 0, "push": 0}),
    ({"email": False, "sms": True}, "+14155552671", [], {"email": 0, "sms": 1, "push": 0}),
    ({"push": True}, None, [SUBSCRIPTION, {**SUBSCRIPTION, "id": str(uuid.uuid4()), "endpoint": "https://p.example/2"}],
     {"email": 1, "sms": 0, "push": 2}),
])
def test_a_row_per_channel_on_with_an_address_and_none_otherwise(world, preferences, phone, subscriptions, expected):
    reach(world, phone, subscriptions, **preferences)
    world.service.on_order_created([envelope("order_created", order())])
    assert {channel: len(rows) for channel, rows in by_channel(world).items()} == expected


def test_every_channel_names_the_order_and_a_cancellations_reason(world):
    reach(world, sms=True, push=True)
    the_order = order("cancelled", reason="Ordered twice – sorry", previous_status="pending")
    world.service.on_order_cancelled([envelope("order_cancelled", the_order)])
    rows = by_channel(world)
    [email], [sms], [push] = rows["email"], rows["sms"], rows["push"]
    for body in (email.body_text, email.body_html, sms.body_text, push.body_text):
        assert the_order["id"] in body and "Ordered twice – sorry" in body
    assert (sms.recipient, push.recipient) == ("+14155552671", SUBSCRIPTION["endpoint"])
    assert sms.message_id is None and push.push_subscription == {"id": SUBSCRIPTION["id"], "keys": SUBSCRIPTION["keys"]}
    payload = json.loads(push.body_text)
    assert (payload["order_id"], payload["kind"], payload["title"]) == (the_order["id"], "order_cancelled", push.subject)
    world.send()
    assert world.sms.sent == [("+14155552671", sms.body_text)]
    assert world.pusher.sent == [(SUBSCRIPTION["endpoint"], SUBSCRIPTION["keys"], push.body_text)]
    assert {n.status for n in world.notifications()} == {"sent"}


@pytest.mark.parametrize("reason, limit", [("x" * 500, 306), ("é" * 500, 306), ("ж" * 500, 134), ("€" * 500, 306)])
def test_an_sms_fits_two_segments_keeping_the_order_id(reason, limit):
    the_order = order("cancelled", reason=reason)
    body = domain.fit_sms(domain.short_text("order_cancelled", the_order))
    units, two_segments = domain.sms_length(body)
    assert two_segments == limit and units <= limit and body.endswith("...")
    assert body.startswith(f"Your order {the_order['id']} was cancelled. Reason: ")
    assert domain.fit_sms("Your order 1 was delivered.") == "Your order 1 was delivered."


def test_each_channel_retries_on_its_own_until_one_delivery(world):
    reach(world, sms=True, push=True)
    world.sms.answers = [domain.ProviderAnswer("sms", 503, "busy"), ConnectionRefusedError(111, "refused")]
    world.pusher.answers = [domain.ProviderAnswer("push", 429, "slow down")]
    world.service.on_order_created([envelope("order_created", order())])
    for _ in range(4):
        world.send()
        world.make_due()
    rows = by_channel(world)
    assert [(n.status, n.attempts) for n in rows["email"]] == [("sent", 1)]
    assert [(n.status, n.attempts) for n in rows["sms"]] == [("sent", 3)]
    assert [(n.status, n.attempts) for n in rows["push"]] == [("sent", 2)]
    assert len(world.sms.sent) == len(world.pusher.sent) == len(world.mailer.sent) == 1
    assert "SMS provider unreachable" in rows["sms"][0].last_error


def test_a_refused_number_fails_at_once_and_a_gone_subscription_is_removed(world):
    reach(world, sms=True, push=True)
    world.sms.answers = [domain.ProviderAnswer("sms", 400, '{"code": 21211, "message": "Invalid To"}')]
    world.pusher.answers = [domain.ProviderAnswer("push", 410, "push subscription has unsubscribed or expired.")]
    world.service.on_order_created([envelope("order_created", order())])
    world.send()
    rows = by_channel(world)
    assert [(n.status, n.attempts) for n in rows["sms"] + rows["push"]] == [("failed", 1), ("failed", 1)]
    assert rows["sms"][0].last_error.startswith("400 ")
    assert world.customers.removed == [(CUSTOMER_ID, SUBSCRIPTION["id"])]


def test_unauthorized_credentials_are_retried_while_they_are_fixed():
    assert domain.classify_send_error(domain.ProviderAnswer("sms", 401, "Authenticate"), "sms") == (
        False, "401 Authenticate")
    assert domain.classify_send_error(domain.ProviderAnswer("push", 403, "bad vapid"), "push")[0] is False
    assert domain.classify_send_error(ConnectionRefusedError(111, "x"), "push")[1].startswith("push service unreachable")


def test_the_backlog_gauges_report_every_channel_and_0_where_nothing_waits():
    rows = [("email", 3, NOW - timedelta(minutes=20))]  # what the query answers: channels that have some
    waiting, oldest = WAITING.metrics("notification_service", rows, NOW)
    assert {s.labels["channel"]: s.value for s in waiting.samples} == {"email": 3, "sms": 0, "push": 0}
    assert {s.labels["channel"]: s.value for s in oldest.samples} == {"email": 1200.0, "sms": 0.0, "push": 0.0}
    assert oldest.name == "notifications_oldest_waiting_seconds"
