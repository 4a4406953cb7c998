"""Who may do what: bearer tokens at the gateway, the same rules enforced by the services."""
import os
import subprocess
import sys
import uuid

import jwt
import pytest
from cryptography.fernet import Fernet
from nameko.standalone.rpc import ClusterRpcProxy

from common.contract.errors import Forbidden, NotFound, Unauthenticated
from tests import support


@pytest.fixture
def world(api):
    """Two customers, each with a pending order, and clients for admin / owner / other."""
    product = api.create_product(stock=100)
    alice, bob = api.create_customer(), api.create_customer()
    return {
        "product": product, "alice": alice, "bob": bob,
        "alice_order": api.create_order(alice, (product, 1)),
        "bob_order": api.create_order(bob, (product, 1)),
        "admin": api, "owner": api.as_customer(alice), "other": api.as_customer(bob),
    }


@pytest.mark.parametrize("header, reason", [
    (None, "missing"),
    ("Basic YWRtaW46YWRtaW4=", "missing"),
    ("Bearer not-a-jwt", "token"),
    ("Bearer " + support.token(ttl_seconds=-10), "token"),
    ("Bearer " + support.token(secret="some-other-secret-that-is-long-enough"), "token"),
    ("Bearer " + jwt.encode({"sub": "x", "role": "service", "exp": 4102444800}, support.JWT_SECRET), "role"),
    ("Bearer " + jwt.encode({"sub": "x", "role": "customer", "exp": 4102444800}, support.JWT_SECRET), "customer_id"),
    ("Bearer " + jwt.encode({"sub": "x", "role": "admin"}, support.JWT_SECRET), "token"),
])
def test_bad_tokens_are_401(stack, header, reason):
    import requests

    headers = {"Authorization": header} if header else {}
    response = requests.get(stack.base_url + "/api/v1/products", headers=headers, timeout=15)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    error = response.json()["error"]
    assert error["code"] == "unauthenticated"
    assert any(reason in key for key in error["details"]) or reason in str(error["details"])


def test_health_needs_no_token(stack):
    import requests

    assert requests.get(stack.base_url + "/health", timeout=15).status_code == 200


def _status(client, method, path, body=None):
    return client.request(method, path, json=body).status_code


def test_customer_records(world):
    alice, bob = world["alice"], world["bob"]
    cases = [  # (method, path, body, admin, owner, other)
        ("GET", f"/api/v1/customers/{alice['id']}", None, 200, 200, 404),
        ("PATCH", f"/api/v1/customers/{alice['id']}", {"name": "Alice A"}, 200, 200, 404),
        ("POST", "/api/v1/customers", {"name": "N", "email": f"n-{uuid.uuid4().hex}@example.com"}, 201, 403, 403),
    ]
    for method, path, body, *expected in cases:
        got = [_status(world[who], method, path, body) for who in ("admin", "owner", "other")]
        assert got == expected, (method, path, got)

    listed = world["owner"].get("/api/v1/customers", params={"limit": 100}).json()["items"]
    assert [c["id"] for c in listed] == [alice["id"]]
    assert bob["id"] != alice["id"]


def test_products(world):
    sku = world["product"]["sku"]
    new_product = {"sku": f"P-{uuid.uuid4().hex[:8]}", "name": "P", "unit_price": "1.00", "stock": 1}
    cases = [
        ("GET", f"/api/v1/products/{sku}", None, 200, 200, 200),
        ("GET", "/api/v1/products", None, 200, 200, 200),
        ("PATCH", f"/api/v1/products/{sku}", {"stock": 500}, 200, 403, 403),
        ("POST", "/api/v1/products", new_product, 201, 403, 403),
    ]
    for method, path, body, *expected in cases:
        got = [_status(world[who], method, path, body) for who in ("admin", "owner", "other")]
        assert got == expected, (method, path, got)


