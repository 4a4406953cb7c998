"""Every process on its own RabbitMQ user (scripts/rabbitmq_users.py): the stack works end to end on
them, and a user cannot do what its process must not.

On the machine's broker, in a throwaway vhost with throwaway users (their names prefixed, since
users are broker-wide), made with rabbitmqctl exactly as `make cluster` makes them on its nodes:
permissions are per vhost and checked alike on a cluster's nodes (quorum queues need none more).
"""
import time
import uuid

import pytest
from amqp.exceptions import AccessRefused
from kombu import Connection, Exchange, Queue

from scripts import rabbitmq_users
from tests import harness, support
from tests.harness.broker import _run as rabbitmqctl
from tests.integration.conftest import ApiClient, stack_env


@pytest.fixture(scope="module")
def users():
    """{user: AMQP URI with its credentials} in a throwaway vhost, the users deleted afterwards."""
    vhost, vhost_uri = support.create_vhost()
    prefix = f"t{uuid.uuid4().hex[:6]}-"
    made = {}
    try:
        made = rabbitmq_users.apply(rabbitmqctl, vhost=vhost, prefix=prefix)
        yield {user: rabbitmq_users.with_user(vhost_uri, prefix + user, secret) for user, secret in made.items()}
    finally:
        for user in made:
            rabbitmqctl("delete_user", prefix + user)
        support.delete_vhost(vhost)


@pytest.fixture(scope="module")
def own_users_stack(users, database):
    """The Procfile's processes, each connecting as its own user."""
    env = stack_env(users[rabbitmq_users.OPERATOR], database[1])
    stack = harness.ProcessStack(env, support.OUTPUT / "rabbitmq_users")
    for process in stack.commands:
        stack.envs[process] = {"AMQP_URI": users[rabbitmq_users.user_of(process)]}
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def test_an_order_goes_end_to_end_with_every_process_on_its_own_user(own_users_stack, database):
    api = ApiClient(own_users_stack.base_url)
    customer = api.create_customer()
    product = api.create_product(unit_price="10.00", stock=3)
    created = api.post("/api/v1/orders", json={"customer_id": customer["id"],
                                               "items": [{"sku": product["sku"], "quantity": 2}]})
    assert created.status_code == 201, created.text
    assert api.get(f"/api/v1/products/{product['sku']}").json()["reserved"] == 2
    # order_created reached customer_service's handler queue (a consumer on its own user).
    deadline = time.monotonic() + 15
    while support.query(database[0], "SELECT orders_count FROM customers.customers WHERE id = %s",
                        customer["id"]) != [(1,)]:
        assert time.monotonic() < deadline, "order_created never reached customer_service"
        time.sleep(0.2)
    assert api.get("/health").json()["status"] == "ok"


def _refused(uri, act):
    with Connection(uri) as connection:
        channel = connection.channel()
        with pytest.raises(AccessRefused):
            act(channel)


def _publish(exchange, routing_key):
    def act(channel):
        channel.basic_publish(channel.prepare_message(b"{}"), exchange=exchange, routing_key=routing_key)
        channel.basic_qos(0, 1, False)  # a round trip: the broker's refusal (it closes the channel) comes back
    return act


def _reply_queue(owner):
    """A queue named as `owner`'s reply queues are (so only the binding is at stake)."""
    return f"rpc.reply-{owner}-{uuid.uuid4()}"


def test_the_gateway_user_can_only_call(users, own_users_stack):
    gateway = users["gateway"]
    rpc = Exchange("nameko-rpc", type="topic", durable=True)
    # Not another's queue: neither consume order_service's requests nor declare a queue of its name.
    _refused(gateway, lambda channel: channel.basic_consume("rpc-order_service", callback=print))
    _refused(gateway, lambda channel: Queue("rpc-order_service", durable=False)(channel).declare())
    # Not events: nothing published to, or read from, a service's event exchange.
    _refused(gateway, _publish("order_service.events", "order_created"))
    _refused(gateway, lambda channel: Queue(_reply_queue("standalone_rpc_proxy"), exchange=Exchange(
        "order_service.events", type="topic", durable=True), routing_key="order_created")(channel).declare())
    # Its own reply queues, yes; bound to order_service's requests (to steal them), no.
    _refused(gateway, lambda channel: Queue(_reply_queue("standalone_rpc_proxy"), exchange=rpc,
                                            routing_key="order_service.*", auto_delete=True)(channel).declare())
    # Requests only to services of the registry; no dead letters, no default exchange.
    _refused(gateway, _publish("nameko-rpc", "some_other_service.get_order"))
    _refused(gateway, lambda channel: channel.basic_get("dead-letters"))
    _refused(gateway, _publish("", "rpc-order_service"))


def test_webhook_service_binds_and_unbinds_its_handler_queues_on_its_user(users, own_users_stack):
    # What it does at start, on its timer, and when a webhook is created or deleted (webhook_service/bindings.py).
    queue = "evt-order_service-order_created--webhook_service.on_order_created"
    with Connection(users["webhook_service"]) as connection:
        channel = connection.channel()
        channel.queue_bind(queue=queue, exchange="order_service.events", routing_key="order_created")
        channel.queue_unbind(queue=queue, exchange="order_service.events", routing_key="order_created")
    # Not another service's queue to its events.
    _refused(users["webhook_service"], lambda channel: channel.queue_bind(
        queue="evt-order_service-order_created--customer_service.on_order_created", exchange="order_service.events",
        routing_key="order_created"))


def test_a_service_user_keeps_to_its_own(users, own_users_stack):
    # webhook_service calls no service, and consumes its own queues only.
    _refused(users["webhook_service"], _publish("nameko-rpc", "order_service.update_status"))
    _refused(users["webhook_service"], lambda channel: channel.basic_consume(
        "evt-order_service-order_created--customer_service.on_order_created", callback=print))
    # order_service publishes its own events, not inventory_service's.
    _refused(users["order_service"], _publish("inventory_service.events", "stock_reserved"))
    _refused(users["order_service"], lambda channel: channel.basic_consume("rpc-customer_service", callback=print))
    # inventory_service handles no events: no retry route through the default exchange.
    _refused(users["inventory_service"], _publish("", "rpc-order_service"))
