"""Every channel of the order flow through the gateway: staff alerts by email, customers' email, SMS
and Web Push per their preferences, each with its own retries, against real servers in the test
(tests/servers/: aiosmtpd, an SMS provider speaking Twilio's Messages API, a push service that
decrypts what it gets with the subscriber's keys and checks the VAPID token)."""
import time

from tests import support


def test_staff_hear_of_low_stock_once_per_crossing_naming_the_sku(api, smtp_server):
    customer = api.create_customer()
    product = api.create_product(stock=5, low_stock_threshold=3)
    sku = product["sku"]

    def alerts():
        return [m for m in smtp_server.messages if sku in str(m["message"]["Subject"])]

    first = api.create_order(customer, (product, 2))  # 3 available: not below
    second = api.create_order(customer, (product, 1))  # 2: crosses
    api.create_order(customer, (product, 1))  # 1: still below, no second alert
    assert support.wait_until(lambda: len(alerts()) == 2)
    for order in (first, second):  # back to 4 available, above the threshold
        assert api.set_status(order, "cancelled").status_code == 200
    api.create_order(customer, (product, 2))  # 2 again: a second crossing
    assert support.wait_until(lambda: len(alerts()) == 4)
    time.sleep(2)  # nothing more arrives
    mails = alerts()
    assert len(mails) == 4
    assert sorted(mail["rcpt_tos"][0] for mail in mails) == sorted(
        ["stock@shop.example", "warehouse@shop.example"] * 2)
    for mail in mails:
        assert mail["message"]["Subject"] == f"Stock low: {sku} (2 available, threshold 3)"
        assert sku in mail["message"].get_body(("plain",)).get_content()
    staff = api.get("/api/v1/notifications", params={"status": "sent", "limit": 100}).json()["items"]
    assert {n["recipient"] for n in staff if n["kind"] == "stock_low" and sku in n["subject"]} == set(
        support.STAFF_EMAILS)


KEYS = {"p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM",
        "auth": "tBHItJI5svbpez7KI4CCXg"}


def test_a_customer_has_a_phone_preferences_and_push_subscriptions(api, listen):
    customers = listen("customer_service", "customer_updated")
    bad = api.post("/api/v1/customers", json={"name": "Ada", "email": "ada-bad@example.com", "phone": "0207 946"})
    assert bad.status_code == 400 and list(bad.json()["error"]["details"]) == ["phone"]
    customer = api.create_customer(phone="+1 415 555 2671")
    assert customer["phone"] == "+14155552671"
    assert customer["notification_preferences"] == {"email": True, "sms": False, "push": False}
    as_customer = api.as_customer(customer)
    changed = as_customer.patch(f"/api/v1/customers/{customer['id']}",
                                json={"notification_preferences": {"sms": True, "push": True}})
    assert changed.status_code == 200
    assert changed.json()["notification_preferences"] == {"email": True, "sms": True, "push": True}

    for endpoint in ("http://push.example.net/x", "https://10.0.0.7/x", "https://nowhere.invalid/x", "ftp://a/b"):
        refused = as_customer.post(f"/api/v1/customers/{customer['id']}/push-subscriptions",
                                   json={"endpoint": endpoint, "keys": KEYS})
        assert refused.status_code == 400, (endpoint, refused.text)
        assert list(refused.json()["error"]["details"]) == ["endpoint"]
    endpoint = "http://127.0.0.1:9/push/one"  # an allowed host (WEBHOOK_ALLOW_HOSTS)
    added = as_customer.post(f"/api/v1/customers/{customer['id']}/push-subscriptions",
                             json={"endpoint": endpoint, "expirationTime": None, "keys": KEYS})
    assert added.status_code == 201, added.text
    subscription = added.json()
    assert set(subscription) == {"id", "endpoint", "created_at"} and subscription["endpoint"] == endpoint
    event = customers.wait_for(lambda e: e["data"]["id"] == customer["id"] and e["data"]["push_subscriptions"])
    assert event["data"]["push_subscriptions"] == [{**subscription, "keys": KEYS}]
    assert api.get(f"/api/v1/customers/{customer['id']}").json()["push_subscriptions"] == [subscription]

    other = api.as_customer(api.create_customer())
    path = f"/api/v1/customers/{customer['id']}/push-subscriptions/{subscription['id']}"
    assert other.delete(path).status_code == 404
    assert other.post(f"/api/v1/customers/{customer['id']}/push-subscriptions",
                      json={"endpoint": endpoint, "keys": KEYS}).status_code == 404
    assert as_customer.delete(path).status_code == 204
    assert as_customer.delete(path).status_code == 404
    event = customers.wait_for(lambda e: e["data"]["id"] == customer["id"] and not e["data"]["push_subscriptions"])
    assert api.get(f"/api/v1/customers/{customer['id']}").json()["push_subscriptions"] == []


