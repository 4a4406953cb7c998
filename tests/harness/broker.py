"""Throwaway RabbitMQ virtual hosts on the machine's broker, made with rabbitmqctl."""
import shutil
import subprocess
import time
import uuid
from urllib.parse import quote, unquote, urlsplit, urlunsplit


def _rabbitmqctl():
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise RuntimeError("rabbitmqctl is needed to make a throwaway RabbitMQ virtual host")
    return ctl


def _run(*args, patience=30):
    """rabbitmqctl `args`, retried while the broker is (re)starting; RuntimeError with its words."""
    deadline = time.monotonic() + patience
    while True:
        out = subprocess.run([_rabbitmqctl(), "-q", *args], capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            return out.stdout
        if time.monotonic() > deadline:
            raise RuntimeError(f"rabbitmqctl {args[0]} failed ({out.returncode}): "
                               f"{(out.stderr or out.stdout).strip()[:500]}")
        time.sleep(1)


def create_vhost(amqp_uri, prefix):
    """A fresh virtual host `<prefix>-<random>`, so no other stack on this broker answers our RPCs.

    Same user and host as `amqp_uri`; returns (name, the AMQP URI of the new vhost)."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    parts = urlsplit(amqp_uri)
    _run("add_vhost", name)
    _run("set_permissions", "-p", name, unquote(parts.username or "guest"), ".*", ".*", ".*")
    return name, urlunsplit(parts._replace(path="/" + quote(name, safe="")))


def delete_vhost(name):
    subprocess.run([_rabbitmqctl(), "-q", "delete_vhost", name], capture_output=True, timeout=60)


def queue_consumers(vhost, queue):
    """How many consumers `queue` has in `vhost`, or None if unknown."""
    out = subprocess.run([_rabbitmqctl(), "-q", "list_queues", "-p", vhost, "name", "consumers"],
                         capture_output=True, text=True)
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue and parts[1].isdigit():
            return int(parts[1])
    return None


def queue_messages(vhost):
    """Messages in all the queues of `vhost`, ready or delivered and not yet acknowledged (None if unknown)."""
    out = subprocess.run([_rabbitmqctl(), "-q", "list_queues", "-p", vhost, "messages"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return sum(int(word) for word in out.stdout.split() if word.isdigit())


def queue_bindings(vhost, queue):
    """The (exchange, routing key) pairs `queue` is bound with in `vhost` (the default exchange's left out)."""
    out = _run("list_bindings", "-p", vhost, "--no-table-headers", "source_name", "destination_name",
               "destination_kind", "routing_key")
    bindings = []
    for line in out.splitlines():
        source, destination, kind, routing_key = (line.split("\t") + [""] * 4)[:4]
        if source and destination == queue and kind == "queue":
            bindings.append((source, routing_key))
    return sorted(bindings)
