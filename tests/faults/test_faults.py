"""Real faults under real load: no ghost writes, nothing lost, nothing doubled, nothing leaked.

Each load fault streams creates from 8 clients while the fault happens and
prints one line: `ghosts` (orders that exist although their client was told
neither 201 nor a 504 naming them), `lost` (201s whose order does not
exist), `unsettled` (504-named orders whose GET, RPC_TIMEOUT after the
answer and again 10 s later, is not one lasting 200 or 404); all must be 0.
"""
import signal
import threading
import time
import uuid

import pytest
import requests
from kombu import Connection, Exchange

from scripts.rabbitmq_nodes import Node, new_cookie
from tests import support
from tests.faults.conftest import RPC_TIMEOUT, call, counts, create_load_through, seed, settled
from tests.support import wait_until


def test_broker_restart_during_creates(fault_stack):
    seen = {}

    def restart():
        start_again = support.restart_broker()
        time.sleep(2)
        seen["health"] = requests.get(fault_stack.base_url + "/health", timeout=15).status_code
        time.sleep(3)
        start_again()

    numbers = create_load_through("broker restart", fault_stack, restart)
    assert seen["health"] == 503
    # A request that cannot leave the gateway is a quick 503: not done, safe to retry.
    assert numbers["503"] > 0 and numbers["slowest_503_s"] < 3


def test_postgres_restart_during_creates(fault_stack):
    numbers = create_load_through("postgres restart", fault_stack,
                                   lambda: support.restart_postgres(down_seconds=3))
    # A create that met the outage waited for the database (sent again, FailureNotRecorded) or ended in 503/504.
    assert numbers["503"] + numbers["504"] > 0 or numbers["slowest_s"] >= 2, "the outage was not seen at all"


def test_kill_9_order_service_during_creates(fault_stack):
    def kill_and_restart():
        fault_stack.kill("orders", signal.SIGKILL).wait()
        time.sleep(1.5)
        fault_stack.start("orders")
    create_load_through("kill -9 order_service", fault_stack, kill_and_restart)


def test_kill_9_inventory_service_during_creates(fault_stack):
    def kill_and_restart():
        fault_stack.kill("inventory", signal.SIGKILL).wait()
        time.sleep(1.5)
        fault_stack.start("inventory")
    create_load_through("kill -9 inventory_service", fault_stack, kill_and_restart)


@pytest.fixture
def own_broker_node(tmp_path):
    """A RabbitMQ node of the test's own, so freezing it (SIGSTOP) touches no other stack.
    Requested before make_fault_stack, it is stopped after the stack (services that lose
    their broker first take their whole stop grace to exit)."""
    node = Node("oms-paused", support.free_node_port(), tmp_path).start(new_cookie())
    yield node
    node.stop()


def test_broker_paused_during_creates(own_broker_node, make_fault_stack):
    node = own_broker_node
    stack = make_fault_stack(node.amqp_uri)

    def pause():
        node.pause()
        time.sleep(5)
        node.resume()
    create_load_through("broker paused", stack, pause)


def _read(url, headers, timeout=60):
    """The body of a 200 GET of `url`: after an outage the gateway's circuit to a service refuses
    calls at once (503) until a probe after BREAKER_RESET_SECONDS finds it back."""
    deadline = time.monotonic() + timeout
    while True:
        answer = call("GET", url, headers=headers)
        if answer.status == 200 or time.monotonic() > deadline:
            assert answer.status == 200, (url, answer.status, answer.body)
            return answer.body
        time.sleep(0.5)


