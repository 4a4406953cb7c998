"""What the tests share: the test stack's settings, tokens, an event listener, and the harness
(tests/harness: throwaway databases, vhosts, processes) with the tests' defaults.

Everything is real: the services and the gateway run as their own processes
from the Procfile (exactly what `make run` starts), against the machine's
RabbitMQ in a throwaway virtual host and Postgres in a throwaway database.
"""
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psycopg2  # noqa: F401 (tests connect with support.psycopg2 and PG_DSN)
from kombu import Connection, Exchange, Queue

from tests import harness
from tests.harness import ROOT
from tests.harness import Gateway as Gateway
from tests.harness import ProcessStack as ProcessStack
from tests.harness import Stack as Stack
from tests.harness import alembic as alembic
from tests.harness import free_metrics_base as free_metrics_base
from tests.harness import free_node_port as free_node_port
from tests.harness import free_port as free_port
from tests.servers.smtp import SmtpServer as SmtpServer

OUTPUT = ROOT / "test-output"
BROKER_HOST = os.environ.get("TEST_BROKER_HOST", "127.0.0.1")
BROKER_URI = f"amqp://guest:guest@{BROKER_HOST}:5672/"
PG_DSN = os.environ.get("TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres")
PG_URL_BASE = os.environ.get("TEST_PG_URL_BASE", "postgresql+psycopg2://postgres@127.0.0.1:5432")
# The stack under test gets its own secret, so tokens prove the configured one is used.
JWT_SECRET = "test-only-jwt-secret-for-the-test-stack"
CALLER_SIGNING_KEY = "test-only-caller-signing-key-for-the-test-stack"  # not config.yml's: the stack must use it
ADMIN_CALLER = {"sub": "ops-tester", "role": "admin"}
TAX_RATE = "0.19"
MAIL_FROM = "Test shop <orders@shop.example>"
STAFF_EMAILS = ("stock@shop.example", "Warehouse <warehouse@shop.example>")
VAPID_SUBJECT = "mailto:push@shop.example"


def wait_until(check, timeout=20, interval=0.2):
    """Call `check` until it answers something truthy or `timeout` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def vapid_key():
    """(path of the test stacks' VAPID private key, made once, its public key as front ends get it)."""
    from py_vapid import Vapid

    from notification_service.channels import load_vapid, public_key

    path = OUTPUT / "vapid_private.pem"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Vapid()
        key.generate_keys()
        key.save_key(str(path))
    return path, public_key(load_vapid(str(path)))


def python_files():
    """The project's Python files, as paths from the root: every one git does not ignore,
    committed or not (a file deleted but not yet committed is not one)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return sorted({path for path in listed if (ROOT / path).exists()})


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# `--headless` itself comes from Playwright's headless=True; the user-data-dir is a fresh temporary one.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_or_skip():
    """Debian's chromium for Playwright; a test without it fails under CI=true, else skips."""
    import pytest

    if shutil.which(CHROMIUM) or Path(CHROMIUM).exists():
        return CHROMIUM
    message = f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)