def _phone():
    """A fresh valid number, so each test finds its own SMS."""
    import random

    import phonenumbers
    while True:
        number = f"+1415{random.randint(2000000, 9999999)}"
        if phonenumbers.is_valid_number(phonenumbers.parse(number)):
            return number


def _reachable(api, push_service, **preferences):
    """A customer with a phone and a push subscription, and the preferences given."""
    customer = api.create_customer(phone=_phone(), notification_preferences=preferences)
    subscription = push_service.subscribe()
    added = api.as_customer(customer).post(f"/api/v1/customers/{customer['id']}/push-subscriptions",
                                           json=subscription)
    assert added.status_code == 201, added.text
    time.sleep(2)  # the contract: a change applies to events emitted from 2 seconds after its answer
    return customer, subscription


def _notifications(api, order_id, count, timeout=40):
    def settled():
        items = api.get("/api/v1/notifications", params={"order_id": order_id}).json()["items"]
        return items if len(items) >= count and all(n["status"] != "queued" for n in items) else None
    return support.wait_until(settled, timeout) or api.get("/api/v1/notifications", params={"order_id": order_id}).json()[
        "items"]


def test_each_channel_goes_out_when_it_is_on_and_never_when_it_is_off(api, smtp_server, sms_provider, push_service):
    customer, subscription = _reachable(api, push_service, sms=True, push=True)
    product = api.create_product(stock=10)
    order = api.create_order(customer, (product, 1))
    mail = smtp_server.wait_for(lambda m: customer["email"] in m["rcpt_tos"])
    sms = sms_provider.wait_for(lambda m: m["to"] == customer["phone"])
    push = push_service.wait_for(lambda p: p["endpoint"] == subscription["endpoint"])
    assert order["id"] in mail["message"].get_body(("plain",)).get_content()
    assert order["id"] in sms["body"] and sms["from"] == "+15005550006"
    assert push["payload"]["order_id"] == order["id"] and order["id"] in push["payload"]["body"]
    assert push["claims"]["sub"] == support.VAPID_SUBJECT
    rows = _notifications(api, order["id"], 3)
    assert sorted((n["channel"], n["recipient"], n["status"]) for n in rows) == [
        ("email", customer["email"], "sent"), ("push", subscription["endpoint"], "sent"),
        ("sms", customer["phone"], "sent")]

    changed = api.patch(f"/api/v1/customers/{customer['id']}",
                        json={"notification_preferences": {"email": False, "sms": False}})
    assert changed.json()["notification_preferences"] == {"email": False, "sms": False, "push": True}
    time.sleep(2)
    second = api.create_order(customer, (product, 1))
    push_service.wait_for(lambda p: p["payload"]["order_id"] == second["id"])
    time.sleep(2)  # time for anything else to (wrongly) arrive
    assert [n["channel"] for n in _notifications(api, second["id"], 1)] == ["push"]
    assert not [m for m in sms_provider.to(customer["phone"]) if second["id"] in m["body"]]
    assert not [m for m in smtp_server.to(customer["email"]) if second["id"] in str(m["message"])]


def test_each_channel_retries_to_exactly_one_delivery(api, sms_provider, push_service):
    customer, subscription = _reachable(api, push_service, sms=True, push=True)
    sms_provider.outages, push_service.outages = 2, 1
    order = api.create_order(customer, (api.create_product(), 1))
    rows = {n["channel"]: n for n in _notifications(api, order["id"], 3, timeout=60)}
    assert (rows["sms"]["status"], rows["sms"]["attempts"]) == ("sent", 3)
    assert (rows["push"]["status"], rows["push"]["attempts"]) == ("sent", 2)
    assert rows["sms"]["last_error"].startswith("503 ")
    time.sleep(2)
    assert len([m for m in sms_provider.to(customer["phone"]) if order["id"] in m["body"]]) == 1
    assert len([p for p in push_service.to(subscription["endpoint"]) if p["payload"]["order_id"] == order["id"]]) == 1


