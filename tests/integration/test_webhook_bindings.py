"""Only the event types some webhook wants reach webhook_service (webhook_service/bindings.py): each
handler's queue is bound to its source's exchange while a webhook wants its type, as the broker
itself says (rabbitmqctl list_bindings).

On the session's stack (WEBHOOK_BINDINGS_INTERVAL_SECONDS 1, WEBHOOK_UNBIND_GRACE_SECONDS 5), and on
a webhook_service of its own (its own vhost and database) for what a restart does.
"""
import json
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import unquote, urlsplit

import pytest
from kombu import Connection, Exchange, Queue

from common.contract.events import WEBHOOK_EVENTS
from tests import harness, support
from tests.integration.conftest import WEBHOOK_UNBIND_GRACE_SECONDS, stack_env

WEBHOOKS = "/api/v1/webhooks"
SOURCE = {event_type: source for source, types in WEBHOOK_EVENTS.items() for event_type in types}


def _queue(event_type):
    return f"evt-{SOURCE[event_type]}-{event_type}--webhook_service.on_{event_type}"


def _vhost(amqp_uri):
    return unquote(urlsplit(amqp_uri).path.lstrip("/"))


def _routed(amqp_uri, event_type):
    """Whether the broker routes `event_type` to webhook_service's handler of it (and nothing else there)."""
    bindings = harness.queue_bindings(_vhost(amqp_uri), _queue(event_type))
    assert bindings in ([], [(f"{SOURCE[event_type]}.events", event_type)]), bindings
    return bool(bindings)


def _publish(amqp_uri, event_type, occurred_at=None):
    """An event as its source emits it (the envelope, on `<source>.events`); the envelope."""
    envelope = {"event_id": str(uuid.uuid4()), "type": event_type, "request_id": None,
                "occurred_at": (occurred_at or datetime.now(timezone.utc)).isoformat(),
                "data": {"id": str(uuid.uuid4())}}
    with Connection(amqp_uri) as connection:
        connection.Producer().publish(envelope, exchange=Exchange(f"{SOURCE[event_type]}.events", type="topic",
                                                                  durable=True),
                                      routing_key=event_type, serializer="json", delivery_mode=2)
    return envelope


