"""Each process's own RabbitMQ user, allowed only what it does: the one place these permissions live.

    python -m scripts.rabbitmq_users definitions > ops/rabbitmq/definitions.json   # what compose loads
    python -m scripts.rabbitmq_users show                                          # the table, readable
    python -m scripts.rabbitmq_users uri <process> --uri AMQP_URI                  # its URI, its user's credentials
    python -m scripts.rabbitmq_users procfile --uri A --second-uri B --second-gateway-port P   # CLUSTER=1's

The users are the gateway and every service of the registry (common/contract/services.py);
what each may touch is read off its service class, as nameko 2.14 names things:

- RPC: the topic exchange `nameko-rpc`; a service consumes its queue `rpc-<service>` (bound
  `<service>.*`) and replies with the caller's reply queue's uuid as routing key; a caller
  (a service's ServiceRpcProxy, the gateway's standalone proxies) declares and consumes its own
  `rpc.reply-<service>-<uuid>` (`rpc.reply-standalone_rpc_proxy-<uuid>` for the gateway) and
  publishes `<callee>.<method>`. Topic permissions on `nameko-rpc` hold those routing keys to
  the services a process calls and the binding keys to its own: the gateway can neither bind a
  queue to `order_service.*` nor call a method of a service that is not in the registry.
- Events: a service's outbox relay declares and publishes to `<service>.events`; an event
  handler declares the source's exchange and its queue `evt-<source>-<event>--<service>.<method>`
  bound to it, with the dead-letter exchange `dead-letters`, its retry queue `<queue>.retry`
  (published to through the default exchange, `amq.default`, dead-lettering back through it)
  and the `dead-letters` exchange and queue (common/kit/consumers.py). webhook_service binds
  and unbinds its handler queues itself while it runs (webhook_service/bindings.py): the same
  permissions as the binding a handler declares. Quorum queues (AMQP_QUORUM_QUEUES) need
  nothing more.

RabbitMQ checks: declare = configure on the entity; bind = write on the queue, read on the
exchange; publish = write on the exchange; consume = read on the queue; a queue with a
dead-letter exchange = read on the queue, write on that exchange.

Passwords: development defaults (`dev-only-<user>-password`), or AMQP_PASSWORD_<USER> from the
environment (e.g. AMQP_PASSWORD_ORDER_SERVICE); docs/operations.md, "RabbitMQ users".
"""
import argparse
import base64
import hashlib
import importlib
import inspect
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from nameko.events import EventHandler
from nameko.extensions import ENTRYPOINT_EXTENSIONS_ATTR
from nameko.rpc import RpcProxy

from common.contract.services import BY_NAME, GATEWAY, SERVICE_NAMES, SERVICES

ROOT = Path(__file__).resolve().parent.parent
RPC_EXCHANGE = "nameko-rpc"
DEAD_LETTERS = "dead-letters"  # the exchange and the queue (common/kit/consumers.py)
DEFAULT_EXCHANGE = "amq.default"  # what RabbitMQ's permissions call the default exchange ""
STANDALONE = "standalone_rpc_proxy"  # nameko's service name for standalone proxies (the gateway's)
NAME = "[a-z0-9_]+"  # a service, event or method name
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # a reply queue's routing key
OPERATOR = "admin"  # compose's and the cluster's administrator (management UI, make shell, dead letters)


@dataclass(frozen=True)
class Grant:
    """What one user may do in the vhost (RabbitMQ regexes) and on `nameko-rpc`'s routing keys."""
    user: str
    configure: str
    write: str
    read: str
    rpc_publish: str  # topic write: routing keys it may publish to nameko-rpc
    rpc_bind: str     # topic read: binding keys it may bind queues to nameko-rpc with


@dataclass(frozen=True)
class Declared:
    """What a service class declares: the services it calls, its event handlers (source, event, method)."""
    calls: tuple
    handlers: tuple


