"""RPC as `nameko shell` users and other services see it, and the migration history."""
import subprocess
import sys
import time
import uuid

import pytest
from kombu.serialization import dumps
from nameko.standalone.rpc import ClusterRpcProxy

from common.contract.caller import ENTRY_METHOD, SERVICE, arguments_digest, entry_digest, sign_caller
from common.contract.errors import InsufficientStock, InvalidTransition, NotFound, Unauthenticated
from common.contract.services import SERVICE_NAMES
from tests import support

KEY = support.CALLER_SIGNING_KEY.encode()


def test_reserve_release_commit_are_idempotent_per_order(rpc, api):
    product = api.create_product(stock=10)
    order_id = str(uuid.uuid4())
    items = [{"sku": product["sku"], "quantity": 3}]

    first = rpc.inventory_service.reserve(order_id, items)
    again = rpc.inventory_service.reserve(order_id, items)
    assert first == again
    assert first["items"][0]["unit_price"] == product["unit_price"]
    assert rpc.inventory_service.get_product(product["sku"])["reserved"] == 3

    assert rpc.inventory_service.release(order_id)["status"] == "released"
    assert rpc.inventory_service.release(order_id)["status"] == "released"
    assert rpc.inventory_service.get_product(product["sku"])["reserved"] == 0
    with pytest.raises(InvalidTransition):
        rpc.inventory_service.commit(order_id)

    shipped_id = str(uuid.uuid4())
    rpc.inventory_service.reserve(shipped_id, items)
    rpc.inventory_service.commit(shipped_id)
    rpc.inventory_service.commit(shipped_id)
    after = rpc.inventory_service.get_product(product["sku"])
    assert (after["stock"], after["reserved"]) == (7, 0)
    with pytest.raises(NotFound):
        rpc.inventory_service.release(str(uuid.uuid4()))