def test_status_changes_during_a_broker_restart_match_their_answers(fault_stack):
    customer, product = seed(fault_stack)
    headers = support.bearer()
    orders = [call("POST", fault_stack.base_url + "/api/v1/orders", headers=headers, json={
        "customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 2}]}).body["id"]
        for _ in range(80)]
    answers = {}  # (order id, status asked for) -> Answer

    def move(order_ids):
        for order_id in order_ids:
            for status in ("processing", "cancelled"):
                answers[order_id, status] = call("PUT", f"{fault_stack.base_url}/api/v1/orders/{order_id}/status",
                                                 json={"status": status}, headers=headers)

    clients = [threading.Thread(target=move, args=(orders[i::8],)) for i in range(8)]
    for client in clients:
        client.start()
    time.sleep(0.5)
    start_again = support.restart_broker()
    time.sleep(4)
    start_again()
    for client in clients:
        client.join()
    wait_until(settled(fault_stack, customer, product), timeout=60)
    # Past every answer's deadline (and a margin), a redelivered request can no longer commit:
    # what the orders say now is final.
    time.sleep(max(max(answer.finished for answer in answers.values()) + RPC_TIMEOUT + 2 - time.monotonic(), 0))

    inconsistent, applied_after_503 = [], []
    for order_id in orders:
        history = _read(f"{fault_stack.base_url}/api/v1/orders/{order_id}/history", headers)
        reached = [change["to"] for change in history["items"]]
        current = _read(f"{fault_stack.base_url}/api/v1/orders/{order_id}", headers)["status"]
        for status in ("processing", "cancelled"):
            answer = answers[order_id, status]
            # 503: not done, and never done later (not even by a redelivery of its request).
            if answer.status == 503 and status in reached:
                applied_after_503.append((order_id, status, answer.body, reached))
            # 200: done; 503 or 409: not done; 504: either, but settled by now.
            if (answer.status == 200) != (status in reached) and answer.status != 504:
                inconsistent.append((order_id, status, answer.status, reached))
        if current != reached[-1] or len(reached) != len(set(reached)):
            inconsistent.append((order_id, "current", current, reached))
    statuses = [answer.status for answer in answers.values()]
    in_db, _, reserved, live_units = counts(fault_stack, customer, product)
    print(f"\n[status changes during broker restart] sent={len(statuses)} 200={statuses.count(200)} "
          f"409={statuses.count(409)} 503={statuses.count(503)} 504={statuses.count(504)} "
          f"other={len([s for s in statuses if s not in (200, 409, 503, 504)])} inconsistent={len(inconsistent)} "
          f"applied_after_503={len(applied_after_503)} leaked_units={reserved - live_units}")
    assert not [s for s in statuses if s not in (200, 409, 503, 504)]
    assert applied_after_503 == []
    assert inconsistent == []
    assert reserved == live_units


def _publish(amqp_uri, exchange_name, routing_key, envelope):
    with Connection(amqp_uri) as connection:
        producer = connection.Producer()
        producer.publish(envelope, exchange=Exchange(exchange_name, type="topic", durable=True),
                         routing_key=routing_key, serializer="json", delivery_mode=2)


def test_the_same_event_twice_has_one_effect(fault_stack):
    customer, _ = seed(fault_stack)
    envelope = {"event_id": str(uuid.uuid4()), "type": "order_created", "occurred_at": "2026-11-21T00:00:00+00:00",
                "request_id": None, "data": {"id": str(uuid.uuid4()), "customer_id": customer["id"]}}
    for _ in range(2):
        _publish(fault_stack.amqp_uri, "order_service.events", "order_created", envelope)
    count = lambda: support.query(fault_stack.db_name, "SELECT orders_count FROM customers.customers WHERE id = %s",
                                  customer["id"])[0][0]
    assert wait_until(lambda: count() == 1, timeout=10)
    time.sleep(1)
    assert count() == 1
    assert support.query(fault_stack.db_name, "SELECT count(*) FROM customers.processed_events WHERE event_id = %s",
                         envelope["event_id"]) == [(1,)]
    print(f"\n[duplicate event] delivered=2 effects={count()}")


def test_a_poison_event_is_dead_lettered_and_replays_after_the_fix(fault_stack):
    from scripts import dead_letters

    # Break what the handler needs, as a bad deployment would.
    support.query(fault_stack.db_name, "ALTER TABLE orders.known_customers RENAME TO known_customers_broken")
    customer, _ = seed(fault_stack)  # its customer_created event now fails in order_service
    letters = lambda: dead_letters.list_letters(fault_stack.amqp_uri)
    assert wait_until(lambda: len(letters()) == 1, timeout=30), "never dead-lettered"
    [letter] = letters()
    assert letter["queue"].startswith("evt-customer_service-customer_created--order_service")
    assert letter["retries"] == 3
    assert letter["body"]["data"]["id"] == customer["id"]

    support.query(fault_stack.db_name, "ALTER TABLE orders.known_customers_broken RENAME TO known_customers")
    assert dead_letters.replay(fault_stack.amqp_uri) == 1
    assert wait_until(lambda: support.query(
        fault_stack.db_name, "SELECT count(*) FROM orders.known_customers WHERE id = %s", customer["id"]) == [(1,)],
        timeout=15)
    assert letters() == []
    print(f"\n[poison event] retries={letter['retries']} dead_lettered=1 replayed=1 effects=1")


def test_sigterm_lets_in_flight_work_finish(fault_stack):
    customer, product = seed(fault_stack)
    url = fault_stack.base_url + "/api/v1/orders"
    body = {"customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 1}]}
    blocker = support.psycopg2.connect(support.PG_DSN + f" dbname={fault_stack.db_name}")
    blocker.cursor().execute("LOCK TABLE orders.orders IN ACCESS EXCLUSIVE MODE")
    results = []
    request = threading.Thread(target=lambda: results.append(
        requests.post(url, json=body, headers=support.bearer(), timeout=30)))
    request.start()
    time.sleep(1)  # the order is now waiting on the lock inside order_service
    orders = fault_stack.kill("orders", signal.SIGTERM)
    time.sleep(0.5)
    blocker.rollback()
    blocker.close()
    request.join()
    orders.wait(timeout=20)
    assert results[0].status_code == 201, results[0].text
    assert support.query(fault_stack.db_name, "SELECT count(*) FROM orders.orders WHERE id = %s",
                         results[0].json()["id"]) == [(1,)]
    print("\n[sigterm] in-flight order finished with 201 before order_service exited")