def declared(service_name):
    """Read off the service's class: its RPC proxies' targets and its event handlers."""
    module_name, class_name = BY_NAME[service_name].module.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    calls, handlers = set(), set()
    for name, member in inspect.getmembers(cls):
        if isinstance(member, RpcProxy):
            calls.add(member.target_service)
        for entrypoint in getattr(member, ENTRYPOINT_EXTENSIONS_ATTR, ()):
            if isinstance(entrypoint, EventHandler):
                handlers.add((entrypoint.source_service, entrypoint.event_type, name))
    return Declared(tuple(sorted(calls)), tuple(sorted(handlers)))


def _any_of(*alternatives):
    """A regex matching exactly one of `alternatives` (each itself a regex)."""
    return "^(" + "|".join(alternatives) + ")$"


def _literal(name):
    """`name` as a regex matching it alone (RabbitMQ's are PCRE; `-` needs no escape)."""
    return re.sub(r"([.*+?^$()\[\]{}|\\])", r"\\\1", name)


def _names(*names):
    return [_literal(name) for name in names]


def service_grant(service_name, what):
    """The permissions of `service_name`, which declares `what` (a Declared)."""
    own = _names(RPC_EXCHANGE, f"rpc-{service_name}", f"{service_name}.events")
    replies = [_literal(f"rpc.reply-{service_name}-") + UUID] if what.calls else []
    sources = _names(*sorted({f"{source}.events" for source, _, _ in what.handlers}))
    # evt-<source>-<event>--<service>.<method>, and its retry queue
    handler_queues = [f"evt-{NAME}-{NAME}--{_literal(service_name)}\\.{NAME}(\\.retry)?"] if what.handlers else []
    dead_letters = _names(DEAD_LETTERS) if what.handlers else []
    retries_through = _names(DEFAULT_EXCHANGE) if what.handlers else []
    calls = [_literal(callee) + r"\." + NAME for callee in what.calls]
    return Grant(
        user=service_name,
        configure=_any_of(*own, *replies, *sources, *handler_queues, *dead_letters),
        write=_any_of(*own, *replies, *handler_queues, *dead_letters, *retries_through),
        read=_any_of(*_names(RPC_EXCHANGE, f"rpc-{service_name}"), *replies, *sources, *handler_queues,
                     *dead_letters),
        rpc_publish=_any_of(*calls, UUID),
        rpc_bind=_any_of(_literal(f"{service_name}.*"), UUID),
    )


def gateway_grant():
    """The gateway only calls: its standalone proxies' reply queues, requests to every service."""
    mine = _any_of(*_names(RPC_EXCHANGE), _literal(f"rpc.reply-{STANDALONE}-") + UUID)
    return Grant(user=GATEWAY, configure=mine, write=mine, read=mine,
                 rpc_publish=_any_of(*(_literal(name) + r"\." + NAME for name in SERVICE_NAMES)),
                 rpc_bind=_any_of(UUID))


def grants():
    """Every process's Grant: the gateway's, then the registry's services in order."""
    return [gateway_grant()] + [service_grant(service.name, declared(service.name)) for service in SERVICES]


def password(user, environ=None):
    """AMQP_PASSWORD_<USER> if set, else the development default (never in production)."""
    environ = os.environ if environ is None else environ
    return environ.get(f"AMQP_PASSWORD_{user.upper()}") or f"dev-only-{user}-password"


def user_of(process):
    """The RabbitMQ user of a Procfile process (`gateway`, `orders`, `orders_2`, ...), or None (sinks)."""
    base = re.sub(r"_\d+$", "", process)
    if base == GATEWAY:
        return GATEWAY
    return next((service.name for service in SERVICES if service.process == base), None)


def with_user(amqp_uri, user, secret):
    """`amqp_uri` (one URI or kombu's failover list `a;b;c`) with every host's credentials replaced."""
    def one(uri):
        parts = urlsplit(uri)
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(secret, safe='')}@{host}"))
    return ";".join(one(uri) for uri in amqp_uri.split(";"))


def password_hash(secret, salt):
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    return base64.b64encode(salt + hashlib.sha256(salt + secret.encode()).digest()).decode()


