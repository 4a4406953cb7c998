"""One harness for throwaway stacks, shared by the tests and the bench: Postgres databases,
RabbitMQ virtual hosts, free ports, and the stack's processes (honcho, a gateway alone, one by one).
"""
from tests.harness.broker import create_vhost, delete_vhost, queue_bindings, queue_consumers, queue_messages
from tests.harness.databases import alembic, connect, create_database, database_url, drop_database, migrate, query
from tests.harness.ports import free_metrics_base, free_node_port, free_port
from tests.harness.processes import (
    ROOT,
    Gateway,
    Process,
    ProcessStack,
    Stack,
    descendants,
    procfile,
    venv_env,
    wait_http,
)

__all__ = ["ROOT", "Gateway", "Process", "ProcessStack", "Stack", "alembic", "connect", "create_database",
           "create_vhost", "database_url", "delete_vhost", "descendants", "drop_database", "free_metrics_base",
           "free_node_port", "free_port", "migrate", "procfile", "query", "queue_bindings", "queue_consumers",
           "queue_messages", "venv_env", "wait_http"]
