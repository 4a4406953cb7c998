"""Real faults under real load: nothing lost, nothing doubled, nothing leaked."""
import signal
import threading
import time
import uuid

import requests
from kombu import Connection, Exchange

from tests import support
from tests.faults.conftest import Load, counts, seed, summary, wait_until


def _settled(stack, customer, product):
    """Everything caught up: events consumed for every order, reservations match pending orders."""
    def check():
        in_db, consumed, reserved, pending_units = counts(stack, customer, product)
        return consumed == in_db and reserved == pending_units
    return check


def _assert_nothing_lost_or_doubled(numbers, load, stack):
    created = load.created()
    assert numbers["other"] == 0, load.statuses()
    assert numbers["duplicates"] == 0
    if created:
        found = {row[0] for row in support.query(
            stack.db_name, "SELECT id::text FROM orders.orders WHERE id = ANY(%s::uuid[])", created)}
        assert found == set(created), "an order that got 201 is missing"
    # Orders may exist that the client never saw a 201 for (timed out mid-flight): never fewer.
    assert numbers["in_db"] >= numbers["201"]
    assert numbers["events_consumed"] == numbers["in_db"], "order_created not consumed exactly once in effect"
    assert numbers["leaked_units"] == 0


def test_broker_restart_during_500_creates(fault_stack):
    customer, product = seed(fault_stack)
    load = Load(fault_stack, customer, product)
    load.start(500, pause=0.01)
    time.sleep(1.5)
    start_again = support.restart_broker()
    time.sleep(3)
    during_outage = requests.get(fault_stack.base_url + "/health", timeout=15)
    start_again()
    load.wait()
    assert during_outage.status_code == 503

    # Callers succeed again within seconds of the broker's return.
    assert wait_until(lambda: requests.post(load.url, json=load.body, headers=load.headers,
                                            timeout=15).status_code == 201, timeout=20)
    wait_until(_settled(fault_stack, customer, product), timeout=60)
    numbers = summary("broker restart", load, fault_stack, customer, product)
    assert numbers["503"] > 0, "callers during the outage should get a quick 503"
    assert numbers["201"] > 0
    _assert_nothing_lost_or_doubled(numbers, load, fault_stack)


def test_kill_9_order_service_during_load(fault_stack):
    customer, product = seed(fault_stack)
    load = Load(fault_stack, customer, product)
    load.start(300, pause=0.01)
    time.sleep(1.0)
    fault_stack.kill("orders", signal.SIGKILL).wait()
    time.sleep(1.5)
    fault_stack.start("orders")
    load.wait()
    # After the reconciler's grace, no reservation outlives an order that never committed.
    wait_until(_settled(fault_stack, customer, product), timeout=60)
    numbers = summary("kill -9 order_service", load, fault_stack, customer, product)
    assert numbers["201"] > 0
    _assert_nothing_lost_or_doubled(numbers, load, fault_stack)


def test_postgres_restart_during_load(fault_stack):
    customer, product = seed(fault_stack)
    load = Load(fault_stack, customer, product)
    load.start(300, pause=0.01)
    time.sleep(1.0)
    support.restart_postgres(down_seconds=2)
    load.wait()
    assert wait_until(lambda: requests.post(load.url, json=load.body, headers=load.headers,
                                            timeout=15).status_code == 201, timeout=30)
    wait_until(_settled(fault_stack, customer, product), timeout=60)
    numbers = summary("postgres restart", load, fault_stack, customer, product)
    assert numbers["503"] > 0, "the outage was not seen at all"
    _assert_nothing_lost_or_doubled(numbers, load, fault_stack)


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
