"""On a 3-node RabbitMQ cluster with two instances of every service and of the gateway:
a broker node stopped under load, then an order_service instance killed (`pytest -k cluster`).

Each prints `[cluster: <fault>] sent= 201= 503= 504= orders_in_db= events_consumed=
duplicates= ghosts= lost= ...` and the share of the creates each order_service
instance handled.
"""
import re
import signal
import time
from collections import Counter

import pytest
import requests

from common.contract.services import BY_NAME
from common.contract.services import SERVICES as REGISTRY
from scripts import rabbitmq_users
from scripts.rabbitmq_nodes import cluster_nodes, failover_uri, start_cluster
from tests import support
from tests.faults.conftest import create_load_through, stack_env

INSTANCES = ("1", "2")
# Procfile process name -> service name
SERVICES = {service.process: service.name for service in REGISTRY}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = cluster_nodes(3, support.free_node_port(nodes=3), tmp_path_factory.mktemp("rabbitmq"))
    try:
        start_cluster(nodes)
        yield nodes
    finally:
        for node in reversed(nodes):
            node.stop()


def _rotated(nodes, start):
    """The failover URI starting at node `start`: instances spread their connections."""
    return failover_uri(nodes[start:] + nodes[:start])


@pytest.fixture
def cluster_stack(cluster, request):
    db_name, db_url = support.create_database()
    support.alembic(db_url, "upgrade", "head")
    # Ten service processes share Postgres's 100 connections: five workers each.
    # Every process connects as its own user, as with `make run CLUSTER=1`; the test's own
    # connections (the stack's default AMQP_URI) are the operator's.
    secrets = rabbitmq_users.apply(lambda *args: cluster[0].ctl(*args).stdout)
    env = stack_env(rabbitmq_users.with_user(_rotated(cluster, 0), rabbitmq_users.OPERATOR,
                                             secrets[rabbitmq_users.OPERATOR]), db_url)
    env.update({"AMQP_QUORUM_QUEUES": "true", "MAX_WORKERS": "5"})
    stack = support.ProcessStack(env, support.OUTPUT / "faults" / request.node.name)
    stack.db_name = db_name
    procfile = set(stack.commands)
    second_metrics = support.free_metrics_base()
    for process in procfile & set(SERVICES):
        stack.add(f"{process}_2", process, METRICS_PORT=second_metrics)
    stack.add("gateway_2", "gateway", GATEWAY_PORT=support.free_port())
    for name in list(stack.commands):
        user = rabbitmq_users.user_of(name)
        if user is not None:
            first_node = 0 if not name.endswith("_2") else (2 if name == "gateway_2" else 1)
            uri = rabbitmq_users.with_user(_rotated(cluster, first_node), user, secrets[user])
            stack.envs[name] = {**stack.envs.get(name, {}), "AMQP_URI": uri}
    stack.gateways = [stack.base_url, f"http://127.0.0.1:{stack.envs['gateway_2']['GATEWAY_PORT']}"]
    stack.metrics_bases = {"1": int(env["METRICS_PORT"]), "2": second_metrics}
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        support.drop_database(db_name)


def _creates_handled(stack, instances=INSTANCES):
    """{instance: create_order / create_orders calls that order_service instance answered}, from its metrics."""
    handled = {}
    for instance in instances:
        base = stack.metrics_bases[instance]
        text = requests.get(f"http://127.0.0.1:{base + BY_NAME['order_service'].metrics_offset}/metrics", timeout=10).text
        handled[instance] = int(sum(float(value) for value in re.findall(
            r'^rpc_server_calls_total\{[^}]*method="create_orders?"[^}]*\} (\S+)$', text, re.MULTILINE)))
    return handled


def _busiest_node(nodes):
    """The running node that holds the most client connections."""
    # The cluster lists every node's connections; the port a connection came in on names its node.
    ports = nodes[0].ctl("-q", "list_connections", "port", "--no-table-headers").stdout.split()
    busiest, _ = Counter(int(port) for port in ports).most_common(1)[0]
    return next(node for node in nodes if node.port == busiest)


def _report_split(name, stack, instances=INSTANCES):
    handled = _creates_handled(stack, instances)
    print(f"[cluster: {name}] creates handled per order_service instance: "
          + " ".join(f"order_service#{instance}={count}" for instance, count in handled.items()))
    return handled


def _connected_users(nodes):
    return set(nodes[0].ctl("-q", "list_connections", "user", "--no-table-headers").stdout.split())


def test_cluster_node_stop_under_load(cluster, cluster_stack):
    def stop_and_start_the_busiest_node():
        node = _busiest_node(cluster)
        print(f"\n[cluster: node stop] stopping {node.node}")
        node.stop_app()
        time.sleep(5)
        node.start_app()

    create_load_through("cluster: node stop", cluster_stack, stop_and_start_the_busiest_node,
                        gateways=cluster_stack.gateways)
    handled = _report_split("node stop", cluster_stack)
    assert all(count > 0 for count in handled.values()), "one instance did all the work"
    # Each process was on the broker as its own user, as with make run CLUSTER=1.
    expected = {rabbitmq_users.user_of(name) for name in cluster_stack.commands} - {None}
    missing = expected - _connected_users(cluster)
    assert not missing, f"not connected as their own users: {missing}"


def test_cluster_kill_9_one_order_service(cluster, cluster_stack):
    def kill_one_instance():
        cluster_stack.kill("orders_2", signal.SIGKILL).wait()

    create_load_through("cluster: kill -9 order_service#2", cluster_stack, kill_one_instance,
                        gateways=cluster_stack.gateways)
    # The survivor took over: it handled creates, including the dead one's redelivered requests.
    assert _report_split("kill -9 order_service#2", cluster_stack, instances=("1",))["1"] > 0