def test_a_failed_create_attempt_gives_the_same_answer_to_every_later_run(rpc, api, db_name):
    # A second run of one attempt is a broker redelivery (its first run's ack was lost
    # with a node) or an earlier send of the gateway still queued: here, sent again by hand.
    customer = api.create_customer()
    product = api.create_product(stock=2)
    attempt = str(uuid.uuid4())
    order = {"customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 5}]}
    with pytest.raises(InsufficientStock):
        rpc.order_service.create_order(order, attempt_id=attempt)
    assert api.patch(f"/api/v1/products/{product['sku']}", json={"stock": 10}).status_code == 200
    with pytest.raises(InsufficientStock):  # it could be made now, but its client was told it failed
        rpc.order_service.create_order(order, attempt_id=attempt)
    assert api.get(f"/api/v1/orders/{attempt}").status_code == 404
    assert support.query(db_name, "SELECT error->>'code' FROM orders.failed_attempts WHERE attempt_id = %s",
                         attempt) == [("insufficient_stock",)]
    assert rpc.inventory_service.get_product(product["sku"])["reserved"] == 0


def test_batch_reads(rpc, api):
    customer = api.create_customer()
    product = api.create_product()
    assert [c["id"] for c in rpc.customer_service.get_customers([customer["id"], str(uuid.uuid4()), "x"])] \
        == [customer["id"]]
    assert [p["sku"] for p in rpc.inventory_service.get_products([product["sku"], "NOPE"])] == [product["sku"]]


def test_nameko_shell_reaches_the_stack_as_a_signed_admin(stack, api):
    # Piped input runs as a script: the examples in docs/operations.md, as a user would type them.
    product = api.create_product()
    script = (f"print('database:', n.rpc.order_service.health()['database'])\n"
              f"print('sku:', n.rpc.inventory_service.get_products([{product['sku']!r}])[0]['sku'])\n")
    result = subprocess.run(
        [sys.executable, "-m", "common.kit.runner", "shell"],
        input=script, capture_output=True, text=True, cwd=support.ROOT, env=stack.env, timeout=60)
    assert "database: ok" in result.stdout, result.stdout + result.stderr
    assert f"sku: {product['sku']}" in result.stdout, result.stdout + result.stderr


# ---- the signed caller context (docs/guarantees.md "Who is calling over RPC") -------------

def _health_body_digest():
    """The digest of the body nameko's proxy sends for `health()`: what a signature of it covers."""
    _, encoding, body = dumps({"args": (), "kwargs": {}}, serializer="json")
    return arguments_digest(body.encode(encoding))


def _plain_call(stack, caller, service, method="health", *args):
    """service.method(*args) through nameko's own proxy, which sends `caller` exactly as given."""
    with ClusterRpcProxy({"AMQP_URI": stack.env["AMQP_URI"]}, context_data={"caller": caller}, timeout=10) as proxy:
        return getattr(proxy[service], method)(*args)


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_every_service_refuses_a_caller_not_signed_for_the_call(stack, service):
    admin, digest, now = support.ADMIN_CALLER, _health_body_digest(), time.time()
    method = f"{service}.health"
    customer = {"sub": "customer:x", "role": "customer", "customer_id": str(uuid.uuid4())}
    # Signed by hand, right: accepted, whoever sends it (the signature covers the body's bytes).
    assert _plain_call(stack, sign_caller(KEY, admin, method, digest), service)["service"] == service
    forged = {
        "missing": admin,
        "bad": sign_caller(b"not-the-stack-key-at-all", admin, method, digest),  # another key
        "edited": {**sign_caller(KEY, customer, method, digest), "role": "admin"},
        "other method": sign_caller(KEY, admin, f"{service}.other_method", digest),
        "other arguments": sign_caller(KEY, admin, method, arguments_digest(b'{"args": [1], "kwargs": {}}')),
        "stale": sign_caller(KEY, admin, method, digest, now=now - 120),
    }
    for how, caller in forged.items():
        with pytest.raises(Unauthenticated) as refused:
            _plain_call(stack, caller, service)
        expected = {"missing": "missing", "stale": "stale"}.get(how, "bad")
        assert refused.value.details == {"caller_signature": expected}, how
    with support.rpc(stack.env) as signed:  # the signing proxy, as `make shell` has it
        assert signed[service].health()["service"] == service


def test_a_refused_call_runs_nothing(stack, api):
    email = f"forged-{uuid.uuid4().hex[:8]}@example.com"
    data = {"name": "Mallory", "email": email, "shipping_address": {
        "line1": "1 Side St", "city": "Leeds", "postal_code": "LS1 1AA", "country": "GB"}}
    with pytest.raises(Unauthenticated):
        _plain_call(stack, support.ADMIN_CALLER, "customer_service", "create_customer", data)
    assert api.post("/api/v1/customers", json=data).status_code == 201  # the email was still free


def test_a_batch_entry_with_a_forged_caller_fails_alone(stack, api):
    customer, product = api.create_customer(), api.create_product(stock=10)
    owner = {"sub": f"customer:{customer['id']}", "role": "customer", "customer_id": customer["id"]}
    stranger = {"sub": "customer:x", "role": "customer", "customer_id": str(uuid.uuid4())}

    def entry(caller, sign=True):
        attempt = str(uuid.uuid4())
        data = {"customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 1}]}
        if sign:
            caller = sign_caller(KEY, caller, ENTRY_METHOD, entry_digest(data, None, attempt))
        return {"attempt_id": attempt, "data": data, "idempotency_key": None, "caller": caller,
                "request_id": uuid.uuid4().hex, "deadline": time.time() + 10, "traceparent": None}

    good, unsigned = entry(owner), entry(owner, sign=False)
    edited = entry(stranger)
    edited["caller"] = {**edited["caller"], "role": "admin"}  # a stranger's entry made an admin's
    with support.rpc(stack.env, {"sub": "gateway", "role": SERVICE}) as rpc:
        outcomes = rpc.order_service.create_orders([good, unsigned, edited])
    assert outcomes[0]["order"]["id"] == good["attempt_id"]
    assert [o.get("kind") for o in outcomes[1:]] == ["Unauthenticated", "Unauthenticated"]
    assert [o["error"]["details"] for o in outcomes[1:]] == [{"caller_signature": "missing"},
                                                            {"caller_signature": "bad"}]
    assert api.get(f"/api/v1/orders/{good['attempt_id']}").status_code == 200
    for refused in (unsigned, edited):
        assert api.get(f"/api/v1/orders/{refused['attempt_id']}").status_code == 404
    assert api.get(f"/api/v1/products/{product['sku']}").json()["reserved"] == 1


def test_migrations_upgrade_and_downgrade_on_an_empty_database():
    name, url = support.create_database()
    try:
        support.alembic(url, "upgrade", "head")
        tables = support.query(name, "SELECT table_schema || '.' || table_name FROM information_schema.tables "
                                     "WHERE table_schema IN ('customers', 'inventory', 'orders', 'notifications', "
                                     "'invoices') ORDER BY 1")
        assert [t for (t,) in tables] == [
            "customers.api_keys", "customers.customers", "customers.outbox", "customers.processed_events",
            "customers.push_subscriptions",
            "inventory.outbox", "inventory.products", "inventory.reservation_items", "inventory.reservations",
            "invoices.invoice_counters", "invoices.invoice_lines", "invoices.invoices", "invoices.known_customers",
            "invoices.outbox", "invoices.processed_events",
            "notifications.known_customers", "notifications.notifications", "notifications.outbox",
            "notifications.processed_events",
            "orders.change_attempts", "orders.failed_attempts", "orders.idempotency_keys", "orders.known_customers",
            "orders.order_items", "orders.order_status_history", "orders.orders", "orders.outbox",
            "orders.processed_events"]
        # The models and the migrations describe the same tables.
        support.alembic(url, "check")
        support.alembic(url, "downgrade", "base")
        schemas = support.query(name, "SELECT schema_name FROM information_schema.schemata "
                                      "WHERE schema_name IN ('customers', 'inventory', 'orders', 'notifications', "
                                      "'invoices')")
        assert schemas == []
        support.alembic(url, "upgrade", "head")
    finally:
        support.drop_database(name)