def test_orders_matrix(world):
    order, sku = world["alice_order"], world["product"]["sku"]
    base = f"/api/v1/orders/{order['id']}"
    cases = [  # admin acts last where it changes state, so the owner's checks see a pending order
        ("GET", base, None, {"owner": 200, "other": 404, "admin": 200}),
        ("GET", base + "/history", None, {"owner": 200, "other": 404, "admin": 200}),
        ("PUT", base, {"items": [{"sku": sku, "quantity": 2}]}, {"other": 404, "owner": 200, "admin": 200}),
        ("PUT", base + "/shipping", {"carrier": "DHL", "tracking_number": "T1"}, {"other": 404, "owner": 403, "admin": 200}),
        ("PUT", base + "/status", {"status": "processing"}, {"other": 404, "owner": 403}),
        ("DELETE", base, None, {"other": 404, "owner": 403}),
        ("PUT", base + "/status", {"status": "cancelled"}, {"other": 404, "owner": 200}),
        ("DELETE", base, None, {"other": 404, "owner": 403, "admin": 204}),
    ]
    for method, path, body, expected in cases:
        got = {who: _status(world[who], method, path, body) for who in expected}
        assert got == expected, (method, path, got)


def test_customers_order_only_for_themselves_and_list_only_their_own(world):
    owner, alice, bob, product = world["owner"], world["alice"], world["bob"], world["product"]
    mine = owner.post("/api/v1/orders", json={"customer_id": alice["id"], "items": [{"sku": product["sku"], "quantity": 1}]})
    assert mine.status_code == 201
    theirs = owner.post("/api/v1/orders", json={"customer_id": bob["id"], "items": [{"sku": product["sku"], "quantity": 1}]})
    assert theirs.status_code == 403
    assert world["admin"].post("/api/v1/orders", json={
        "customer_id": bob["id"], "items": [{"sku": product["sku"], "quantity": 1}]}).status_code == 201

    listed = owner.get("/api/v1/orders", params={"limit": 100}).json()["items"]
    assert {o["customer_id"] for o in listed} == {alice["id"]}
    assert len(listed) == 2
    assert owner.get("/api/v1/orders", params={"customer_id": bob["id"]}).json()["items"] == []


def test_history_names_the_token_subject(world):
    order = world["alice_order"]
    assert world["owner"].put(f"/api/v1/orders/{order['id']}/status", json={"status": "cancelled"}).status_code == 200
    history = world["admin"].get(f"/api/v1/orders/{order['id']}/history").json()["items"]
    assert history[-1]["by"] == f"customer:{world['alice']['id']}"


def test_services_enforce_the_same_rules_over_rpc(stack, world):
    config = {"AMQP_URI": stack.env["AMQP_URI"]}
    with ClusterRpcProxy(config, timeout=10) as anonymous:
        with pytest.raises(Unauthenticated):
            anonymous.order_service.get_order(world["alice_order"]["id"])
        with pytest.raises(Unauthenticated):
            anonymous.inventory_service.reserve(str(uuid.uuid4()), [{"sku": "X", "quantity": 1}])
    as_bob = {"sub": "bob", "role": "customer", "customer_id": world["bob"]["id"]}
    with support.rpc(stack.env, as_bob) as bob:
        with pytest.raises(NotFound):
            bob.order_service.get_order(world["alice_order"]["id"])
        with pytest.raises(Forbidden):
            bob.inventory_service.update_product(world["product"]["sku"], {"stock": 0})
        with pytest.raises(Forbidden):
            bob.inventory_service.release(world["bob_order"]["id"])
        assert bob.order_service.get_order(world["bob_order"]["id"])["id"] == world["bob_order"]["id"]


def test_production_refuses_the_development_secret():
    env = {k: v for k, v in os.environ.items() if k != "JWT_SECRET"}
    result = subprocess.run([sys.executable, "-c", "from gateway.app import create_app; create_app()"],
                            env={**env, "ENV": "production"}, cwd=support.ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert "development JWT_SECRET" in result.stderr
    ok = subprocess.run([sys.executable, "-c", "from gateway.app import create_app; create_app()"],
                        env={**env, "ENV": "production", "JWT_SECRET": "a-real-secret-of-at-least-32-bytes!",
                             "CALLER_SIGNING_KEY": "a-real-caller-signing-key-of-some-length",
                             "WEBHOOK_SECRET_KEY": Fernet.generate_key().decode()},
                        cwd=support.ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