def poppler(tool):
    """pdftotext / pdftoppm / pdfinfo (Debian's poppler-utils); a test without it fails under CI=true, else skips."""
    import pytest

    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (apt-get install poppler-utils; .ci/run does it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def pdf_text(pdf_bytes, tmp_path):
    """The text a reader finds in a PDF, laid out as on the page (poppler's pdftotext)."""
    path = tmp_path / "invoice.pdf"
    path.write_bytes(pdf_bytes)
    return subprocess.run([poppler("pdftotext"), "-layout", str(path), "-"], capture_output=True, text=True,
                          check=True).stdout



def token(role="admin", customer_id=None, secret=JWT_SECRET, **kwargs):
    from common.contract.caller import issue_token

    sub = f"customer:{customer_id}" if role == "customer" else f"{role}-tester"
    return issue_token(secret, sub, role, customer_id, **kwargs)


def bearer(role="admin", customer_id=None, **kwargs):
    return {"Authorization": f"Bearer {token(role, customer_id, **kwargs)}"}


# ---- the harness with the tests' defaults ------------------------------------

def rpc(env, caller=ADMIN_CALLER, timeout=10):
    """A standalone RPC proxy (a context manager) into the stack of `env`, its calls carrying
    `caller` signed with the stack's CALLER_SIGNING_KEY, as `make shell` makes them."""
    from common.contract.settings import load_settings
    from common.kit.rpc import SignedClusterRpcProxy

    config = load_settings(environ=env).nameko_config()
    return SignedClusterRpcProxy(config, context_data={"caller": caller}, timeout=timeout)


def create_vhost():
    """A fresh virtual host of the test broker: (name, AMQP URI)."""
    return harness.create_vhost(BROKER_URI, "oms-test")


def delete_vhost(name):
    harness.delete_vhost(name)


def create_database():
    """A fresh, empty database on the test server: (name, URL)."""
    name = f"oms_test_{uuid.uuid4().hex[:8]}"
    return name, harness.create_database(PG_URL_BASE, name)


def drop_database(name):
    harness.drop_database(harness.database_url(PG_URL_BASE, name))


def query(db_name, sql, *params):
    """Rows from the test database `db_name`, read directly (not through any service)."""
    return harness.query(harness.database_url(PG_URL_BASE, db_name), sql, *params)


class EventListener:
    """Collects events from a service's topic exchange (`<service>.events`).

    Bind before causing the event: the queue only sees what is published
    after it exists.
    """

    def __init__(self, amqp_uri, service, event_types):
        self.events = queue.Queue()
        self._connection = Connection(amqp_uri)
        exchange = Exchange(f"{service}.events", type="topic", durable=True)
        self._queue = Queue(f"test-listener-{uuid.uuid4().hex}", exchange=exchange,
                            bindings=None, exclusive=True, auto_delete=True)
        channel = self._connection.channel()
        exchange.declare(channel=channel)
        self._queue = self._queue.bind(channel)
        self._queue.declare()
        for event_type in event_types:
            self._queue.bind_to(exchange=exchange, routing_key=event_type)
        self._consumer = self._connection.Consumer(self._queue, callbacks=[self._on_message],
                                                   accept=["json"])
        self._consumer.consume()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _on_message(self, body, message):
        self.events.put(body)
        message.ack()

    def _drain(self):
        while not self._stop.is_set():
            try:
                self._connection.drain_events(timeout=0.2)
            except socket.timeout:
                continue

    def wait_for(self, predicate, timeout=10):
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            seen.append(event)
            if predicate(event):
                return event
        raise AssertionError(f"no matching event within {timeout}s; saw {seen}")

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        self._connection.release()


# ---- the machine's servers ---------------------------------------------------

def restart_broker():
    """Stop and start the RabbitMQ application (connections drop; durable state stays)."""
    ctl = shutil.which("rabbitmqctl")
    subprocess.run([ctl, "-q", "stop_app"], check=True, capture_output=True)
    return lambda: (subprocess.run([ctl, "-q", "start_app"], check=True, capture_output=True),
                    subprocess.run([ctl, "-q", "await_startup"], check=True, capture_output=True))


def postgres_cluster():
    version = sorted(os.listdir("/etc/postgresql"))[0] if os.path.isdir("/etc/postgresql") else None
    if version is None or shutil.which("pg_ctlcluster") is None:
        raise RuntimeError("restarting Postgres needs pg_ctlcluster (Debian's postgresql-common)")
    return version


def restart_postgres(down_seconds):
    version = postgres_cluster()
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
    subprocess.run(command + ["stop", "-m", "fast"], check=True, capture_output=True)
    time.sleep(down_seconds)
    subprocess.run(command + ["start"], check=True, capture_output=True)
