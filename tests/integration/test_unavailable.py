"""503 and 504: what the gateway answers when a part is missing or slow."""

import time

import psycopg2
import requests

from tests import support


def test_stopped_services_are_named_and_calls_get_503(stack, tmp_path):
    # A second, empty virtual host: the broker answers but no service listens there.
    vhost, amqp_uri = support.create_vhost()
    try:
        with support.Gateway({**stack.env, "AMQP_URI": amqp_uri}, tmp_path / "gateway.log") as gateway:
            health = requests.get(gateway.base_url + "/health", timeout=15)
            assert health.status_code == 503
            checks = health.json()["checks"]
            assert checks["broker"] == "ok"
            assert checks["order_service"] == "not running"
            assert "order_service" in health.json()["error"]["message"]

            response = requests.get(gateway.base_url + "/api/v1/products", headers=support.bearer(), timeout=15)
            assert response.status_code == 503
            assert response.json()["error"]["details"] == {"service": "inventory_service"}
    finally:
        support.delete_vhost(vhost)


def test_unreachable_broker_is_503(stack, tmp_path):
    dead_broker = f"amqp://guest:guest@127.0.0.1:{support.free_port()}/"
    with support.Gateway({**stack.env, "AMQP_URI": dead_broker}, tmp_path / "gateway.log") as gateway:
        health = requests.get(gateway.base_url + "/health", timeout=15)
        assert health.status_code == 503
        assert health.json()["checks"]["broker"] == "unreachable"
        # Liveness asks nothing behind the gateway: a broker outage must not restart every gateway.
        live = requests.get(gateway.base_url + "/health/live", timeout=15)
        assert (live.status_code, live.json()) == (200, {"status": "ok"})
        response = requests.post(gateway.base_url + "/api/v1/customers", timeout=15, headers=support.bearer(),
                                 json={"name": "A", "email": "a@example.com"})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "service_unavailable"


def test_a_service_slower_than_rpc_timeout_is_504(stack, api, db_name, tmp_path):
    customer = api.create_customer()
    # Hold a lock the service's query must wait for: the service is really slow.
    blocker = psycopg2.connect(support.PG_DSN + f" dbname={db_name}")
    cursor = blocker.cursor()
    cursor.execute("LOCK TABLE customers.customers IN ACCESS EXCLUSIVE MODE")
    try:
        settings = {"RPC_TIMEOUT": "1", "SERVICE_RPC_TIMEOUT": "0.5"}  # a service's wait stays below the gateway's
        with support.Gateway({**stack.env, **settings}, tmp_path / "gateway.log") as gateway:
            response = requests.get(f"{gateway.base_url}/api/v1/customers/{customer['id']}",
                                    headers=support.bearer(), timeout=15)
            assert response.status_code == 504
            assert response.json()["error"]["code"] == "upstream_timeout"
            blocker.rollback()
            # The pool discarded the timed-out proxy; the next call is served normally.
            again = requests.get(f"{gateway.base_url}/api/v1/customers/{customer['id']}",
                                 headers=support.bearer(), timeout=15)
            assert again.status_code == 200
            assert again.json()["id"] == customer["id"]
    finally:
        blocker.close()


def test_an_order_whose_reservation_hangs_is_504_naming_inventory_and_creates_nothing(api, db_name):
    customer = api.create_customer()
    product = api.create_product(stock=5)
    body = {"customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 1}]}
    # inventory's reservation must wait for this row lock: inventory is really stuck.
    blocker = psycopg2.connect(support.PG_DSN + f" dbname={db_name}")
    try:
        blocker.cursor().execute("SELECT 1 FROM inventory.products WHERE sku = %s FOR UPDATE", (product["sku"],))
        started = time.monotonic()
        response = api.post("/api/v1/orders", json=body)
        waited = time.monotonic() - started
    finally:
        blocker.rollback()
        blocker.close()

    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "upstream_timeout"
    assert error["details"] == {"service": "inventory_service", "timeout_seconds": 5.0}
    assert waited < 9  # order_service gave up (SERVICE_RPC_TIMEOUT 5), not the gateway (RPC_TIMEOUT 10)
    assert support.query(db_name, "SELECT count(*) FROM orders.orders WHERE customer_id = %s",
                         customer["id"]) == [(0,)]
    # The worker and its transaction were freed: the next order goes through.
    assert api.post("/api/v1/orders", json=body).status_code == 201


def test_a_write_past_its_deadline_is_504_naming_the_order_and_never_commits(stack, api, db_name, tmp_path):
    customer = api.create_customer()
    product = api.create_product(stock=5)
    api.create_order(customer, (product, 1))  # the customer is now in order_service's directory
    body = {"customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 1}]}
    blocker = psycopg2.connect(support.PG_DSN + f" dbname={db_name}")
    try:
        # order_service's first read of the orders table waits on this lock past the gateway's deadline.
        blocker.cursor().execute("LOCK TABLE orders.orders IN ACCESS EXCLUSIVE MODE")
        settings = {"RPC_TIMEOUT": "2", "SERVICE_RPC_TIMEOUT": "1"}
        with support.Gateway({**stack.env, **settings}, tmp_path / "gateway.log") as gateway:
            started = time.monotonic()
            response = requests.post(gateway.base_url + "/api/v1/orders", json=body, headers=support.bearer(),
                                     timeout=15)
            answered = time.monotonic()
            time.sleep(1)
            blocker.rollback()  # order_service goes on, now past the deadline
    finally:
        blocker.close()

    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "outcome_unknown"
    order_id = error["details"]["order_id"]
    assert answered - started < 4
    # From RPC_TIMEOUT seconds after the answer on, the order's fate is settled: it was never made.
    time.sleep(max(0.0, answered + 2 - time.monotonic()))
    assert api.get(f"/api/v1/orders/{order_id}").status_code == 404
    time.sleep(3)
    assert api.get(f"/api/v1/orders/{order_id}").status_code == 404
    assert api.product(product["sku"])["reserved"] == 1  # only the first order's unit
