"""RPC as `nameko shell` users and other services see it, and the migration history."""
import subprocess
import sys
import uuid

import pytest

from common.contract.errors import InsufficientStock, InvalidTransition, NotFound
from tests import support


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


def test_nameko_shell_reaches_the_stack(stack):
    # Piped input runs as a script: the example in docs/operations.md, as a user would type it.
    script = "print('database:', n.rpc.order_service.health()['database'])\n"
    result = subprocess.run(
        [sys.executable, "-m", "common.kit.runner", "shell"],
        input=script, capture_output=True, text=True, cwd=support.ROOT, env=stack.env, timeout=60)
    assert "database: ok" in result.stdout, result.stdout + result.stderr


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
