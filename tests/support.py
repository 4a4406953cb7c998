"""Starting and observing the real stack for integration tests.

Everything is real: the services and the gateway run as their own processes
from the Procfile (exactly what `make run` starts), against the machine's
RabbitMQ in a throwaway virtual host and Postgres in a throwaway database.
"""
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg2
import requests
from kombu import Connection, Exchange, Queue

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output"
BROKER_HOST = os.environ.get("TEST_BROKER_HOST", "127.0.0.1")
PG_DSN = os.environ.get("TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres")
PG_URL_BASE = os.environ.get("TEST_PG_URL_BASE", "postgresql+psycopg2://postgres@127.0.0.1:5432")
# The stack under test gets its own secret, so tokens prove the configured one is used.
def python_files():
    """The project's Python files, as paths from the root: every one git does not ignore,
    committed or not (a file deleted but not yet committed is not one)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return sorted({path for path in listed if (ROOT / path).exists()})


JWT_SECRET = "test-only-jwt-secret-for-the-test-stack"
TAX_RATE = "0.19"


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


MAIL_FROM = "Test shop <orders@shop.example>"


def token(role="admin", customer_id=None, secret=JWT_SECRET, **kwargs):
    from common.contract.caller import issue_token

    sub = f"customer:{customer_id}" if role == "customer" else f"{role}-tester"
    return issue_token(secret, sub, role, customer_id, **kwargs)


def bearer(role="admin", customer_id=None, **kwargs):
    return {"Authorization": f"Bearer {token(role, customer_id, **kwargs)}"}


def _outgoing_ports_start():
    """The first port the kernel hands out for outgoing connections (Linux's default if unreadable)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports for servers of ours are picked below the kernel's range for outgoing connections: a stack
# opens many connections, each on a port from that range, and a server whose port one of them took
# between our check and its bind would not start (seen: a service's metrics port).
_OUTGOING_PORTS_START = _outgoing_ports_start()


def _free_ports(count=1, also_at=0):
    """The first of `count` consecutive free ports, below the outgoing range; with
    `also_at`, the ports `also_at` higher are free (and below it) too."""
    import random

    while True:
        port = random.randrange(10000, _OUTGOING_PORTS_START - also_at - count)
        if all(_is_free(candidate + shift) for candidate in range(port, port + count) for shift in {0, also_at}):
            return port


def free_port():
    return _free_ports()


def free_metrics_base(services=5):
    """A METRICS_PORT for a test stack: it and the next `services` ports are free."""
    return _free_ports(services + 1)


def free_node_port(nodes=1):
    """The first of `nodes` consecutive free AMQP ports for RabbitMQ nodes of our own
    whose distribution ports (AMQP port + 20000, scripts/rabbitmq_nodes.py) are free too."""
    return _free_ports(nodes, also_at=20000)


def _is_free(port):
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ---- broker ----------------------------------------------------------------

def create_vhost():
    """A fresh RabbitMQ virtual host, so no other running stack can answer our RPCs."""
    name = f"oms-test-{uuid.uuid4().hex[:8]}"
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise RuntimeError("rabbitmqctl is needed to make a throwaway virtual host")
    subprocess.run([ctl, "-q", "add_vhost", name], check=True, capture_output=True)
    subprocess.run([ctl, "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True)
    return name, f"amqp://guest:guest@{BROKER_HOST}:5672/{quote(name, safe='')}"


def delete_vhost(name):
    subprocess.run([shutil.which("rabbitmqctl"), "-q", "delete_vhost", name], capture_output=True)


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


# ---- mail ------------------------------------------------------------------

class SmtpServer:
    """A real SMTP server (aiosmtpd) on a port of its own, run by the test process.

    Keeps every message it accepts in memory (`messages`: dicts with the
    envelope's `mail_from` and `rcpt_tos` and the parsed `message`), answers
    `550` to the recipients in `refused`, and can be stopped and started again
    on the same port (an outage, as the notification service sees it).
    """

    REFUSAL = "550 5.1.1 Recipient address rejected: User unknown in virtual mailbox table"

    def __init__(self, port=None):
        self.port = port or free_port()
        self.messages = []
        self.refused = set()
        self._controller = None

    def start(self):
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self):
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refused:
            return self.REFUSAL
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        from email import policy
        from email.parser import BytesParser

        self.messages.append({"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                              "message": BytesParser(policy=policy.default).parsebytes(envelope.original_content)})
        return "250 Message accepted for delivery"

    def to(self, address):
        """The messages whose envelope names `address`."""
        return [m for m in self.messages if address in m["rcpt_tos"]]

    def wait_for(self, predicate, timeout=20):
        """The first message `predicate` accepts, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in list(self.messages):
                if predicate(message):
                    return message
            time.sleep(0.1)
        raise AssertionError(f"no matching message within {timeout}s; have {len(self.messages)}: "
                             f"{[(m['rcpt_tos'], str(m['message']['Subject'])) for m in self.messages[-10:]]}")


# ---- database --------------------------------------------------------------

def create_database():
    name = f"oms_test_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(PG_DSN + " dbname=postgres")
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return name, f"{PG_URL_BASE}/{name}"


def drop_database(name):
    conn = psycopg2.connect(PG_DSN + " dbname=postgres")
    conn.autocommit = True
    conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def query(db_name, sql, *params):
    """Rows from the test database, read directly (not through any service)."""
    with psycopg2.connect(PG_DSN + f" dbname={db_name}") as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def alembic(db_url, *args):
    env = {**os.environ, "DATABASE_URL": db_url}
    return subprocess.run([sys.executable, "-m", "alembic", *args], cwd=ROOT, env=env,
                          check=True, capture_output=True, text=True)


# ---- processes -------------------------------------------------------------

class Stack:
    """The Procfile's processes (three services + gateway) under honcho."""

    def __init__(self, env, log_path):
        self.env = env
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
        self.process = None

    def start(self, timeout=60):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # one run per file: the logging tests read it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "honcho", "start", "-f", "Procfile"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout=60):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the stack exited; see {self.log_path}")
            try:
                last = requests.get(self.base_url + "/health", timeout=5)
                if last.status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"stack not healthy after {timeout}s: "
                           f"{last.text if last is not None else 'no answer'}; see {self.log_path}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # honcho stops its children in turn
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class Gateway:
    """A gateway alone (no services), for testing what it does when parts are missing."""

    def __init__(self, env, log_path):
        self.env = {**env, "GATEWAY_PORT": str(free_port()), "GATEWAY_WORKERS": "1"}
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{self.env['GATEWAY_PORT']}"
        self.process = None

    def __enter__(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gateway/gunicorn_conf.py", "gateway.wsgi:app"],
            cwd=ROOT, env=self.env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(self.base_url + "/health", timeout=15)
                return self
            except requests.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError(f"gateway did not listen; see {self.log_path}")

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(timeout=20)


class ProcessStack:
    """The Procfile's processes started one by one, so a test can kill and restart any of them."""

    def __init__(self, env, log_dir):
        self.env = env
        self.log_dir = log_dir
        self.base_url = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
        self.commands = {}
        for line in (ROOT / "Procfile").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, command = line.split(":", 1)
                self.commands[name.strip()] = command.strip()
        self.envs = {}
        self.processes = {}

    def add(self, name, like, **env):
        """Another instance of process `like` (a Procfile name), with `env` on top of the stack's."""
        self.commands[name] = self.commands[like]
        self.envs[name] = {key: str(value) for key, value in env.items()}

    def start(self, *names, timeout=60):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in names or self.commands:
            import shlex

            log = open(self.log_dir / f"{name}.log", "ab")
            self.processes[name] = subprocess.Popen(
                shlex.split(self.commands[name]), cwd=ROOT, env={**self.env, **self.envs.get(name, {})},
                stdout=log, stderr=subprocess.STDOUT)
        if not names:
            self.wait_healthy(timeout)

    def wait_healthy(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.base_url + "/health", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"stack not healthy after {timeout}s; logs in {self.log_dir}")

    def kill(self, name, sig=signal.SIGKILL):
        process = self.processes[name]
        process.send_signal(sig)
        return process

    def stop(self, grace=20):
        """SIGTERM to every process, then SIGKILL to those still running `grace` seconds later
        (one deadline for all: a stack whose broker is gone does not wait 20 s per process)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


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