def test_a_cancellations_reason_is_in_the_message_on_every_channel_and_in_the_history(
        api, smtp_server, sms_provider, push_service):
    customer, subscription = _reachable(api, push_service, sms=True, push=True)
    order = api.create_order(customer, (api.create_product(), 1))
    reason = "Out of the colour you chose – we are sorry"
    cancelled = api.as_customer(customer).put(f"/api/v1/orders/{order['id']}/status",
                                              json={"status": "cancelled", "reason": reason})
    assert cancelled.status_code == 200
    mail = smtp_server.wait_for(lambda m: customer["email"] in m["rcpt_tos"] and "cancelled" in m["message"]["Subject"])
    sms = sms_provider.wait_for(lambda m: m["to"] == customer["phone"] and "cancelled" in m["body"])
    push = push_service.wait_for(lambda p: p["endpoint"] == subscription["endpoint"]
                                 and p["payload"]["kind"] == "order_cancelled")
    for text in (mail["message"].get_body(("plain",)).get_content(), mail["message"].get_body(("html",)).get_content(),
                 sms["body"], push["payload"]["body"]):
        assert order["id"] in text and reason in text
    history = api.get(f"/api/v1/orders/{order['id']}/history").json()["items"]
    assert history[-1]["to"] == "cancelled" and history[-1]["reason"] == reason


def test_a_subscription_the_push_service_says_is_gone_is_removed(api, push_service):
    customer, subscription = _reachable(api, push_service, push=True)
    push_service.gone.add(subscription["endpoint"])
    order = api.create_order(customer, (api.create_product(), 1))
    [push] = [n for n in _notifications(api, order["id"], 2) if n["channel"] == "push"]
    assert (push["status"], push["attempts"]) == ("failed", 1) and push["last_error"].startswith("410")
    assert support.wait_until(lambda: api.get(f"/api/v1/customers/{customer['id']}").json()["push_subscriptions"] == [],
                       timeout=40)


def test_front_ends_get_the_vapid_public_key_without_a_token(api):
    import requests

    answer = requests.get(api.base_url + "/api/v1/push/vapid-public-key", timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {"public_key": support.vapid_key()[1]}


def test_make_sms_lists_what_the_local_sink_kept(tmp_path):
    """The sink `make run` starts without SMS_API_URL speaks the Messages API, as notification_service's client."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    from pydantic import SecretStr

    from notification_service.channels import SmsClient
    from notification_service.domain import ProviderAnswer

    port, kept = support.free_port(), tmp_path / "messages.jsonl"
    sink = subprocess.Popen([sys.executable, "-m", "scripts.sms_sink", "serve", "--port", str(port),
                             "--file", str(kept)], cwd=support.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    client = SmsClient()
    client.settings = SimpleNamespace(sms_api_base=f"http://127.0.0.1:{port}", sms_account_sid="ACdev",
                                      sms_auth_token=SecretStr("token"), sms_from="+15005550006",
                                      notify_http_timeout_seconds=5)
    import requests
    client.session = requests.Session()
    try:
        def sent(n):
            try:
                return client.send(f"+1415555267{n}", f"Your order number {n} has shipped.")
            except requests.ConnectionError:
                return None
        assert support.wait_until(lambda: sent(1), timeout=20).startswith("SM")
        assert sent(2).startswith("SM")
        client.settings.sms_from = ""
        try:
            sent(3)
        except ProviderAnswer as refusal:
            assert refusal.status == 400 and "From" in refusal.text
        else:
            raise AssertionError("a message without From was taken")
    finally:
        sink.terminate()
        sink.wait(timeout=10)
    venv = Path(sys.executable).parent.parent
    listing = subprocess.run(
        ["make", "-s", "sms", f"SMS_FILE={kept}", f"VENV={venv}", "-o", f"{venv}/.installed-stamp"],
        cwd=support.ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert listing.returncode == 0, listing.stdout + listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:3] == ["time", "(UTC)", "to"]
    assert "+14155552672" in lines[1] and "Your order number 2 has shipped." in lines[1]  # newest first
    assert "+14155552671" in lines[2]
