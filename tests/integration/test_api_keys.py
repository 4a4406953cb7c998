"""API keys for machine clients: made by admins, shown once, stored as a digest, acting with their role
and customer like a token, refused once revoked (at once here, within API_KEY_CACHE_SECONDS elsewhere)."""
import hashlib
import time

import pytest
import requests

from tests import support
from tests.integration.conftest import ApiClient

pytestmark = pytest.mark.integration

CACHE_SECONDS = 1


@pytest.fixture(scope="module")
def second_gateway(stack):
    """Another gateway on the session stack, trusting a verified key for CACHE_SECONDS."""
    with support.Gateway({**stack.env, "API_KEY_CACHE_SECONDS": str(CACHE_SECONDS)},
                         support.OUTPUT / "gateway-api-keys.log") as gateway:
        yield gateway


def _key_client(base_url, key):
    client = ApiClient(base_url, {"X-API-Key": key})
    client.headers.pop("Authorization", None)
    return client


def _make_key(api, **body):
    response = api.post("/api/v1/api-keys", json={"name": "warehouse-sync", **body})
    assert response.status_code == 201, response.text
    return response.json()


def _assert_error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert set(body["error"]) == {"code", "message", "details"}


def test_a_key_is_shown_once_and_stored_only_as_its_digest(api, db_name):
    created = _make_key(api, role="admin")
    key = created["key"]
    assert key.startswith("oms_") and len(key) > 40
    assert created["prefix"] == key[:8] and created["role"] == "admin" and created["customer_id"] is None
    assert created["last_used_at"] is None and created["revoked_at"] is None

    listed = api.get("/api/v1/api-keys", params={"limit": 100}).json()
    mine = [item for item in listed["items"] if item["id"] == created["id"]]
    assert mine and "key" not in mine[0] and mine[0]["prefix"] == created["prefix"]
    assert all(key not in str(item) for item in listed["items"])

    rows = support.query(db_name, "SELECT key_digest, row_to_json(k)::text FROM customers.api_keys k WHERE id = %s",
                         created["id"])
    assert rows and rows[0][0] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in rows[0][1] and key[8:] not in rows[0][1]


def test_an_admin_key_acts_as_an_admin(api, stack, db_name):
    key = _make_key(api, role="admin")
    machine = _key_client(stack.base_url, key["key"])
    product = machine.create_product()
    customer = machine.create_customer()
    order = machine.create_order(customer, (product, 1))
    history = machine.get(f"/api/v1/orders/{order['id']}/history").json()
    assert history["items"][0]["by"] == f"api-key:{key['id']}"
    listed = {item["id"]: item for item in api.get("/api/v1/api-keys", params={"limit": 100}).json()["items"]}
    assert listed[key["id"]]["last_used_at"] is not None


def test_a_customer_key_sees_only_its_customer(api, stack):
    ada, bob = api.create_customer(), api.create_customer()
    product = api.create_product()
    key = _make_key(api, role="customer", customer_id=ada["id"])
    assert key["customer_id"] == ada["id"]
    machine = _key_client(stack.base_url, key["key"])
    assert machine.get(f"/api/v1/customers/{ada['id']}").status_code == 200
    _assert_error(machine.get(f"/api/v1/customers/{bob['id']}"), 404, "not_found")
    machine.create_order(ada, (product, 1))
    _assert_error(machine.post("/api/v1/orders", json={"customer_id": bob["id"],
                                                       "items": [{"sku": product["sku"], "quantity": 1}]}),
                  403, "forbidden")
    _assert_error(machine.patch(f"/api/v1/products/{product['sku']}", json={"stock": 99}), 403, "forbidden")
    _assert_error(machine.get("/api/v1/api-keys"), 403, "forbidden")


def test_keys_are_made_by_admins_only_and_checked(api):
    customer = api.create_customer()
    _assert_error(api.as_customer(customer).post("/api/v1/api-keys", json={"name": "x", "role": "admin"}),
                  403, "forbidden")
    _assert_error(api.post("/api/v1/api-keys", json={"name": "x", "role": "customer"}), 400, "validation_failed")
    _assert_error(api.post("/api/v1/api-keys", json={"name": "x", "role": "admin", "customer_id": customer["id"]}),
                  400, "validation_failed")
    _assert_error(api.post("/api/v1/api-keys", json={"name": "x", "role": "service"}), 400, "validation_failed")
    _assert_error(api.post("/api/v1/api-keys", json={"name": "x", "role": "customer",
                                                     "customer_id": "3f2b6c1e-8a4d-4e37-9a51-6b0f8d2c7e10"}),
                  422, "unknown_customer")


@pytest.mark.parametrize("key", ["oms_not-a-key-anyone-made", "no-prefix", "oms_" + "x" * 300])
def test_an_unknown_key_is_401(stack, key):
    response = requests.get(stack.base_url + "/api/v1/products", headers={"X-API-Key": key}, timeout=10)
    _assert_error(response, 401, "unauthenticated")
    assert response.headers["WWW-Authenticate"]


def test_a_revoked_key_is_refused_at_once_where_revoked_and_elsewhere_within_the_cache_period(api, stack,
                                                                                         second_gateway):
    """The second gateway has one process, which revokes the key and forgets it; the session gateway's
    processes keep what they know for its API_KEY_CACHE_SECONDS (the default, 5)."""
    key = _make_key(api, role="admin")
    here, there = _key_client(second_gateway.base_url, key["key"]), _key_client(stack.base_url, key["key"])
    assert here.get("/api/v1/products").status_code == 200
    for _ in range(4):  # cached in both of its processes, most likely
        assert there.get("/api/v1/products").status_code == 200
    admin_here = ApiClient(second_gateway.base_url)
    assert admin_here.delete(f"/api/v1/api-keys/{key['id']}").status_code == 204
    _assert_error(here.get("/api/v1/products"), 401, "unauthenticated")
    deadline = time.monotonic() + 5 + 1
    while there.get("/api/v1/products").status_code != 401:
        assert time.monotonic() < deadline, "a revoked key still works past API_KEY_CACHE_SECONDS"
        time.sleep(0.2)
    listed = {item["id"]: item for item in api.get("/api/v1/api-keys", params={"limit": 100}).json()["items"]}
    assert listed[key["id"]]["revoked_at"] is not None
    assert api.delete(f"/api/v1/api-keys/{key['id']}").status_code == 204  # revoking twice changes nothing
    _assert_error(api.delete("/api/v1/api-keys/0d6f3b2a-7c41-4e8a-9b5d-2f1e6a3c8b70"), 404, "not_found")
