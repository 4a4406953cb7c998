"""Customers hear about their orders: real email through a real SMTP server, driven through the gateway.

The stack's notification_service sends to the test's own aiosmtpd server (support.SmtpServer,
the `smtp_server` fixture), which keeps every message in memory, can refuse an address with 550,
and can be stopped and started again.
"""
import os
import smtplib
import subprocess
import sys
import time
import uuid
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
import requests
from kombu import Connection, Exchange
from prometheus_client.parser import text_string_to_metric_families

from common.contract.services import metrics_port
from tests import support


def _unique_email(prefix="ada"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


def _body(message, subtype):
    return message["message"].get_body((subtype,)).get_content()


def _notifications(api, **params):
    response = api.get("/api/v1/notifications", params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def _wait_for_status(api, order_id, status, timeout=20, kind=None):
    def matching():
        return [n for n in _notifications(api, order_id=order_id)
                if n["status"] == status and (kind is None or n["kind"] == kind)]
    found = support.wait_until(matching, timeout)
    assert found, f"no {status} notification for order {order_id}: {_notifications(api, order_id=order_id)}"
    return found[0]


@pytest.fixture
def shop(api):
    """A customer with a unique address and a product at 29.99 EUR."""
    return api.create_customer(email=_unique_email()), api.create_product(stock=10)


def test_the_order_confirmation_arrives_with_the_order_id_and_total(api, shop, smtp_server):
    customer, product = shop
    order = api.create_order(customer, (product, 2))

    mail = smtp_server.wait_for(lambda m: customer["email"] in m["rcpt_tos"])
    message = mail["message"]
    assert message["To"] == customer["email"]
    assert message["From"] == support.MAIL_FROM and mail["mail_from"] == "orders@shop.example"
    assert message["Subject"] == f"We received your order {order['id'][:8].upper()}"
    assert message.get_content_type() == "multipart/alternative"
    for subtype in ("plain", "html"):
        body = _body(mail, subtype)
        assert order["id"] in body and "59.98 EUR" in body and product["sku"] in body

    notification = _wait_for_status(api, order["id"], "sent")
    assert notification["message_id"] == message["Message-ID"]
    assert notification["message_id"] == f"<notification-{notification['id']}@shop.example>"
    assert (notification["kind"], notification["event_type"]) == ("order_confirmation", "order_created")
    assert (notification["recipient"], notification["customer_id"]) == (customer["email"], customer["id"])
    assert notification["attempts"] == 1 and notification["sent_at"] and notification["last_error"] is None
    one = api.get(f"/api/v1/notifications/{notification['id']}")
    assert one.status_code == 200 and one.json() == notification


def test_shipping_and_delivery_mails_carry_carrier_and_tracking_number(api, shop, smtp_server):
    customer, product = shop
    order = api.create_order(customer, (product, 1))
    api.ship_details(order)
    assert api.set_status(order, "processing").status_code == 200
    assert api.set_status(order, "shipped").status_code == 200

    shipped = smtp_server.wait_for(lambda m: customer["email"] in m["rcpt_tos"]
                                   and "has shipped" in m["message"]["Subject"])
    for subtype in ("plain", "html"):
        body = _body(shipped, subtype)
        assert "DHL" in body and "JD0146000000001" in body and order["id"] in body

    assert api.set_status(order, "delivered").status_code == 200
    delivered = smtp_server.wait_for(lambda m: customer["email"] in m["rcpt_tos"]
                                     and "was delivered" in m["message"]["Subject"])
    assert order["id"] in _body(delivered, "plain")
    _wait_for_status(api, order["id"], "sent", kind="order_delivered")
    kinds = sorted(n["kind"] for n in _notifications(api, order_id=order["id"]))
    # No email for `processing`: one for each of created, shipped, delivered.
    assert kinds == ["order_confirmation", "order_delivered", "order_shipped"]
    assert len(smtp_server.to(customer["email"])) == 3


def test_a_cancelled_order_gets_a_cancellation_mail(api, shop, smtp_server):
    customer, product = shop
    order = api.create_order(customer, (product, 1))
    assert api.set_status(order, "cancelled").status_code == 200
    mail = smtp_server.wait_for(lambda m: customer["email"] in m["rcpt_tos"]
                                and "was cancelled" in m["message"]["Subject"])
    assert order["id"] in _body(mail, "plain") and order["id"] in _body(mail, "html")


def test_an_html_hostile_name_arrives_escaped(api, smtp_server):
    customer = api.create_customer(name="<script>alert(1)</script>", email=_unique_email("mallory"))
    api.create_order(customer, (api.create_product(), 1))
    mail = smtp_server.wait_for(lambda m: customer["email"] in m["rcpt_tos"])
    html = _body(mail, "html")
    assert "<script>" not in html
    assert "Hello &lt;script&gt;alert(1)&lt;/script&gt;," in html
    assert "Hello <script>alert(1)</script>," in _body(mail, "plain")  # plain text is shown as text


def test_while_the_mail_server_is_down_it_retries_then_sends_exactly_once(api, shop, smtp_server):
    customer, product = shop
    smtp_server.stop()
    try:
        order = api.create_order(customer, (product, 1))  # the order path does not wait on email
        def retried():
            items = _notifications(api, order_id=order["id"])
            return items if items and items[0]["attempts"] >= 2 else None
        [notification] = support.wait_until(retried, timeout=20)
        assert notification["status"] == "queued"
        assert notification["last_error"].startswith("mail server unreachable")
        assert notification["next_attempt_at"] is not None
    finally:
        smtp_server.start()
    sent = _wait_for_status(api, order["id"], "sent", timeout=30)
    assert sent["attempts"] >= 3
    time.sleep(2)  # anything sent twice would have arrived by now
    assert len(smtp_server.to(customer["email"])) == 1
    assert smtp_server.to(customer["email"])[0]["message"]["Message-ID"] == sent["message_id"]


def _backlog(stack):
    """notification_service's backlog gauges as its metrics port serves them: {(name, channel): value}."""
    url = f"http://127.0.0.1:{metrics_port('notification_service', int(stack.env['METRICS_PORT']))}/metrics"
    return {(sample.name, sample.labels["channel"]): sample.value
            for family in text_string_to_metric_families(requests.get(url, timeout=5).text)
            if family.name in ("notifications_waiting", "notifications_oldest_waiting_seconds")
            for sample in family.samples}


def test_the_backlog_by_channel_is_on_the_metrics_port(api, shop, smtp_server, stack):
    customer, product = shop
    smtp_server.stop()
    try:
        order = api.create_order(customer, (product, 1))
        support.wait_until(lambda: [n for n in _notifications(api, order_id=order["id"]) if n["attempts"] >= 1])
        backlog = support.wait_until(lambda: (b := _backlog(stack))[("notifications_oldest_waiting_seconds", "email")] > 0
                              and b)
        assert backlog[("notifications_waiting", "email")] >= 1
        # Every channel is reported, also one nothing waits on (0: what NotificationBacklog reads).
        assert {channel for _, channel in backlog} == {"email", "sms", "push"}
    finally:
        smtp_server.start()
    _wait_for_status(api, order["id"], "sent", timeout=30)


def test_a_mail_a_crashed_instance_had_claimed_goes_out_once_its_lease_expires(api, shop, smtp_server, db_name):
    # What a sender that died between its claim and its record leaves: a due row under a live lease.
    customer, _ = shop
    notification_id, order_id = str(uuid.uuid4()), str(uuid.uuid4())
    message_id = f"<notification-{notification_id}@shop.example>"
    [(claimed_until,)] = support.query(db_name, """
        INSERT INTO notifications.notifications
            (id, event_id, event_type, kind, order_id, customer_id, recipient, subject, body_text, body_html,
             message_id, status, attempts, next_attempt_at, created_at, updated_at, claim_token, claimed_until)
        VALUES (%s, %s, 'order_created', 'order_confirmation', %s, %s, %s, 'We received your order', 'Hello',
                '<p>Hello</p>', %s, 'queued', 0, now(), now(), now(), %s, now() + interval '3 seconds')
        RETURNING claimed_until""", notification_id, str(uuid.uuid4()), order_id, customer["id"],
        customer["email"], message_id, str(uuid.uuid4()))
    smtp_server.wait_for(lambda m: m["message"]["Message-ID"] == message_id, timeout=30)
    sent = _wait_for_status(api, order_id, "sent")
    assert (sent["id"], sent["attempts"], sent["message_id"]) == (notification_id, 1, message_id)
    assert datetime.fromisoformat(sent["sent_at"]) >= claimed_until  # no instance took it under the lease
    time.sleep(2)  # anything sent twice would have arrived by now
    assert [m["message"]["Message-ID"] for m in smtp_server.to(customer["email"])] == [message_id]


def test_the_same_event_delivered_twice_sends_one_email(api, shop, smtp_server, stack):
    customer, product = shop
    real = api.create_order(customer, (product, 1))
    smtp_server.wait_for(lambda m: customer["email"] in m["rcpt_tos"])
    # As the outbox relay would send it again after a crash between publish and mark.
    data = {**real, "id": str(uuid.uuid4())}
    envelope = {"event_id": str(uuid.uuid4()), "type": "order_created", "occurred_at": real["created_at"],
                "request_id": None, "data": data}
    with Connection(stack.env["AMQP_URI"]) as connection:
        producer = connection.Producer()
        for _ in range(2):
            producer.publish(envelope, exchange=Exchange("order_service.events", type="topic", durable=True),
                             routing_key="order_created", serializer="json", delivery_mode=2)
    smtp_server.wait_for(lambda m: data["id"] in _body(m, "plain"))
    time.sleep(2)
    assert len([m for m in smtp_server.to(customer["email"]) if data["id"] in _body(m, "plain")]) == 1
    assert len(_notifications(api, order_id=data["id"])) == 1


def test_a_refused_recipient_fails_at_once_with_the_servers_answer(api, smtp_server, listen):
    failed_events = listen("notification_service", "notification_failed")
    customer = api.create_customer(email=_unique_email("nobody"))
    smtp_server.refused.add(customer["email"])
    try:
        order = api.create_order(customer, (api.create_product(), 1))
        event = failed_events.wait_for(lambda e: e["data"]["order_id"] == order["id"], timeout=20)
    finally:
        smtp_server.refused.discard(customer["email"])
    notification = event["data"]
    assert (notification["status"], notification["attempts"]) == ("failed", 1)
    assert notification["last_error"] == support.SmtpServer.REFUSAL
    assert api.get(f"/api/v1/notifications/{notification['id']}").json()["status"] == "failed"
    assert smtp_server.to(customer["email"]) == []

    # A customer may not retry, an admin may; then it is sent, and a sent one cannot be retried.
    mine = api.as_customer(customer).post(f"/api/v1/notifications/{notification['id']}/retry")
    assert mine.status_code == 403, mine.text
    retried = api.post(f"/api/v1/notifications/{notification['id']}/retry")
    assert retried.status_code == 202, retried.text
    assert (retried.json()["status"], retried.json()["attempts"]) == ("queued", 0)
    _wait_for_status(api, order["id"], "sent")
    assert len(smtp_server.to(customer["email"])) == 1
    again = api.post(f"/api/v1/notifications/{notification['id']}/retry")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_transition"


def test_notification_sent_is_emitted(api, shop, listen):
    sent_events = listen("notification_service", "notification_sent")
    customer, product = shop
    order = api.create_order(customer, (product, 1))
    event = sent_events.wait_for(lambda e: e["data"]["order_id"] == order["id"], timeout=20)
    assert event["type"] == "notification_sent" and event["data"]["status"] == "sent"
    assert event["data"]["recipient"] == customer["email"]


def test_a_customer_sees_only_their_own_notifications(api, smtp_server):
    product = api.create_product(stock=10)
    ada = api.create_customer(email=_unique_email("ada"))
    bob = api.create_customer(email=_unique_email("bob"))
    ada_order = api.create_order(ada, (product, 1))
    bob_order = api.create_order(bob, (product, 1))
    theirs = _wait_for_status(api, bob_order["id"], "sent")
    _wait_for_status(api, ada_order["id"], "sent")

    as_ada = api.as_customer(ada)
    listed = as_ada.get("/api/v1/notifications", params={"limit": 100})
    assert listed.status_code == 200
    assert {n["customer_id"] for n in listed.json()["items"]} == {ada["id"]}
    assert as_ada.get("/api/v1/notifications", params={"order_id": bob_order["id"]}).json()["items"] == []
    refused = as_ada.get(f"/api/v1/notifications/{theirs['id']}")
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
    assert as_ada.post(f"/api/v1/notifications/{theirs['id']}/retry").status_code == 404


def test_listing_filters_pages_and_refuses_bad_queries(api, shop):
    customer, product = shop
    order = api.create_order(customer, (product, 1))
    assert api.set_status(order, "cancelled").status_code == 200
    _wait_for_status(api, order["id"], "sent", kind="order_cancelled")
    first = api.get("/api/v1/notifications", params={"order_id": order["id"], "limit": 1}).json()
    second = api.get("/api/v1/notifications", params={"order_id": order["id"], "limit": 1,
                                                       "cursor": first["next_cursor"]}).json()
    # Two events a moment apart travel through separate queues: either may be recorded first.
    assert sorted(n["kind"] for n in first["items"] + second["items"]) == ["order_cancelled", "order_confirmation"]
    assert first["items"][0]["created_at"] >= second["items"][0]["created_at"]
    assert second["next_cursor"] is None
    assert _notifications(api, order_id=order["id"], status="failed") == []
    for bad in ({"status": "lost"}, {"order_id": "nope"}, {"limit": 0}, {"cursor": "garbage"}):
        response = api.get("/api/v1/notifications", params=bad)
        assert response.status_code == 400, (bad, response.text)
    assert api.get(f"/api/v1/notifications/{uuid.uuid4()}").status_code == 404
    assert api.get("/api/v1/notifications/not-an-id").status_code == 404


# ---- the local sink of `make run` ---------------------------------------------------

def test_make_mail_lists_what_the_local_sink_kept(tmp_path):
    port = support.free_port()
    sink = subprocess.Popen([sys.executable, "-m", "scripts.mail_sink", "serve", "--port", str(port),
                             "--dir", str(tmp_path)], cwd=support.ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        def listening():
            try:
                smtplib.SMTP("127.0.0.1", port, timeout=2).quit()
                return True
            except OSError:
                return False
        assert support.wait_until(listening, timeout=20), "the sink did not listen"
        for n in (1, 2):
            message = EmailMessage()
            message["From"], message["To"] = "shop@example.com", f"customer-{n}@example.com"
            message["Subject"] = f"Your order number {n}"
            message.set_content("Hello")
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
                smtp.send_message(message)
    finally:
        sink.terminate()
        sink.wait(timeout=10)
    assert len(list(tmp_path.glob("*.eml"))) == 2

    venv = Path(sys.executable).parent.parent
    listing = subprocess.run(
        ["make", "-s", "mail", f"MAIL_DIR={tmp_path}", f"VENV={venv}", "-o", f"{venv}/.installed-stamp"],
        cwd=support.ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert listing.returncode == 0, listing.stdout + listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["time", "(UTC)", "to", "subject"]
    assert "customer-2@example.com" in lines[1] and "Your order number 2" in lines[1]  # newest first
    assert "customer-1@example.com" in lines[2] and "Your order number 1" in lines[2]