def _unwanted_type(api):
    """An event type no webhook of the session's stack subscribes to (others' tests make some)."""
    wanted, cursor = set(), None
    while True:
        page = api.get(WEBHOOKS, params={"limit": 100, **({"cursor": cursor} if cursor else {})}).json()
        wanted.update(t for hook in page["items"] for t in hook["event_types"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    # The tests here publish its events by hand: types no other service consumes (which would choke on them).
    free = [t for t in ("product_updated", "stock_back") if t not in wanted]
    if not free:
        pytest.skip("the event types these tests can publish have webhooks on this stack")
    return free[0]


def _make_hook(api, webhook_receiver, event_type, **fields):
    path = f"/hooks/{uuid.uuid4().hex}"
    response = api.post(WEBHOOKS, json={"url": webhook_receiver.url(path), "event_types": [event_type], **fields})
    assert response.status_code == 201, response.text
    return response.json(), path


def test_an_event_type_reaches_webhook_service_only_while_a_webhook_wants_it(api, stack, webhook_receiver):
    amqp_uri = stack.env["AMQP_URI"]
    event_type = _unwanted_type(api)
    # No webhook wants it: its queue (declared, consumed) is bound to nothing, so the broker drops its events.
    assert support.wait_until(lambda: not _routed(amqp_uri, event_type), timeout=WEBHOOK_UNBIND_GRACE_SECONDS + 15)
    assert harness.queue_consumers(_vhost(amqp_uri), _queue(event_type)) == 1

    hook, path = _make_hook(api, webhook_receiver, event_type)
    try:
        assert _routed(amqp_uri, event_type)  # by the time the create answers
        delivered = _publish(amqp_uri, event_type)  # emitted right after it: delivered
        [request] = webhook_receiver.wait_for(path)
        assert json.loads(request.body)["event_id"] == delivered["event_id"]
    finally:
        assert api.delete(f"{WEBHOOKS}/{hook['id']}").status_code == 204
    assert not _routed(amqp_uri, event_type)  # by the time the delete answers
    _publish(amqp_uri, event_type)
    time.sleep(1.5)
    assert len(webhook_receiver.requests(path)) == 1


def test_a_type_stays_routed_for_the_grace_after_its_last_webhook_is_disabled(api, stack, webhook_receiver):
    amqp_uri = stack.env["AMQP_URI"]
    event_type = _unwanted_type(api)
    hook, path = _make_hook(api, webhook_receiver, event_type)
    try:
        occurred = datetime.now(timezone.utc)  # while it was enabled...
        disabled = api.patch(f"{WEBHOOKS}/{hook['id']}", json={"enabled": False})
        assert disabled.status_code == 200, disabled.text
        late = _publish(amqp_uri, event_type, occurred_at=occurred)  # ... and reaching the broker after that
        # Recorded for it (pending: a disabled webhook's deliveries wait for it to be enabled).
        assert support.wait_until(lambda: [d["event_id"] for d in api.get(f"{WEBHOOKS}/{hook['id']}/deliveries").json()
                                    ["items"]] == [late["event_id"]])
        assert support.wait_until(lambda: not _routed(amqp_uri, event_type), timeout=WEBHOOK_UNBIND_GRACE_SECONDS + 15)
        # Enabled again: routed again by the time the PATCH answers, and its waiting delivery is sent.
        assert api.patch(f"{WEBHOOKS}/{hook['id']}", json={"enabled": True}).status_code == 200
        assert _routed(amqp_uri, event_type)
        [request] = webhook_receiver.wait_for(path)
        assert json.loads(request.body)["event_id"] == late["event_id"]
    finally:
        api.delete(f"{WEBHOOKS}/{hook['id']}")


# -- a webhook_service of its own, restarted -------------------------------------------------------------

@pytest.fixture
def lone_webhooks():
    """webhook_service alone (harness.ProcessStack's "webhooks"), on a vhost and a database of its own."""
    vhost, amqp_uri = support.create_vhost()
    db_name, db_url = support.create_database()
    harness.migrate(db_url)
    processes = harness.ProcessStack(stack_env(amqp_uri, db_url), support.OUTPUT / "webhook_bindings")
    try:
        yield processes
    finally:
        processes.stop()
        support.delete_vhost(vhost)
        support.drop_database(db_name)


def _start(processes):
    processes.start("webhooks")
    vhost, queue = _vhost(processes.env["AMQP_URI"]), _queue("order_created")
    assert support.wait_until(lambda: harness.queue_consumers(vhost, queue), timeout=90), "webhook_service did not start"


def _stop(processes):
    processes.kill("webhooks", sig=15).wait(timeout=30)


def test_a_restart_binds_what_a_webhook_wants_and_unbinds_what_an_older_version_bound(lone_webhooks):
    amqp_uri = lone_webhooks.env["AMQP_URI"]
    # As the version before this one left the broker: every handler's queue bound to its event.
    with Connection(amqp_uri) as connection:
        channel = connection.channel()
        for event_type in ("order_created", "stock_low"):
            exchange = Exchange(f"{SOURCE[event_type]}.events", type="topic", durable=True)
            Queue(_queue(event_type), exchange=exchange, routing_key=event_type, durable=True,
                  queue_arguments={"x-dead-letter-exchange": "dead-letters"})(channel).declare()
    assert _routed(amqp_uri, "order_created") and _routed(amqp_uri, "stock_low")

    _start(lone_webhooks)
    assert support.wait_until(lambda: not (_routed(amqp_uri, "order_created") or _routed(amqp_uri, "stock_low")))
    with support.rpc(lone_webhooks.env) as cluster:
        hook = cluster.webhook_service.create_webhook({"url": "http://127.0.0.1:9/in",
                                                       "event_types": ["order_created"]})
    assert _routed(amqp_uri, "order_created") and not _routed(amqp_uri, "stock_low")

    _stop(lone_webhooks)
    assert _routed(amqp_uri, "order_created")  # stopping unbinds nothing: events wait in the queue
    # A binding lost meanwhile (say, a broker's definitions restored from before) is back at the start.
    with Connection(amqp_uri) as connection:
        connection.channel().queue_unbind(queue=_queue("order_created"), exchange="order_service.events",
                                          routing_key="order_created")
    _start(lone_webhooks)
    assert support.wait_until(lambda: _routed(amqp_uri, "order_created"))
    assert not _routed(amqp_uri, "stock_low")

    with support.rpc(lone_webhooks.env) as cluster:
        cluster.webhook_service.delete_webhook(hook["id"])
    assert not _routed(amqp_uri, "order_created")  # no grace after a delete: it wants nothing from then on
