"""Circuit breakers on a stack of its own (a service is stopped here): invoice_service stopped opens its
circuit after BREAKER_FAILURES timeouts, its routes then answer 503 at once without slowing order
creation, and one probe closes it once the service is back. An order refused with a 503 by
order_service itself leaves its Idempotency-Key unused."""
import concurrent.futures
import subprocess
import threading
import time
import uuid

import pytest
import requests

from tests import harness, support
from tests.integration.conftest import ApiClient

pytestmark = pytest.mark.integration

RPC_TIMEOUT, FAILURES, RESET = 2, 2, 3


@pytest.fixture(scope="module")
def own_stack():
    vhost, amqp_uri = support.create_vhost()
    db_name, db_url = support.create_database()
    harness.migrate(db_url)
    env = {**harness.venv_env(), "AMQP_URI": amqp_uri, "DATABASE_URL": db_url, "JWT_SECRET": support.JWT_SECRET,
           "GATEWAY_PORT": str(harness.free_port()), "GATEWAY_WORKERS": "1", "GATEWAY_THREADS": "16",
           "RPC_TIMEOUT": str(RPC_TIMEOUT), "SERVICE_RPC_TIMEOUT": "1", "LOG_LEVEL": "WARNING",
           "METRICS_PORT": str(harness.free_metrics_base()), "SMTP_HOST": "127.0.0.1",
           "SMTP_PORT": str(harness.free_port()), "BREAKER_FAILURES": str(FAILURES),
           "BREAKER_RESET_SECONDS": str(RESET)}
    stack = harness.ProcessStack(env, support.OUTPUT / "breakers")
    stack.vhost = vhost
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        support.delete_vhost(vhost)
        support.drop_database(db_name)


def _stop(stack, name):
    stack.kill(name, sig=15).wait(timeout=30)


def _restart(stack, name):
    stack.start(name)
    deadline = time.monotonic() + 60
    queue = f"rpc-{dict(customers='customer_service', inventory='inventory_service', invoices='invoice_service')[name]}"
    while not harness.queue_consumers(stack.vhost, queue):
        assert time.monotonic() < deadline, f"{name} did not come back"
        time.sleep(0.3)


def _timed_get(url):
    started = time.monotonic()
    response = requests.get(url, headers=support.bearer("admin"), timeout=30)
    return response, time.monotonic() - started


def _breaker_state(stack, service):
    text = requests.get(stack.base_url + "/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith("circuit_breaker_state{") and f'service="{service}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_stopped_service_opens_its_circuit_without_slowing_the_others_and_a_probe_closes_it(own_stack):
    api = ApiClient(own_stack.base_url)
    customer, product = api.create_customer(), api.create_product(stock=100)
    invoices = own_stack.base_url + "/api/v1/invoices"
    assert _timed_get(invoices)[0].status_code == 200
    _stop(own_stack, "invoices")
    try:
        for _ in range(FAILURES):
            response, seconds = _timed_get(invoices)
            assert response.status_code == 504 and seconds >= RPC_TIMEOUT * 0.9, response.text
        response, seconds = _timed_get(invoices)
        assert response.status_code == 503 and seconds < 0.5, (response.text, seconds)
        error = response.json()["error"]
        assert error["code"] == "service_unavailable" and error["details"]["circuit"] == "open"
        assert error["details"]["service"] == "invoice_service"
        assert 1 <= int(response.headers["Retry-After"]) <= RESET
        assert _breaker_state(own_stack, "invoice_service") == 2

        # Clients hammering the open circuit hold no thread: orders are placed as fast as ever.
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                assert _timed_get(invoices)[0].status_code == 503

        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            hammering = [pool.submit(hammer) for _ in range(12)]
            try:
                for _ in range(5):
                    started = time.monotonic()
                    api.create_order(customer, (product, 1))
                    assert time.monotonic() - started < 1.5
            finally:
                stop.set()
            for future in hammering:
                future.result()
    finally:
        _restart(own_stack, "invoices")
    time.sleep(RESET + 0.2)
    response, _ = _timed_get(invoices)  # the probe
    assert response.status_code == 200, response.text
    assert _breaker_state(own_stack, "invoice_service") == 0
    assert all(_timed_get(invoices)[0].status_code == 200 for _ in range(3))


def test_an_order_refused_with_503_by_order_service_leaves_its_idempotency_key_unused(own_stack):
    api = ApiClient(own_stack.base_url)
    customer, product = api.create_customer(), api.create_product(stock=10)
    body = {"customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 1}]}
    key = f"unavailable-{uuid.uuid4().hex}"
    _stop(own_stack, "inventory")
    # Without its queue, order_service's call to inventory is refused at once: 503 after the key's claim.
    subprocess.run(["rabbitmqctl", "-q", "delete_queue", "-p", own_stack.vhost, "rpc-inventory_service"],
                   check=True, capture_output=True, timeout=60)
    try:
        refused = api.post("/api/v1/orders", json=body, headers={"Idempotency-Key": key})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "service_unavailable"
        assert support.query(own_stack.env["DATABASE_URL"].rsplit("/", 1)[1],
                             "SELECT 1 FROM orders.idempotency_keys WHERE key = %s", key) == []
    finally:
        _restart(own_stack, "inventory")
    created = api.post("/api/v1/orders", json=body, headers={"Idempotency-Key": key})
    assert created.status_code == 201, created.text
    again = api.post("/api/v1/orders", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 201 and again.json()["id"] == created.json()["id"]
    assert api.product(product["sku"])["reserved"] == 1
