"""Webhooks through the gateway: every event delivered to a real HTTP receiver, signed, retried, logged.

The stack's webhook_service delivers to the test's own receiver (tests/servers/webhook_receiver.py,
the `webhook_receiver` fixture) on 127.0.0.1, which the stack allows over http
(WEBHOOK_ALLOW_HOSTS); each webhook gets a path of its own. Signatures are checked with the
standardwebhooks library's own `Webhook.verify`, as a subscriber would.
"""
import json
import time
import uuid
from datetime import datetime, timezone

import pytest
import requests
from kombu import Connection, Exchange
from standardwebhooks import Webhook

from common.contract.services import metrics_port
from tests import support
from tests.integration.conftest import WEBHOOK_DISABLE_AFTER_SECONDS

WEBHOOKS = "/api/v1/webhooks"


@pytest.fixture
def hooks(api, webhook_receiver):
    """hooks(*event_types, **fields) -> (webhook with its secret, its path on the receiver); deleted after
    the test (they all share the receiver's host, and so its PER_HOST slots)."""
    made = []

    def make(*event_types, **fields):
        path = f"/hooks/{uuid.uuid4().hex}"
        response = api.post(WEBHOOKS, json={"url": webhook_receiver.url(path), "event_types": list(event_types),
                                            **fields})
        assert response.status_code == 201, response.text
        made.append(response.json()["id"])
        return response.json(), path

    yield make
    for webhook_id in made:
        api.delete(f"{WEBHOOKS}/{webhook_id}")


