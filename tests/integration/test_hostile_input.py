"""Hostile and odd input: always a clear 4xx naming the field, or stored exactly as sent."""
import json
import uuid

import pytest


@pytest.fixture
def customer(api):
    return api.create_customer()


def test_body_limits_and_media_types(api):
    assert api.post("/api/v1/customers", data="{}" + " " * 70_000,
                    headers={"Content-Type": "application/json"}).status_code == 413
    assert api.post("/api/v1/customers", data="name=x",
                    headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 415
    assert api.post("/api/v1/customers", data='{"name": "x",', headers={"Content-Type": "application/json"}).status_code == 400
    assert api.post("/api/v1/customers", data=b"\xff\xfe", headers={"Content-Type": "application/json"}).status_code == 400
    assert api.post("/api/v1/customers", json="just a string").status_code == 400
    assert api.post("/api/v1/customers", data="", headers={"Content-Type": "application/json"}).status_code == 400
    assert api.post("/api/v1/customers").status_code == 415  # no body, no content type


@pytest.mark.parametrize("quantity", [0, -1, 10**6, 10**30, 1.5, "2", True, None, "NaN"])
def test_bad_quantities_are_400_naming_the_field(api, customer, quantity):
    response = api.post("/api/v1/orders", json={"customer_id": customer["id"],
                                                "items": [{"sku": "ANY-1", "quantity": quantity}]})
    assert response.status_code == 400, response.text
    assert "quantity" in json.dumps(response.json()["error"]["details"])


@pytest.mark.parametrize("field, value", [
    ("stock", 10**20), ("stock", -5), ("unit_price", "1e400"), ("unit_price", "Infinity"),
    ("unit_price", 10**20), ("low_stock_threshold", -1), ("sku", "a" * 65), ("sku", "has space"),
    ("sku", "A\n"), ("name", ""), ("name", "x" * 201), ("currency", "euro"), ("surprise", 1),
])
def test_bad_product_fields_are_400_naming_the_field(api, field, value):
    body = {"sku": f"H-{uuid.uuid4().hex[:8]}", "name": "Hostile", "unit_price": "1.00", "stock": 1, field: value}
    response = api.post("/api/v1/products", json=body)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["details"]


def test_nul_characters_never_reach_the_database(api):
    response = api.post("/api/v1/customers", json={"name": "Nul\x00Byte", "email": "nul@example.com"})
    assert response.status_code == 400
    assert "name" in response.json()["error"]["details"]
    assert api.get("/api/v1/products/A%00B").status_code == 404
    assert api.get("/api/v1/orders/%00").status_code == 404


def test_unicode_long_and_sql_looking_strings_are_stored_verbatim(api, customer):
    name = "Zoë Ångström 李小龙 🚀 " + "é" * 150
    sql = "Robert'); DROP TABLE orders.orders;--"
    created = api.post("/api/v1/customers", json={
        "name": name, "email": f"o'brien+{uuid.uuid4().hex[:6]}@example.com",
        "shipping_address": {"line1": sql, "line2": "' OR '1'='1", "city": "Zürich",
                             "postal_code": "8001", "country": "CH"}})
    assert created.status_code == 201, created.text
    fetched = api.get(f"/api/v1/customers/{created.json()['id']}").json()
    assert fetched["name"] == name
    assert fetched["shipping_address"]["line1"] == sql
    assert fetched["shipping_address"]["line2"] == "' OR '1'='1"

    product = api.create_product(sku=f"SQL-{uuid.uuid4().hex[:6]}", name=sql, description="☃" * 2000)
    assert api.product(product["sku"])["name"] == sql
    assert api.get("/api/v1/orders", params={"status": "pending' OR 1=1--"}).status_code == 400
    assert api.get("/api/v1/products/' OR 1=1--").status_code == 404


def test_bad_query_and_path_parameters(api):
    assert api.get("/api/v1/orders", params={"limit": "0"}).status_code == 400
    assert api.get("/api/v1/orders", params={"limit": "9" * 40}).status_code == 400
    assert api.get("/api/v1/orders", params={"created_after": "2026-13-45"}).status_code == 400
    assert api.get("/api/v1/orders", params={"cursor": "e30"}).status_code == 400
    assert api.get("/api/v1/customers/" + "9" * 500).status_code == 404
    assert api.put(f"/api/v1/orders/{uuid.uuid4()}/status", json={"status": "teleported"}).status_code == 400
    assert api.put(f"/api/v1/orders/{uuid.uuid4()}", json={}).status_code == 400
    assert api.put(f"/api/v1/orders/{uuid.uuid4()}/status", json={"status": "cancelled"},
                   headers={"If-Match": '"abc"'}).status_code in (404, 412)


def test_what_the_http_server_refuses_itself_is_json_in_the_contract_shape(api):
    # gunicorn answers these before the app sees the request.
    too_long = api.get("/api/v1/orders", params={"customer_id": "x" * 5000})
    assert too_long.status_code == 414
    assert too_long.headers["Content-Type"] == "application/json"
    assert too_long.json()["error"]["code"] == "uri_too_long"
    assert "4094" in too_long.json()["error"]["message"]
    big_headers = api.get("/api/v1/orders", headers={f"X-Filler-{n}": "y" * 100 for n in range(120)})
    assert big_headers.status_code in (400, 431)
    assert big_headers.json()["error"]["code"] in ("bad_request", "request_header_fields_too_large")


def test_what_schemathesis_found(api, customer):
    """Each of these was a 500 once."""
    order = api.create_order(customer, (api.create_product(stock=5), 1))
    for tag in ('""', 'W/""', 'W/"²"'):
        response = api.put(f"/api/v1/orders/{order['id']}/status", json={"status": "cancelled"},
                           headers={"If-Match": tag})
        assert response.status_code == 412, (tag, response.text)
    assert api.post("/api/v1/customers", data="[" * 20_000,
                    headers={"Content-Type": "application/json"}).status_code == 400
    response = api.post("/api/v1/products", json={"sku": f"C-{uuid.uuid4().hex[:6]}", "name": "x",
                                                  "unit_price": "1.00", "currency": "USD\n"})
    assert response.status_code == 400 and "currency" in response.json()["error"]["details"]
    surrogate = api.post("/api/v1/customers", data='{"name": "\\ud800", "email": "s@example.com"}',
                         headers={"Content-Type": "application/json"})
    assert surrogate.status_code == 400 and "name" in surrogate.json()["error"]["details"]
    from common.kit.paging import encode_cursor
    for path, cursor in (("/api/v1/orders", ["2026-01-01T00:00:00", str(uuid.uuid4())]),
                         ("/api/v1/customers", ["9999-12-31T23:59:59-23:00", str(uuid.uuid4())]),
                         ("/api/v1/products", "A\u0000B")):
        response = api.get(path, params={"cursor": encode_cursor(cursor)})
        assert response.status_code == 400, (path, response.text)