def definitions(vhost="/", prefix="", environ=None):
    """The definitions of the operator (administrator) and every process's user, with their
    permissions in `vhost`: what compose's RabbitMQ loads at boot (load_definitions) and what
    `make cluster` imports into its nodes. Salts are fixed per user, so the file is reproducible
    (tests/unit/test_rabbitmq_users.py holds the committed one to this). `prefix` names
    throwaway users (tests: users are broker-wide)."""
    every = [Grant(OPERATOR, ".*", ".*", ".*", "", "")] + grants()
    return {
        "users": [{"name": prefix + g.user,
                   "password_hash": password_hash(password(g.user, environ), hashlib.sha256(g.user.encode()).digest()[:4]),
                   "hashing_algorithm": "rabbit_password_hashing_sha256",
                   "tags": ["administrator"] if g.user == OPERATOR else []} for g in every],
        "vhosts": [{"name": vhost}],
        "permissions": [{"user": prefix + g.user, "vhost": vhost, "configure": g.configure, "write": g.write,
                         "read": g.read} for g in every],
        "topic_permissions": [{"user": prefix + g.user, "vhost": vhost, "exchange": RPC_EXCHANGE,
                               "write": g.rpc_publish, "read": g.rpc_bind} for g in every if g.rpc_publish],
    }


def apply(ctl, vhost="/", prefix="", environ=None):
    """Import `definitions` into a running node: `ctl(*args)` runs rabbitmqctl against it. Adds or
    updates these users and permissions, touches nothing else. Returns {user: password}."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        json.dump(definitions(vhost, prefix, environ), file)
        file.flush()
        os.chmod(file.name, 0o644)  # the node may read it as another system user
        ctl("import_definitions", file.name)
    return {g.user: password(g.user, environ) for g in [Grant(OPERATOR, "", "", "", "", "")] + grants()}


def cluster_procfile(lines, uri, second_uri, second_gateway_port, second_metrics_port=9200):
    """`make run CLUSTER=1`'s Procfile: each process, and a second instance of it connecting to
    `second_uri` first, with AMQP_URI naming its own user."""
    out = []
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        name, command = (part.strip() for part in line.split(":", 1))
        user = user_of(name)
        own, second = (with_user(each, user, password(user)) for each in (uri, second_uri))
        second_port = f"GATEWAY_PORT={second_gateway_port}" if user == GATEWAY else f"METRICS_PORT={second_metrics_port}"
        out += [f"{name}: AMQP_URI='{own}' {command}", f"{name}_2: AMQP_URI='{second}' {second_port} {command}"]
    return out


def main(argv):
    parser = argparse.ArgumentParser(prog="python -m scripts.rabbitmq_users", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["definitions", "show", "uri", "procfile"])
    parser.add_argument("process", nargs="?", help="uri: a Procfile process name (gateway, orders, orders_2, ...)")
    parser.add_argument("--uri", help="the broker's AMQP_URI (any credentials; a failover list too)")
    parser.add_argument("--second-uri", help="procfile: the second instances' AMQP_URI")
    parser.add_argument("--second-gateway-port", type=int, help="procfile: the second gateway's port")
    args = parser.parse_args(argv)
    if args.command == "definitions":
        print(json.dumps(definitions(), indent=2))
    elif args.command == "show":
        for grant in grants():
            print(f"{grant.user}\n  configure {grant.configure}\n  write     {grant.write}\n"
                  f"  read      {grant.read}\n  {RPC_EXCHANGE} publish {grant.rpc_publish}  bind {grant.rpc_bind}")
    elif args.command == "procfile":
        with open(ROOT / "Procfile") as procfile:
            print("\n".join(cluster_procfile(procfile, args.uri, args.second_uri, args.second_gateway_port)))
    else:
        user = user_of(args.process or "")
        if user is None or not args.uri:
            parser.error("uri needs a process of the Procfile that talks to RabbitMQ and --uri")
        print(with_user(args.uri, user, password(user)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
