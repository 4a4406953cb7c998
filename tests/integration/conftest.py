"""Fixtures that start the real stack once per test session."""
import uuid

import pytest
import requests

from tests import harness, support
from tests.servers.push import PushService
from tests.servers.sms import SID, TOKEN, SmsProvider
from tests.servers.smtp import SmtpServer
from tests.servers.webhook_receiver import WebhookReceiver

# The test stack disables a webhook whose every attempt failed for this long.
WEBHOOK_DISABLE_AFTER_SECONDS = 8
# ... and routes it an event type for this long after the last webhook that wanted it stopped wanting it.
WEBHOOK_UNBIND_GRACE_SECONDS = 5


@pytest.fixture(scope="session")
def broker():
    vhost, amqp_uri = support.create_vhost()
    yield amqp_uri
    support.delete_vhost(vhost)


@pytest.fixture(scope="session")
def database():
    """A throwaway database migrated to head: (name, url)."""
    name, url = support.create_database()
    harness.migrate(url)
    yield name, url
    support.drop_database(name)


@pytest.fixture(scope="session")
def smtp_server():
    """The real SMTP server the stack's notification_service sends to (tests/servers/smtp.py)."""
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sms_provider():
    """The SMS provider (Twilio's Messages API) the stack's notification_service sends to (tests/servers/sms.py)."""
    server = SmsProvider().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def push_service():
    """A push service the test's subscriptions live on; it checks each push's VAPID token against the
    stack's key and decrypts it (tests/servers/push.py)."""
    server = PushService(vapid_public_key=support.vapid_key()[1]).start()
    yield server
    server.stop()


def stack_env(amqp_uri, database_url, smtp_port=None, sms_url=None, **overrides):
    """The environment of a test stack: its broker, database, SMTP server and SMS provider, fresh ports,
    the test secrets."""
    env = {
        **harness.venv_env(),
        "AMQP_URI": amqp_uri,
        "DATABASE_URL": database_url,
        "GATEWAY_PORT": str(harness.free_port()),
        "GATEWAY_WORKERS": "2",
        "GATEWAY_THREADS": "16",
        "RPC_TIMEOUT": "10",
        "SERVICE_RPC_TIMEOUT": "5",  # below RPC_TIMEOUT, as the README asks
        "LOG_LEVEL": "INFO",
        "JWT_SECRET": support.JWT_SECRET,
        "CALLER_SIGNING_KEY": support.CALLER_SIGNING_KEY,
        "METRICS_PORT": str(harness.free_metrics_base()),
        "TAX_RATE": support.TAX_RATE,  # a real rate, so invoices show their tax part
    }
    env.update({
        # Emails go to the test's SMTP server (without one, to a port nobody listens on: they wait
        # and retry); retries come fast so an outage test takes seconds.
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port or harness.free_port()),
        "SMTP_STARTTLS": "false",
        "MAIL_FROM": support.MAIL_FROM,
        "NOTIFY_RETRY_BASE_SECONDS": "0.5",
        "NOTIFY_SWEEP_INTERVAL_SECONDS": "1",
        # Webhooks reach the tests' receiver (tests/servers/webhook_receiver.py) on 127.0.0.1 over http;
        # retries come fast and give up soon, and a webhook that only fails is disabled within seconds.
        "WEBHOOK_ALLOW_HOSTS": "127.0.0.1",  # the tests' own webhook receivers and push service
        "WEBHOOK_TIMEOUT_SECONDS": "2",
        "WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        "WEBHOOK_MAX_ATTEMPTS": "4",
        "WEBHOOK_DISABLE_AFTER_HOURS": str(WEBHOOK_DISABLE_AFTER_SECONDS / 3600),
        "WEBHOOK_SWEEP_INTERVAL_SECONDS": "1",
        # An event type no webhook wants any more is unbound within seconds (tests/integration/test_webhook_bindings.py).
        "WEBHOOK_BINDINGS_INTERVAL_SECONDS": "1",
        "WEBHOOK_UNBIND_GRACE_SECONDS": str(WEBHOOK_UNBIND_GRACE_SECONDS),
        "STAFF_EMAILS": ",".join(support.STAFF_EMAILS),
        # SMS go to the test's provider (without one, to a port nobody listens on: they wait and retry).
        "SMS_API_URL": sms_url or f"http://127.0.0.1:{harness.free_port()}",
        "SMS_ACCOUNT_SID": SID,
        "SMS_AUTH_TOKEN": TOKEN,
        "SMS_FROM": "+15005550006",
        "VAPID_PRIVATE_KEY": str(support.vapid_key()[0]),
        "VAPID_SUBJECT": support.VAPID_SUBJECT,
    })
    return {**env, **overrides}