def _deliveries(api, webhook, **params):
    response = api.get(f"{WEBHOOKS}/{webhook['id']}/deliveries", params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def _delivery_when(api, webhook, status, timeout=20):
    found = support.wait_until(lambda: [d for d in _deliveries(api, webhook) if d["status"] == status], timeout)
    assert found, f"no {status} delivery: {_deliveries(api, webhook)}"
    return found[0]


def _types(requests_received):
    return [json.loads(r.body)["type"] for r in requests_received]


def test_a_delivery_is_the_signed_envelope(api, hooks, webhook_receiver):
    webhook, path = hooks("customer_created", description="CRM import")
    assert webhook["secret"].startswith("whsec_") and webhook["enabled"] is True
    assert (webhook["event_types"], webhook["description"], webhook["disabled_reason"]) == (
        ["customer_created"], "CRM import", None)
    shown = api.get(f"{WEBHOOKS}/{webhook['id']}").json()
    assert "secret" not in shown and shown["url"] == webhook_receiver.url(path)
    assert webhook["id"] in [w["id"] for w in api.get(WEBHOOKS, params={"limit": 100}).json()["items"]]

    customer = api.create_customer()
    [request] = webhook_receiver.wait_for(path)
    envelope = Webhook(webhook["secret"]).verify(request.body, dict(request.headers))
    assert envelope["type"] == "customer_created" and envelope["data"]["id"] == customer["id"]
    assert request.headers["webhook-id"] == envelope["event_id"]
    assert request.headers["Content-Type"] == "application/json"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 30
    delivery = _delivery_when(api, webhook, "delivered")
    assert (delivery["event_id"], delivery["event_type"]) == (envelope["event_id"], "customer_created")
    assert (delivery["attempts"], delivery["last_status_code"], delivery["last_error"]) == (1, 200, None)
    assert delivery["delivered_at"] and delivery["next_attempt_at"] is None


def test_a_webhook_gets_only_the_event_types_it_subscribed_to(api, hooks, webhook_receiver):
    orders, orders_path = hooks("order_created")
    others, others_path = hooks("customer_created", "stock_reserved")
    customer, product = api.create_customer(), api.create_product(stock=3)
    order = api.create_order(customer, (product, 1))
    webhook_receiver.wait_for(others_path, count=2)
    [request] = webhook_receiver.wait_for(orders_path)
    time.sleep(1)
    assert _types(webhook_receiver.requests(orders_path)) == ["order_created"]
    assert json.loads(request.body)["data"]["id"] == order["id"]
    assert sorted(_types(webhook_receiver.requests(others_path))) == ["customer_created", "stock_reserved"]


def test_events_emitted_while_a_webhook_is_disabled_are_never_delivered(api, hooks, webhook_receiver):
    webhook, path = hooks("customer_created", enabled=False)
    missed = api.create_customer()
    enabled = api.patch(f"{WEBHOOKS}/{webhook['id']}", json={"enabled": True})
    assert enabled.status_code == 200 and enabled.json()["enabled"] is True
    seen = api.create_customer()
    [request] = webhook_receiver.wait_for(path)
    assert json.loads(request.body)["data"]["id"] == seen["id"]
    time.sleep(1.5)
    assert len(webhook_receiver.requests(path)) == 1
    assert [d["event_type"] for d in _deliveries(api, webhook)] == ["customer_created"]
    assert missed["id"] not in [json.loads(r.body)["data"]["id"] for r in webhook_receiver.requests(path)]

    assert api.patch(f"{WEBHOOKS}/{webhook['id']}", json={"enabled": False}).status_code == 200
    api.create_customer()
    time.sleep(1.5)
    assert len(webhook_receiver.requests(path)) == 1


def test_failures_then_success_make_one_delivered_record_with_every_attempt(api, hooks, webhook_receiver):
    webhook, path = hooks("customer_created")
    webhook_receiver.respond(path, 500, 302)
    api.create_customer()
    attempts = webhook_receiver.wait_for(path, count=3)
    assert len(attempts) == 3
    assert len({r.headers["webhook-id"] for r in attempts}) == 1 and len({r.body for r in attempts}) == 1
    for request in attempts:
        Webhook(webhook["secret"]).verify(request.body, dict(request.headers))
    [delivery] = support.wait_until(lambda: [d for d in _deliveries(api, webhook) if d["status"] == "delivered"])
    assert (delivery["attempts"], delivery["last_status_code"]) == (3, 200)
    assert len(_deliveries(api, webhook)) == 1
    time.sleep(1)
    assert len(webhook_receiver.requests(path)) == 3  # the 302 was not followed


def test_out_of_attempts_is_failed_and_a_resend_keeps_the_record(api, hooks, webhook_receiver):
    webhook, path = hooks("customer_created")
    webhook_receiver.respond(path, *[500] * 4)
    api.create_customer()
    failed = _delivery_when(api, webhook, "failed")
    assert (failed["attempts"], failed["last_status_code"]) == (4, 500) and "500" in failed["last_error"]
    resent = api.post(f"{WEBHOOKS}/{webhook['id']}/deliveries/{failed['id']}/retry")
    assert resent.status_code == 202 and resent.json()["status"] == "pending"
    delivered = _delivery_when(api, webhook, "delivered")
    assert (delivered["id"], delivered["attempts"]) == (failed["id"], 5)
    assert len(_deliveries(api, webhook)) == 1
    again = api.post(f"{WEBHOOKS}/{webhook['id']}/deliveries/{failed['id']}/retry")  # a delivered one too
    assert again.status_code == 202
    assert support.wait_until(lambda: _deliveries(api, webhook)[0]["attempts"] == 6)
    assert len(webhook_receiver.wait_for(path, count=6)) == 6


def test_a_subscriber_that_hangs_past_the_timeout_does_not_hold_up_another(api, hooks, webhook_receiver):
    hanging, hanging_path = hooks("customer_created")
    quick, quick_path = hooks("customer_created")
    webhook_receiver.hang(hanging_path, 10)
    api.create_customer()
    webhook_receiver.wait_for(hanging_path)  # its attempt is under way, and hangs
    started = time.monotonic()
    api.create_customer()
    quick_requests = webhook_receiver.wait_for(quick_path, count=2, timeout=5)
    assert len(quick_requests) == 2 and quick_requests[-1].at - started < 1.5
    pending = support.wait_until(lambda: [d for d in _deliveries(api, hanging) if d["last_error"]], timeout=10)
    assert pending and "no answer within 2 s" in pending[0]["last_error"]
    assert pending[0]["last_status_code"] is None


def test_a_redelivered_event_makes_no_second_delivery(api, hooks, webhook_receiver, stack):
    webhook, path = hooks("customer_updated")
    envelope = {"event_id": str(uuid.uuid4()), "type": "customer_updated",
                "occurred_at": datetime.now(timezone.utc).isoformat(), "request_id": None,
                "data": {"id": str(uuid.uuid4()), "name": "Twice"}}
    with Connection(stack.env["AMQP_URI"]) as connection:
        producer = connection.Producer()
        for _ in range(2):
            producer.publish(envelope, exchange=Exchange("customer_service.events", type="topic", durable=True),
                             routing_key="customer_updated", serializer="json", delivery_mode=2)
    webhook_receiver.wait_for(path)
    time.sleep(2)
    assert len(webhook_receiver.requests(path)) == 1
    assert [d["event_id"] for d in _deliveries(api, webhook)] == [envelope["event_id"]]


@pytest.mark.parametrize("url, reason", [
    ("ftp://files.example.com/in", "https"),
    ("http://hooks.example.com/in", "WEBHOOK_ALLOW_HOSTS"),
    ("https://localhost/in", "loopback"),
    ("https://127.0.0.2:9/in", "loopback"),
    ("https://10.0.0.8/in", "private"),
    ("https://192.168.1.20/in", "private"),
    ("https://169.254.169.254/latest/meta-data", "metadata"),
    ("https://[::1]/in", "loopback"),
    ("https://[fd00:ec2::254]/in", "metadata"),
    ("not a url", "https"),
])
def test_urls_against_the_rules_are_400_naming_url(api, url, reason):
    response = api.post(WEBHOOKS, json={"url": url, "event_types": ["order_created"]})
    assert response.status_code == 400, response.text
    details = response.json()["error"]["details"]
    assert list(details) == ["url"] and reason in details["url"][0]


def test_a_patch_is_held_to_the_same_rules(api, hooks):
    webhook, _ = hooks("order_created")
    response = api.patch(f"{WEBHOOKS}/{webhook['id']}", json={"url": "https://localhost/in"})
    assert response.status_code == 400 and list(response.json()["error"]["details"]) == ["url"]
    assert api.patch(f"{WEBHOOKS}/{webhook['id']}", json={"event_types": ["nope"]}).status_code == 400
    assert api.patch(f"{WEBHOOKS}/{webhook['id']}", json={}).status_code == 400


def test_webhooks_are_for_admins_only(api):
    customer = api.create_customer()
    as_customer = api.as_customer(customer)
    some_id = str(uuid.uuid4())
    for method, path in [("post", WEBHOOKS), ("get", WEBHOOKS), ("get", f"{WEBHOOKS}/{some_id}"),
                         ("patch", f"{WEBHOOKS}/{some_id}"), ("delete", f"{WEBHOOKS}/{some_id}"),
                         ("get", f"{WEBHOOKS}/{some_id}/deliveries"),
                         ("post", f"{WEBHOOKS}/{some_id}/deliveries/{some_id}/retry")]:
        body = {"url": "https://hooks.example.com/in", "event_types": ["order_created"]}
        response = getattr(as_customer, method)(path, json=body if method in ("post", "patch") else None)
        assert response.status_code == 403, (method, path, response.text)
    assert api.get(f"{WEBHOOKS}/{some_id}").status_code == 404
    assert api.get(f"{WEBHOOKS}/{some_id}/deliveries").status_code == 404


def test_the_delivery_log_pages_newest_first(api, hooks, webhook_receiver):
    webhook, path = hooks("customer_created")
    for _ in range(3):
        api.create_customer()
    webhook_receiver.wait_for(path, count=3)
    first = api.get(f"{WEBHOOKS}/{webhook['id']}/deliveries", params={"limit": 2}).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = api.get(f"{WEBHOOKS}/{webhook['id']}/deliveries", params={"limit": 2, "cursor": first["next_cursor"]})
    items = first["items"] + rest.json()["items"]
    assert len(items) == 3 and rest.json()["next_cursor"] is None
    assert [d["created_at"] for d in items] == sorted((d["created_at"] for d in items), reverse=True)
    assert api.get(f"{WEBHOOKS}/{webhook['id']}/deliveries", params={"status": "sideways"}).status_code == 400


def test_a_deleted_webhook_gets_nothing_more(api, hooks, webhook_receiver):
    webhook, path = hooks("customer_created")
    assert api.delete(f"{WEBHOOKS}/{webhook['id']}").status_code == 204
    assert api.get(f"{WEBHOOKS}/{webhook['id']}").status_code == 404
    api.create_customer()
    time.sleep(1.5)
    assert webhook_receiver.requests(path) == []


def test_a_webhook_whose_every_delivery_fails_is_disabled_with_a_reason(api, hooks, webhook_receiver, listen):
    disabled_events = listen("webhook_service", "webhook_disabled")
    webhook, path = hooks("customer_created")
    webhook_receiver.respond(path, *[503] * 100)
    api.create_customer()
    first_failure = webhook_receiver.wait_for(path)[0].at
    time.sleep(max(0.0, first_failure + WEBHOOK_DISABLE_AFTER_SECONDS + 0.5 - time.monotonic()))
    api.create_customer()
    event = disabled_events.wait_for(lambda e: e["data"]["id"] == webhook["id"], timeout=15)
    shown = api.get(f"{WEBHOOKS}/{webhook['id']}").json()
    assert shown["enabled"] is False and "failed" in shown["disabled_reason"]
    assert event["data"]["disabled_reason"] == shown["disabled_reason"]
    received = len(webhook_receiver.requests(path))
    api.create_customer()
    time.sleep(1.5)
    assert len(webhook_receiver.requests(path)) == received  # nothing for a disabled webhook
    enabled = api.patch(f"{WEBHOOKS}/{webhook['id']}", json={"enabled": True}).json()
    assert enabled["enabled"] is True and enabled["disabled_reason"] is None


def test_webhook_service_reports_its_deliveries(api, hooks, webhook_receiver, stack):
    webhook, path = hooks("customer_created")
    api.create_customer()
    webhook_receiver.wait_for(path)
    _delivery_when(api, webhook, "delivered")
    url = f"http://127.0.0.1:{metrics_port('webhook_service', int(stack.env['METRICS_PORT']))}/metrics"

    def reported():
        text = requests.get(url, timeout=5).text
        return text if 'webhook_deliveries_total{outcome="delivered"' in text else ""
    text = support.wait_until(reported, timeout=10)
    assert "webhook_delivery_attempts_total" in text and "webhook_oldest_pending_seconds" in text
