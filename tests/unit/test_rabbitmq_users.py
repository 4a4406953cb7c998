"""The RabbitMQ users (scripts/rabbitmq_users.py): one place, and compose and CLUSTER=1 follow it.
That the permissions are enough, and no more, is tests/integration/test_rabbitmq_users.py."""
import json
import re
from pathlib import Path

import yaml

from common.contract.services import GATEWAY, SERVICES
from scripts import rabbitmq_users

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = {GATEWAY: GATEWAY, **{service.name: service.name for service in SERVICES}}


def test_the_committed_definitions_are_what_the_module_writes():
    committed = json.loads((ROOT / "ops/rabbitmq/definitions.json").read_text())
    assert committed == rabbitmq_users.definitions(environ={}), \
        "run: python -m scripts.rabbitmq_users definitions > ops/rabbitmq/definitions.json"


def test_every_process_has_a_user_and_only_the_operator_is_an_administrator():
    definitions = rabbitmq_users.definitions(environ={})
    assert [user["name"] for user in definitions["users"]] == [rabbitmq_users.OPERATOR, *PROCESSES]
    assert [user["name"] for user in definitions["users"] if user["tags"]] == [rabbitmq_users.OPERATOR]
    assert "guest" not in json.dumps(definitions)


def test_what_the_services_declare_is_read_off_their_classes():
    order = rabbitmq_users.declared("order_service")
    assert order.calls == ("customer_service", "inventory_service")
    assert ("customer_service", "customer_created", "on_customer_created") in order.handlers
    assert rabbitmq_users.declared("inventory_service").handlers == ()


def test_the_regexes_match_nameko_s_names_and_nothing_of_another_process():
    grants = {grant.user: grant for grant in rabbitmq_users.grants()}
    order = grants["order_service"]
    reply = "rpc.reply-order_service-0b7c3a52-7f2e-4a8e-9a51-3b1e0d2f6c11"
    for name in ("nameko-rpc", "rpc-order_service", reply, "order_service.events", "customer_service.events",
                 "evt-customer_service-customer_created--order_service.on_customer_created",
                 "evt-customer_service-customer_created--order_service.on_customer_created.retry", "dead-letters"):
        assert re.search(order.configure, name), name
    for name in ("rpc-customer_service", "inventory_service.events", "rpc.reply-standalone_rpc_proxy-x",
                 "evt-order_service-order_created--customer_service.on_order_created"):
        assert not re.search(order.configure, name) and not re.search(order.read, name), name
    assert not re.search(order.write, "inventory_service.events")
    assert re.search(order.rpc_publish, "inventory_service.reserve")
    assert not re.search(order.rpc_publish, "invoice_service.get_invoice")
    gateway = grants[GATEWAY]
    assert not re.search(gateway.rpc_bind, "order_service.*") and not re.search(gateway.write, "order_service.events")


def test_compose_gives_each_process_its_own_user():
    for path in ("docker-compose.yml", "docker-compose.cluster.yml"):
        services = yaml.safe_load((ROOT / path).read_text())["services"]
        for name, service in services.items():
            uri = (service.get("environment") or {}).get("AMQP_URI")
            if uri is not None:
                user = PROCESSES.get(name.removesuffix("-2"))
                assert {part.split("://")[1].split(":")[0] for part in uri.split(";")} == {user}, (path, name)
                assert f"AMQP_PASSWORD_{user.upper()}" in uri, (path, name)


def test_cluster_procfile_names_each_process_s_user():
    lines = rabbitmq_users.cluster_procfile(["orders: python -m x", "gateway: gunicorn y"],
                                            "amqp://guest:guest@127.0.0.1:5681/;amqp://a:b@127.0.0.1:5682/",
                                            "amqp://guest:guest@127.0.0.1:5682/", 8001)
    assert lines[0] == ("orders: AMQP_URI='amqp://order_service:dev-only-order_service-password@127.0.0.1:5681/;"
                        "amqp://order_service:dev-only-order_service-password@127.0.0.1:5682/' python -m x")
    assert lines[1].startswith("orders_2: AMQP_URI='amqp://order_service:") and "METRICS_PORT=9200" in lines[1]
    assert lines[3].startswith("gateway_2: AMQP_URI='amqp://gateway:") and "GATEWAY_PORT=8001" in lines[3]