@pytest.fixture(scope="session")
def webhook_receiver():
    """The real HTTP server the stack's webhooks deliver to (tests/servers/webhook_receiver.py)."""
    server = WebhookReceiver().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack(broker, database, smtp_server, sms_provider, push_service):
    running = harness.Stack(stack_env(broker, database[1], smtp_server.port, sms_provider.url),
                            support.OUTPUT / "stack.log", append=False)  # one run per file: the logging tests read it
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
def api(stack):
    """An HTTP session against the gateway: api.post('/api/v1/...', json=...)."""
    return ApiClient(stack.base_url)


@pytest.fixture
def rpc(stack):
    """The stack's services over RPC, as a signed admin, as nameko shell calls (docs/operations.md)."""
    with support.rpc(stack.env) as cluster:
        yield cluster


@pytest.fixture
def db_name(database):
    return database[0]


@pytest.fixture
def listen(broker, stack):
    """listen("order_service", "order_created", ...) -> an EventListener, closed after the test."""
    listeners = []

    def start(service, *event_types):
        listener = support.EventListener(broker, service, event_types)
        listeners.append(listener)
        return listener

    yield start
    for listener in listeners:
        listener.close()


@pytest.fixture
def order_events(listen):
    return listen("order_service", "order_created")


class ApiClient(requests.Session):
    """Sends an admin token unless made with `as_customer`."""

    def __init__(self, base_url, auth_headers=None):
        super().__init__()
        self.base_url = base_url
        self.auth_headers = auth_headers or support.bearer("admin")
        self.headers.update(self.auth_headers)

    def as_customer(self, customer):
        return ApiClient(self.base_url, support.bearer("customer", customer["id"]))

    def request(self, method, url, *args, **kwargs):
        kwargs.setdefault("timeout", 30)
        return super().request(method, self.base_url + url, *args, **kwargs)

    def create_customer(self, **overrides):
        body = {"name": "Ada Lovelace", "email": f"ada-{uuid.uuid4().hex[:10]}@example.com",
                "shipping_address": {"line1": "12 Analytical Way", "city": "London",
                                     "postal_code": "N1 9GU", "country": "GB"}}
        body.update(overrides)
        response = self.post("/api/v1/customers", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def create_product(self, **overrides):
        body = {"sku": f"SKU-{uuid.uuid4().hex[:10]}", "name": "Widget", "description": "A widget",
                "unit_price": "29.99", "currency": "EUR", "stock": 5}
        body.update(overrides)
        response = self.post("/api/v1/products", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def create_order(self, customer, *lines, headers=None):
        """lines: (product, quantity) pairs; returns the 201 response's order."""
        response = self.post("/api/v1/orders", headers=headers, json={
            "customer_id": customer["id"],
            "items": [{"sku": product["sku"], "quantity": quantity} for product, quantity in lines]})
        assert response.status_code == 201, response.text
        return response.json()

    def set_status(self, order, status, **headers):
        return self.put(f"/api/v1/orders/{order['id']}/status", json={"status": status}, headers=headers)

    def ship_details(self, order):
        response = self.put(f"/api/v1/orders/{order['id']}/shipping",
                            json={"carrier": "DHL", "tracking_number": "JD0146000000001"})
        assert response.status_code == 200, response.text
        return response.json()

    def product(self, sku):
        return self.get(f"/api/v1/products/{sku}").json()
