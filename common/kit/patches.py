"""Every change we make to a library's internals, in one place.

Each adaptation replaces something the library offers no setting or
subclass hook for; each says why it is needed and why no hook does it, and
`apply` runs them once, by an explicit call at process start
(`common/kit/runner.py` for services, `gateway/gunicorn_conf.py` for the
gateway), never as a side effect of an import. `tests/unit/test_adaptations.py`
fails when an internal one of them relies on changes shape (a library
upgrade would otherwise undo it silently).

Where nameko lets a subclass say it, we use a subclass instead (see
`common/kit/rpc.py` and `gateway/rpc_pool.py`): the request publisher of our
method proxies and the gateway's fail-fast publisher (`MethodProxy.publisher_cls`),
the reply publisher (`RpcConsumer.handle_result` builds the Responder), and the
queue consumer of our entrypoints and reply listeners (their `queue_consumer`).

Private attributes we read, not write (tested the same way):
`ClusterRpcProxy._worker_ctx` and `._reply_listener` (the gateway's pool
builds method proxies on a started standalone proxy) and
`ReplyListener._reply_events` (a timed-out call drops its reply waiter).
"""
import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from common.contract.errors import error_body


@dataclass(frozen=True)
class Adaptation:
    name: str
    library: str
    internal: str
    why: str
    no_hook: str  # why no setting or subclass can do it
    patch: Callable[[], None]


# ---- psycopg2 ---------------------------------------------------------------

def _green_psycopg2():
    from psycogreen.eventlet import patch_psycopg

    patch_psycopg()


# ---- nameko + kombu: producer lookup ----------------------------------------

_publisher_connections = {}


@contextmanager
def _get_producer(amqp_uri, confirms=True, ssl=None, login_method=None, transport_options=None):
    # The same producer pool nameko's get_producer picks (kombu keys it by the
    # connection's settings), minus building a kombu Connection, URL parsing
    # and all, for every message.
    from kombu import Connection
    from kombu.pools import producers
    from nameko.amqp import publish

    defaults = publish.DEFAULT_TRANSPORT_OPTIONS if transport_options is None else transport_options
    options = {**defaults, "confirm_publish": confirms}
    key = (amqp_uri, repr(ssl), login_method, repr(sorted(options.items())))
    connection = _publisher_connections.get(key)
    if connection is None:
        connection = _publisher_connections.setdefault(key, Connection(
            amqp_uri, transport_options=options, ssl=ssl, login_method=login_method))
    with producers[connection].acquire(block=True) as producer:
        yield producer


def _kept_producer_connections():
    from nameko.amqp import publish

    publish.get_producer = _get_producer


# ---- gunicorn: the errors it answers itself ---------------------------------

def json_error_response(status, reason, message):
    """The bytes of a complete HTTP/1.1 error response in the contract's shape
    (gunicorn's status and message; the connection then closes)."""
    code = "internal_error" if status == 500 else reason.lower().replace(" ", "_")
    body = json.dumps(error_body(code, message or reason)).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def _gunicorn_json_errors():
    from gunicorn import util

    def write_error(sock, status_int, reason, mesg):
        util.write_nonblock(sock, json_error_response(status_int, reason, mesg))

    util.write_error = write_error


GREEN_PSYCOPG2 = Adaptation(
    "green psycopg2", "psycopg2 (psycogreen)", "psycopg2.extensions.set_wait_callback",
    "psycopg2 blocks the whole process while it waits on Postgres: one slow query would stall every "
    "worker of a service",
    "psycopg2's wait callback is process-wide by design; psycogreen is how eventlet programs set it",
    _green_psycopg2)
KEPT_PRODUCER_CONNECTIONS = Adaptation(
    "kept producer connections", "nameko 2.14 + kombu 5", "nameko.amqp.publish.get_producer",
    "nameko builds a kombu Connection (URL parsing and all) per message to find its producer pool: "
    "3-4% of every process's CPU",
    "Publisher.publish calls the module-level get_producer midway, and nameko's own publishers (events, "
    "standalone proxies) use it too: a subclass would copy publish and still miss those",
    _kept_producer_connections)
GUNICORN_JSON_ERRORS = Adaptation(
    "gunicorn errors as JSON", "gunicorn 27", "gunicorn.util.write_error",
    "what gunicorn refuses itself (414 request line too long, 431 headers) is an HTML page, not the "
    "contract's error shape",
    "a worker subclass would copy Worker.handle_error whole (its 80 lines choose status and message), "
    "which then writes through the module-level util.write_error",
    _gunicorn_json_errors)

FOR_SERVICES = (GREEN_PSYCOPG2, KEPT_PRODUCER_CONNECTIONS)
FOR_GATEWAY = (KEPT_PRODUCER_CONNECTIONS, GUNICORN_JSON_ERRORS)
ALL = (*FOR_SERVICES, GUNICORN_JSON_ERRORS)

_applied = set()


def apply(adaptations):
    """Apply each adaptation once (a second call changes nothing)."""
    for adaptation in adaptations:
        if adaptation.name not in _applied:
            adaptation.patch()
            _applied.add(adaptation.name)


def require(adaptations, who):
    """Refuse to run without `adaptations`: a service started some other way than
    `common.kit.runner` would lose them silently."""
    missing = [adaptation.name for adaptation in adaptations if adaptation.name not in _applied]
    if missing:
        raise RuntimeError(f"{who} needs the library adaptations {missing}: start it with "
                           "`python -m common.kit.runner run ...` (or call common.kit.patches.apply first)")
