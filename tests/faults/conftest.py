"""A fresh stack per fault test: its own virtual host, database and processes.

These tests stop the broker, restart Postgres and kill services, so they run
apart from the integration suite (`make faults`, which `make test` runs last).
"""
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests import support


@pytest.fixture
def fault_stack(request):
    vhost, amqp_uri = support.create_vhost()
    db_name, db_url = support.create_database()
    support.alembic(db_url, "upgrade", "head")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AMQP_URI": amqp_uri, "DATABASE_URL": db_url, "JWT_SECRET": support.JWT_SECRET,
        "GATEWAY_PORT": str(support.free_port()), "GATEWAY_WORKERS": "2", "GATEWAY_THREADS": "16",
        "RPC_TIMEOUT": "5", "LOG_LEVEL": "WARNING",
        # Fast clocks so a run takes seconds: the order deadline stays below the grace.
        "RECONCILE_INTERVAL_SECONDS": "1", "RESERVATION_GRACE_SECONDS": "6",
        "ORDER_CREATE_DEADLINE_SECONDS": "3", "OUTBOX_RELAY_INTERVAL": "0.5",
        "EVENT_MAX_RETRIES": "3", "EVENT_RETRY_BASE_SECONDS": "0.2",
    }
    stack = support.ProcessStack(env, support.OUTPUT / "faults" / request.node.name)
    stack.db_name, stack.amqp_uri = db_name, amqp_uri
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        support.drop_database(db_name)
        support.delete_vhost(vhost)


class Load:
    """POST /orders from many threads; remembers what every request got."""

    def __init__(self, stack, customer, product, concurrency=16):
        self.url = stack.base_url + "/api/v1/orders"
        self.body = {"customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 1}]}
        self.headers = support.bearer()
        self.results = []  # (status, order id or None)
        self.pool = ThreadPoolExecutor(max_workers=concurrency)

    def _one(self, _):
        try:
            response = requests.post(self.url, json=self.body, headers=self.headers, timeout=30)
        except requests.RequestException as exc:
            self.results.append((type(exc).__name__, None))
            return
        order_id = response.json().get("id") if response.status_code == 201 else None
        self.results.append((response.status_code, order_id))

    def start(self, count, pause=0.0):
        """Send `count` requests, one every `pause` seconds, from the background."""
        def submit_all():
            futures = [self._submit(i, pause) for i in range(count)]
            for future in futures:
                future.result()

        self._submitter = threading.Thread(target=submit_all)
        self._submitter.start()

    def _submit(self, i, pause):
        future = self.pool.submit(self._one, i)
        time.sleep(pause)
        return future

    def wait(self):
        self._submitter.join()

    def statuses(self):
        return [status for status, _ in self.results]

    def created(self):
        return [order_id for status, order_id in self.results if status == 201]


def seed(stack, stock=100_000):
    session = requests.Session()
    session.headers.update(support.bearer())
    customer = session.post(stack.base_url + "/api/v1/customers", json={
        "name": "Fault Tester", "email": f"fault-{uuid.uuid4().hex}@example.com"}).json()
    product = session.post(stack.base_url + "/api/v1/products", json={
        "sku": f"F-{uuid.uuid4().hex[:8]}", "name": "Fault", "unit_price": "1.00", "stock": stock}).json()
    return customer, product


def wait_until(predicate, timeout, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def counts(stack, customer, product):
    """(orders in the database, orders counted by the order_created consumer,
    units reserved, units that pending orders hold) for the test's customer and product."""
    [(in_db,)] = support.query(stack.db_name, "SELECT count(*) FROM orders.orders WHERE customer_id = %s",
                               customer["id"])
    [(consumed,)] = support.query(stack.db_name, "SELECT orders_count FROM customers.customers WHERE id = %s",
                                  customer["id"])
    [(reserved,)] = support.query(stack.db_name, "SELECT reserved FROM inventory.products WHERE sku = %s",
                                  product["sku"])
    [(pending_units,)] = support.query(
        stack.db_name, "SELECT coalesce(sum(i.quantity), 0) FROM orders.order_items i JOIN orders.orders o "
                       "ON o.id = i.order_id WHERE o.status = 'pending' AND i.sku = %s", product["sku"])
    return in_db, consumed, reserved, int(pending_units)


def summary(name, load, stack, customer, product):
    """The issue's summary line; returns the numbers for assertions."""
    statuses = load.statuses()
    created = load.created()
    in_db, consumed, reserved, pending_units = counts(stack, customer, product)
    numbers = {
        "sent": len(statuses), "201": statuses.count(201), "503": statuses.count(503),
        "504": statuses.count(504), "other": len([s for s in statuses if s not in (201, 503, 504)]),
        "in_db": in_db, "events_consumed": consumed, "duplicates": len(created) - len(set(created)),
        "leaked_units": reserved - pending_units,
    }
    print(f"\n[{name}] sent={numbers['sent']} 201={numbers['201']} 503={numbers['503']} 504={numbers['504']} "
          f"other={numbers['other']} orders_in_db={in_db} events_consumed={consumed} "
          f"duplicates={numbers['duplicates']} leaked_units={numbers['leaked_units']}")
    return numbers
