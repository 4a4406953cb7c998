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
