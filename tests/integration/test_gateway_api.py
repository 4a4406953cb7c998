"""Every route of the foundation through the gateway, including its errors."""
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from common.contract.services import SERVICE_NAMES
from tests.support import query


def test_health_names_every_part(api):
    response = api.get("/health")
    assert response.status_code == 200
    assert response.json()["checks"] == {"broker": "ok", "database": "ok", **{name: "ok" for name in SERVICE_NAMES}}


def test_liveness_needs_no_token_and_says_ok(api):
    response = requests.get(api.base_url + "/health/live", timeout=10)
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_an_idle_kept_alive_connection_is_still_open_seconds_later(api):
    """The client closes idle connections, not the gateway: a request sent on a kept-alive connection
    as the server closed it would be lost (GATEWAY_KEEPALIVE_SECONDS; gunicorn's default is 2 s)."""
    import http.client
    from urllib.parse import urlsplit

    address = urlsplit(api.base_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    try:
        for _ in range(2):
            connection.request("GET", "/health/live")
            answer = connection.getresponse()
            answer.read()
            assert answer.status == 200 and answer.getheader("Connection", "").lower() != "close"
            time.sleep(3.5)  # past gunicorn's default and its once-a-second sweep
        assert connection.sock is not None and not _closed_by_peer(connection.sock)
    finally:
        connection.close()


def _closed_by_peer(sock):
    import select

    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""


def test_customer_create_get_and_list(api):
    created = api.post("/api/v1/customers", json={"name": "Grace", "email": "Grace.H@Example.com"})
    assert created.status_code == 201, created.text
    customer = created.json()
    assert customer["email"] == "grace.h@example.com"
    assert customer["shipping_address"] is None
    assert created.headers["Location"] == f"/api/v1/customers/{customer['id']}"
    assert api.get(f"/api/v1/customers/{customer['id']}").json() == customer

    duplicate = api.post("/api/v1/customers", json={"name": "G", "email": "grace.h@example.com"})
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "already_exists"


def test_lists_page_with_an_opaque_cursor(api):
    skus = sorted(api.create_product(sku=f"PAGE-{uuid.uuid4().hex[:6]}-{i}")["sku"] for i in range(5))
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/v1/products", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= 2
        seen += [item["sku"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [sku for sku in seen if sku in skus] == skus
    assert len(seen) == len(set(seen))

    customers = api.get("/api/v1/customers", params={"limit": 1})
    assert customers.status_code == 200
    assert set(customers.json()) == {"items", "next_cursor"}
    assert api.get("/api/v1/products", params={"cursor": "not-a-cursor"}).status_code == 400
    assert api.get("/api/v1/products", params={"limit": 101}).json()["error"]["details"] == {
        "limit": ["Must be greater than or equal to 1 and less than or equal to 100."]}


def test_bad_input_is_400_naming_each_field(api):
    response = api.post("/api/v1/products", json={
        "sku": "bad sku!", "name": "", "unit_price": "1.999", "stock": -1, "colour": "red"})
    assert response.status_code == 400
    details = response.json()["error"]["details"]
    assert set(details) == {"sku", "name", "unit_price", "stock", "colour"}

    order = api.post("/api/v1/orders", json={"customer_id": "nope", "items": [{"sku": "A", "quantity": 0}]})
    assert order.status_code == 400
    assert set(order.json()["error"]["details"]) == {"customer_id", "items"}

    assert api.post("/api/v1/orders", data="{oops", headers={"Content-Type": "application/json"}).status_code == 400
    assert api.post("/api/v1/orders", data="x", headers={"Content-Type": "text/plain"}).status_code == 415
    assert api.post("/api/v1/orders", json=[1, 2]).status_code == 400
    assert api.post("/api/v1/orders", data="x" * 70_000,
                    headers={"Content-Type": "application/json"}).status_code == 413


def test_unknown_things(api):
    customer = api.create_customer()
    unknown_customer = api.post("/api/v1/orders", json={
        "customer_id": str(uuid.uuid4()), "items": [{"sku": "ANY", "quantity": 1}]})
    assert unknown_customer.status_code == 422
    assert unknown_customer.json()["error"]["code"] == "unknown_customer"

    unknown_sku = api.post("/api/v1/orders", json={
        "customer_id": customer["id"], "items": [{"sku": "NO-SUCH-SKU", "quantity": 1}]})
    assert unknown_sku.status_code == 422
    assert unknown_sku.json()["error"]["details"] == {"skus": ["NO-SUCH-SKU"]}

    for path in (f"/api/v1/orders/{uuid.uuid4()}", "/api/v1/orders/not-a-uuid",
                 f"/api/v1/customers/{uuid.uuid4()}", "/api/v1/products/NOPE", "/api/v1/nothing"):
        response = api.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


def test_an_order_has_one_currency(api):
    customer = api.create_customer()
    euro = api.create_product(currency="EUR")
    dollar = api.create_product(currency="USD")
    response = api.post("/api/v1/orders", json={"customer_id": customer["id"], "items": [
        {"sku": euro["sku"], "quantity": 1}, {"sku": dollar["sku"], "quantity": 1}]})
    assert response.status_code == 422
    # The reservation taken before pricing was given back.
    for sku in (euro["sku"], dollar["sku"]):
        assert api.get(f"/api/v1/products/{sku}").json()["reserved"] == 0


def test_same_sku_twice_is_one_line(api):
    customer = api.create_customer()
    product = api.create_product(unit_price="10.00", stock=10)
    response = api.post("/api/v1/orders", json={"customer_id": customer["id"], "items": [
        {"sku": product["sku"], "quantity": 1}, {"sku": product["sku"], "quantity": 2}]})
    assert response.status_code == 201, response.text
    assert response.json()["items"] == [
        {"sku": product["sku"], "quantity": 3, "unit_price": "10.00", "line_total": "30.00"}]


def test_skus_that_sort_differently_by_collation_keep_their_own_quantity_and_price(api):
    # Byte order puts "B..." before "a..."; most human collations do the opposite.
    # Each line must still get its own product's quantity and price.
    customer = api.create_customer()
    tag = uuid.uuid4().hex[:8]
    upper = api.create_product(sku=f"B-{tag}", unit_price="1.00", stock=10)
    lower = api.create_product(sku=f"a.{tag}", unit_price="100.00", stock=10)
    response = api.post("/api/v1/orders", json={"customer_id": customer["id"], "items": [
        {"sku": lower["sku"], "quantity": 3}, {"sku": upper["sku"], "quantity": 1}]})
    assert response.status_code == 201, response.text
    lines = {item["sku"]: (item["quantity"], item["unit_price"]) for item in response.json()["items"]}
    assert lines == {lower["sku"]: (3, "100.00"), upper["sku"]: (1, "1.00")}
    assert response.json()["total_amount"] == "301.00"
    assert api.product(lower["sku"])["reserved"] == 3 and api.product(upper["sku"])["reserved"] == 1


def test_concurrent_orders_never_oversell(api, db_name):
    customer = api.create_customer()
    product = api.create_product(stock=10)
    body = {"customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 1}]}

    with ThreadPoolExecutor(max_workers=25) as pool:
        statuses = sorted(pool.map(lambda _: api.post("/api/v1/orders", json=body).status_code, range(25)))

    assert statuses.count(201) == 10
    assert statuses.count(409) == 15
    assert query(db_name, "SELECT stock, reserved FROM inventory.products WHERE sku = %s",
                 product["sku"]) == [(10, 10)]
    assert query(db_name, "SELECT count(*) FROM orders.orders WHERE customer_id = %s",
                 customer["id"]) == [(10,)]
