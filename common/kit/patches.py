"""Every change we make to a library's internals, in one place.

Each adaptation replaces something the library offers no setting or
subclass hook for; each has a one-line why, and `apply` runs them once, by an
explicit call at process start (`common/kit/runner.py` for services,
`gateway/gunicorn_conf.py` for the gateway), never as a side effect of an
import. `tests/unit/test_adaptations.py` fails when an internal one of them
relies on changes shape (a library upgrade would otherwise undo it silently).

Where nameko lets a subclass say it (the request publisher of our method
proxies, the gateway's fail-fast publisher), we use a subclass instead:
see `common/kit/rpc.py` and `gateway/rpc_pool.py`.

Private attributes we read, not write (tested the same way):
`ClusterRpcProxy._worker_ctx` and `._reply_listener` (the gateway's pool
builds method proxies on a started standalone proxy) and
`ReplyListener._reply_events` (a timed-out call drops its reply waiter).
"""
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from common.contract.errors import error_body

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Adaptation:
    name: str
    library: str
    internal: str
    why: str
    patch: Callable[[], None]


# ---- psycopg2 ---------------------------------------------------------------

def _green_psycopg2():
    from psycogreen.eventlet import patch_psycopg

    patch_psycopg()


# ---- nameko: RPC replies ----------------------------------------------------

def _replies_without_confirms():
    from nameko.rpc import Responder

    from common.kit.rpc import UnconfirmedReplyPublisher

    Responder.publisher_cls = UnconfirmedReplyPublisher


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


# ---- nameko: acknowledgements on a dead connection ---------------------------

def _acks_survive_dead_connections():
    from nameko.messaging import QueueConsumer

    original_ack, original_requeue = QueueConsumer.ack_message, QueueConsumer.requeue_message

    def ack_message(self, message):
        try:
            original_ack(self, message)
        except OSError as exc:
            log.warning("ack on a dead connection ignored (the broker redelivers): %r", exc)

    def requeue_message(self, message):
        try:
            original_requeue(self, message)
        except OSError as exc:
            log.warning("requeue on a dead connection ignored (the broker redelivers): %r", exc)

    QueueConsumer.ack_message, QueueConsumer.requeue_message = ack_message, requeue_message


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
    "worker of a service", _green_psycopg2)
REPLIES_WITHOUT_CONFIRMS = Adaptation(
    "replies without confirms", "nameko 2.14", "nameko.rpc.Responder.publisher_cls",
    "a publisher confirm per RPC reply cost ~1.4 ms per hop; nameko builds its Responder itself, so no "
    "subclass can choose the reply publisher", _replies_without_confirms)
KEPT_PRODUCER_CONNECTIONS = Adaptation(
    "kept producer connections", "nameko 2.14 + kombu 5", "nameko.amqp.publish.get_producer",
    "nameko built a kombu Connection (URL parsing and all) per message to find its producer pool: "
    "3-4% of every process's CPU", _kept_producer_connections)
ACKS_SURVIVE_DEAD_CONNECTIONS = Adaptation(
    "acks survive dead connections", "nameko 2.14", "nameko.messaging.QueueConsumer.ack_message / requeue_message",
    "an ack on a socket the broker just reset raised OSError, which killed the service; the broker "
    "redelivers the message either way", _acks_survive_dead_connections)
GUNICORN_JSON_ERRORS = Adaptation(
    "gunicorn errors as JSON", "gunicorn 27", "gunicorn.util.write_error",
    "what gunicorn refuses itself (414 request line too long, 431 headers) was an HTML page, not the "
    "contract's error shape", _gunicorn_json_errors)

FOR_SERVICES = (GREEN_PSYCOPG2, REPLIES_WITHOUT_CONFIRMS, KEPT_PRODUCER_CONNECTIONS, ACKS_SURVIVE_DEAD_CONNECTIONS)
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
                           "`python -m common.kit.runner run ...` (or call common.patches.apply first)")
