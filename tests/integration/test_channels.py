"""Every channel of the order flow through the gateway: staff alerts by email, customers' email, SMS
and Web Push per their preferences, each with its own retries, against real servers in the test
(tests/servers/: aiosmtpd, an SMS provider speaking Twilio's Messages API, a push service that
decrypts what it gets with the subscriber's keys and checks the VAPID token)."""
import time

from tests import support


def _wait_until(check, timeout=20, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def test_staff_hear_of_low_stock_once_per_crossing_naming_the_sku(api, smtp_server):
    customer = api.create_customer()
    product = api.create_product(stock=5, low_stock_threshold=3)
    sku = product["sku"]

    def alerts():
        return [m for m in smtp_server.messages if sku in str(m["message"]["Subject"])]

    first = api.create_order(customer, (product, 2))  # 3 available: not below
    second = api.create_order(customer, (product, 1))  # 2: crosses
    api.create_order(customer, (product, 1))  # 1: still below, no second alert
    assert _wait_until(lambda: len(alerts()) == 2)
    for order in (first, second):  # back to 4 available, above the threshold
        assert api.set_status(order, "cancelled").status_code == 200
    api.create_order(customer, (product, 2))  # 2 again: a second crossing
    assert _wait_until(lambda: len(alerts()) == 4)
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
