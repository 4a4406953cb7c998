"""Each service's probes on its metrics port (GET /health/live, GET /health/ready), which
the Kubernetes Deployments (ops/k8s/) use: live while the process serves, ready while its
broker consumer is connected and its database answers."""
import shlex
import subprocess
import time

import pytest
import requests

from common.contract.services import BY_NAME, SERVICES
from scripts.rabbitmq_nodes import Node, new_cookie
from tests import support
from tests.integration.conftest import stack_env

pytestmark = pytest.mark.integration


def probe(port, path):
    response = requests.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    return response.status_code, response.json()


def wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except requests.RequestException:
            pass
        time.sleep(0.3)
    return predicate()


def test_every_service_is_live_and_ready_on_its_metrics_port(stack):
    base = int(stack.env["METRICS_PORT"])
    for service in SERVICES:
        port = base + service.metrics_offset
        assert probe(port, "/health/live") == (200, {"status": "ok"}), service.name
        assert probe(port, "/health/ready") == (
            200, {"status": "ok", "checks": {"broker": "ok", "database": "ok"}}), service.name
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert metrics.status_code == 200 and "rpc_server_calls_total" in metrics.text, service.name


@pytest.fixture
def own_node(tmp_path):
    """A RabbitMQ node of the test's own: stopping it touches no other stack."""
    node = Node("oms-probes", support.free_node_port(), tmp_path)
    node.cookie = new_cookie()
    node.start(node.cookie)
    yield node
    node.stop()


def test_ready_turns_false_while_the_broker_is_stopped(own_node, database, tmp_path):
    env = stack_env(own_node.amqp_uri, database[1])
    service = BY_NAME["customer_service"]
    port = int(env["METRICS_PORT"]) + service.metrics_offset
    support.OUTPUT.mkdir(exist_ok=True)
    with open(support.OUTPUT / "service_health.log", "wb") as log:
        process = subprocess.Popen(shlex.split(service.command), cwd=support.ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: probe(port, "/health/ready")[0] == 200, 60), "never ready"

        own_node.stop()
        assert wait_for(lambda: probe(port, "/health/ready") == (
            503, {"status": "unavailable", "checks": {"broker": "unreachable", "database": "ok"}}), 30)
        assert probe(port, "/health/live") == (200, {"status": "ok"}), "a broker outage must not fail liveness"

        own_node.start(own_node.cookie)
        assert wait_for(lambda: probe(port, "/health/ready")[0] == 200, 60), "not ready again after the broker"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
