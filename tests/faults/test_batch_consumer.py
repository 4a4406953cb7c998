"""A batch consumer (customer_service's order_created, common/kit/consumers.py) on the real
broker and database: a backlog is handled in fewer transactions than events, a poison event
among good ones is retried and dead-lettered alone, and kill -9 in the middle of a burst
leaves every event counted once."""
import signal
import time
import uuid

import requests
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families

from common.contract import services
from scripts import dead_letters
from tests import support
from tests.faults.conftest import seed
from tests.support import wait_until

QUEUE = "evt-order_service-order_created--customer_service.on_order_created"


def _envelope(customer_id, event_id=None):
    return {"event_id": event_id or str(uuid.uuid4()), "type": "order_created",
            "occurred_at": "2026-11-21T00:00:00+00:00", "request_id": uuid.uuid4().hex,
            "data": {"id": str(uuid.uuid4()), "customer_id": customer_id}}


def _publish(amqp_uri, envelopes):
    """Straight to the consumer's queue (no other service's consumer sees them), as the outbox sends them."""
    with Connection(amqp_uri) as connection:
        producer = connection.Producer()
        for envelope in envelopes:
            producer.publish(envelope, exchange="", routing_key=QUEUE, serializer="json", delivery_mode=2,
                             headers={"nameko.request_id": envelope["request_id"]})


def _counted(stack, customer):
    return support.query(stack.db_name, "SELECT orders_count FROM customers.customers WHERE id = %s",
                         customer["id"])[0][0]


def _recorded(stack):
    return support.query(stack.db_name, "SELECT count(*) FROM customers.processed_events "
                                        "WHERE handler = 'count_order'")[0][0]


def _batches(stack):
    """(workers, events) of the consumer since its process started, from its metrics."""
    port = services.metrics_port("customer_service", int(stack.env["METRICS_PORT"]))
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {sample.name: sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.labels.get("handler") == "on_order_created"}
    return int(samples.get("event_batch_size_count", 0)), int(samples.get("event_batch_size_sum", 0))


def _backlog_then_start(stack, envelopes):
    """Publish `envelopes` while customer_service is stopped, then start it: it meets them as a backlog."""
    stack.kill("customers", signal.SIGTERM).wait(timeout=30)
    _publish(stack.amqp_uri, envelopes)
    stack.start("customers")


def test_a_poison_event_in_a_batch_is_dead_lettered_alone_and_its_neighbours_count_once(fault_stack):
    customer, _ = seed(fault_stack)
    good = [_envelope(customer["id"]) for _ in range(200)]
    poison = _envelope(customer["id"], event_id="not-an-event-id")  # Postgres refuses it: the batch fails
    _backlog_then_start(fault_stack, [*good[:100], poison, *good[100:]])

    assert wait_until(lambda: _counted(fault_stack, customer) == len(good), timeout=30)
    letters = lambda: dead_letters.list_letters(fault_stack.amqp_uri)
    assert wait_until(lambda: len(letters()) == 1, timeout=30), "never dead-lettered"
    [letter] = letters()
    assert (letter["queue"], letter["retries"], letter["body"]["event_id"]) == (QUEUE, 3, poison["event_id"])
    time.sleep(1)
    assert (_counted(fault_stack, customer), _recorded(fault_stack)) == (len(good), len(good))

    workers, events = _batches(fault_stack)
    # Handled: every good event once, the poison one five times (in the batch that failed,
    # then alone in its rerun one at a time and its three retries), its batch's neighbours
    # twice; and still in fewer workers (transactions) than there are good events.
    assert events >= len(good) + 6 and workers < len(good), (workers, events)
    log = (fault_stack.log_dir / "customers.log").read_text()
    assert "handling them one at a time" in log
    print(f"\n[poison in a batch] good={len(good)} counted={len(good)} dead_lettered=1 "
          f"retries={letter['retries']} workers={workers} events_handled={events}")


def test_kill_9_in_the_middle_of_a_burst_counts_every_event_once(fault_stack):
    customer, _ = seed(fault_stack)
    burst = [_envelope(customer["id"]) for _ in range(3000)]
    _backlog_then_start(fault_stack, burst)
    assert wait_until(lambda: _counted(fault_stack, customer) >= 300, timeout=30, interval=0.02)
    fault_stack.kill("customers", signal.SIGKILL).wait()
    at_kill = _counted(fault_stack, customer)
    assert at_kill < len(burst), "the burst was over before the kill"
    fault_stack.start("customers")

    assert wait_until(lambda: _counted(fault_stack, customer) == len(burst), timeout=60)
    time.sleep(1)
    assert (_counted(fault_stack, customer), _recorded(fault_stack)) == (len(burst), len(burst))
    workers, events = _batches(fault_stack)  # the restarted process's
    # Redelivered: what the killed process had not acked, counted or not.
    assert events >= len(burst) - at_kill and workers < events / 3, (workers, events)
    print(f"\n[kill -9 mid-burst] events={len(burst)} counted_at_kill={at_kill} counted={len(burst)} "
          f"after_restart: workers={workers} events_handled={events}")
