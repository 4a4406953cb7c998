"""RPC plumbing for services: the `rpc` entrypoint, the publishers it and the
service-to-service proxy use, their queue consumer, and `ServiceRpcProxy`;
and the signed caller context every RPC carries (common/contract/caller.py):
`CallerSigningPublisher` signs it as it sends a request, `ResilientRpc`
refuses a request whose signature does not hold before any worker runs, and
`SignedClusterRpcProxy` is nameko's standalone proxy that signs (nameko
shell, tests, the bench).

Everything here is a subclass or a class attribute of nameko's own classes;
the few global patches of nameko/kombu internals, where nameko has no hook,
live in `common/kit/patches.py`, applied once at process start.
"""
import copy
import logging
import sys

import eventlet
from amqp.exceptions import ConnectionError as AmqpConnectionError
from kombu import Queue
from kombu.exceptions import OperationalError
from kombu.serialization import dumps
from nameko.amqp.publish import Publisher
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_SERIALIZER,
    HEADER_PREFIX,
    LOGIN_METHOD_CONFIG_KEY,
    NON_PERSISTENT,
    SERIALIZER_CONFIG_KEY,
)
from nameko.exceptions import UnknownService
from nameko.messaging import QueueConsumer
from nameko.rpc import MethodProxy, ReplyListener, Responder, Rpc, RpcConsumer, RpcProxy, ServiceProxy, get_rpc_exchange
from nameko.standalone.rpc import ClusterProxy, ClusterRpcProxy

from common.contract.caller import CALLER_KEY, SERVICE, arguments_digest, sign_caller, verify_caller
from common.contract.context import DEADLINE_KEY, check_deadline, seconds_left
from common.contract.errors import DeadlineExceeded, ServiceUnavailable, Unauthenticated, UpstreamTimeout
from common.contract.settings import SETTINGS_KEY, settings_of
from common.kit import patches
from common.observability import tracing

log = logging.getLogger(__name__)

# What the transport raises when the broker is gone or the connection broke.
BROKER_ERRORS = (OSError, OperationalError, AmqpConnectionError)


class RpcRequestPublisher(Publisher):
    """RPC requests as transient messages: RabbitMQ keeps them in memory only
    (no write to its message store per call). A request can outlive nothing
    it matters for: when the broker restarts, the caller's reply queue is gone
    too, so the caller has already failed (503/504) either way."""
    delivery_mode = NON_PERSISTENT


class CallerSigningPublisher(RpcRequestPublisher):
    """RPC requests whose caller (context data "caller") is signed for this call with
    `signing_key` (set by SignedMethodProxy). The body is serialised here, once, and
    its bytes are what the signature digests and what kombu sends (given a content
    type, kombu sends bytes as they are), so the callee checks the very bytes it got."""
    signing_key = None
    caller_header = f"{HEADER_PREFIX}.{CALLER_KEY}"  # how nameko names context data in headers

    def publish(self, payload, **kwargs):
        header = self.caller_header
        headers = kwargs.get("extra_headers") or {}
        if self.signing_key is None or header not in headers:
            return super().publish(payload, **kwargs)  # unsigned: the callee refuses it
        content_type, content_encoding, body = dumps(payload, serializer=self.serializer)
        if isinstance(body, str):
            body = body.encode(content_encoding)
        signed = sign_caller(self.signing_key, headers[header], kwargs["routing_key"], arguments_digest(body))
        kwargs["extra_headers"] = {**headers, header: signed}
        return super().publish(body, content_type=content_type, content_encoding=content_encoding, **kwargs)


class UnconfirmedReplyPublisher(RpcRequestPublisher):
    """RPC replies without publisher confirms: measured here, a confirm adds
    ~1.4 ms to every hop (4.2 -> 2.9 ms for an empty call). A reply the broker
    loses after taking it times the caller out (504), as a reply lost any
    other way would; a reply that cannot be written at all still raises and
    is redelivered (ResilientRpc). Requests keep their confirms: without them
    a call to a stopped service would wait forever instead of failing."""
    use_confirms = False


class UnconfirmedResponder(Responder):
    publisher_cls = UnconfirmedReplyPublisher


class ResilientQueueConsumer(QueueConsumer):
    """nameko's queue consumer, except that an ack or requeue on a socket the
    broker just reset is logged instead of raising OSError, which would kill
    the service: the broker redelivers the message either way. Every
    entrypoint and reply listener of our services consumes through it (their
    `queue_consumer`), so a container shares one."""

    def ack_message(self, message):
        try:
            super().ack_message(message)
        except OSError as exc:
            log.warning("ack on a dead connection ignored (the broker redelivers): %r", exc)

    def requeue_message(self, message):
        try:
            super().requeue_message(message)
        except OSError as exc:
            log.warning("requeue on a dead connection ignored (the broker redelivers): %r", exc)


class ClusterableRpcConsumer(RpcConsumer):
    """nameko's RPC request consumer; with AMQP_QUORUM_QUEUES (a cluster) the
    service's request queue is transient instead of durable: a classic durable
    queue whose node is lost cannot be declared again anywhere until that node
    returns, whereas a transient one vanishes with its node and the surviving
    instances declare it anew on theirs. Requests are transient messages
    anyway (see RpcRequestPublisher); the ones in flight on the lost node get
    503/504 per the contract. Replies go without publisher confirms
    (UnconfirmedReplyPublisher)."""
    queue_consumer = ResilientQueueConsumer()

    def setup(self):
        super().setup()
        if settings_of(self.container).amqp_quorum_queues:
            queue = self.queue
            self.queue = Queue(queue.name, exchange=queue.exchange, routing_key=queue.routing_key, durable=False)

    def handle_result(self, message, result, exc_info):
        """nameko's, with our Responder."""
        config = self.container.config
        responder = UnconfirmedResponder(
            config[AMQP_URI_CONFIG_KEY], get_rpc_exchange(config), config.get(SERIALIZER_CONFIG_KEY, DEFAULT_SERIALIZER),
            message, ssl=config.get(AMQP_SSL_CONFIG_KEY), login_method=config.get(LOGIN_METHOD_CONFIG_KEY))
        result, exc_info = responder.send_response(result, exc_info)
        self.queue_consumer.ack_message(message)
        return result, exc_info


class ResilientRpc(Rpc):
    """nameko's `rpc`, except that a reply which cannot be published (the broker
    is restarting) is logged and the request left unacknowledged, instead of
    raising in the worker and killing the whole service: the caller times out
    (504), the broker redelivers the request when it is back, and handlers are
    idempotent where that matters (create_order's attempt id)."""
    rpc_consumer = ClusterableRpcConsumer()

    def setup(self):
        patches.require(patches.FOR_SERVICES, self.container.service_name)
        super().setup()

    def handle_message(self, body, message):
        # A request that waited in the queue past its caller's deadline (a
        # redelivery after a crash, a backlog after a broker pause) is answered
        # DeadlineExceeded at once: its client has had its answer already. One
        # whose caller is not signed for this very call is answered
        # Unauthenticated: no worker runs either way.
        headers = self.unpack_message_headers(message)
        try:
            check_deadline(headers.get(DEADLINE_KEY), doing="starting")
            self._verify_caller(headers.get(CALLER_KEY), message)
        except DeadlineExceeded:
            return self._refuse(message, "a late request")
        except Unauthenticated as exc:
            log.warning("refused %s.%s: %s (%s)", self.container.service_name, self.method_name, exc,
                        exc.details.get("caller_signature"))
            return self._refuse(message, "an unauthenticated request")
        super().handle_message(body, message)

    def _verify_caller(self, caller, message):
        settings = settings_of(self.container)
        verify_caller(settings.caller_signing_keys, caller, f"{self.container.service_name}.{self.method_name}",
                      arguments_digest(_body_bytes(message)), settings.caller_signature_max_age_seconds)

    def _refuse(self, message, what):
        """Answer the request with the exception being handled, and nothing else."""
        if not message.properties.get("reply_to"):  # nobody to answer (not one of our proxies' calls)
            self.rpc_consumer.queue_consumer.ack_message(message)
            return
        try:
            self.rpc_consumer.handle_result(message, None, sys.exc_info())
        except BROKER_ERRORS as exc:
            log.warning("could not refuse %s (broker unreachable: %r)", what, exc)

    def handle_result(self, message, worker_ctx, result, exc_info):
        try:
            return super().handle_result(message, worker_ctx, result, exc_info)
        except BROKER_ERRORS as exc:
            log.warning("could not reply to %s (broker unreachable: %r); the request will be redelivered",
                        worker_ctx.call_id, exc)
            return result, exc_info


rpc = ResilientRpc.decorator


def _body_bytes(message):
    """The request's body as it was sent: py-amqp hands text bodies over decoded (with the
    message's content encoding), and encoding them back gives the very bytes."""
    body = message.body
    return body if isinstance(body, bytes) else body.encode(message.content_encoding or "utf-8")


class SignedMethodProxy(MethodProxy):
    """nameko's method proxy, sending through CallerSigningPublisher with the key of the
    Settings in its container's config (Settings.nameko_config())."""
    publisher_cls = CallerSigningPublisher

    def __init__(self, worker_ctx, service_name, method_name, reply_listener, **options):
        super().__init__(worker_ctx, service_name, method_name, reply_listener, **options)
        settings = self.container.config.get(SETTINGS_KEY)
        if settings is None:
            raise RuntimeError("signed RPC needs the Settings in nameko's config: build it with "
                               "Settings.nameko_config()")
        self.publisher.signing_key = settings.caller_signing_keys[0]


class _SignedServiceProxy(ServiceProxy):
    def __getattr__(self, name):
        return SignedMethodProxy(self.worker_ctx, self.service_name, name, self.reply_listener, **self.options)


class _SignedClusterProxy(ClusterProxy):
    def __getattr__(self, name):
        if name not in self._proxies:
            self._proxies[name] = _SignedServiceProxy(self._worker_ctx, name, self._reply_listener)
        return self._proxies[name]


class SignedClusterRpcProxy(ClusterRpcProxy):
    """nameko's standalone ClusterRpcProxy, same arguments, whose calls carry the caller
    in `context_data` signed (for `make shell`, the tests and the bench); `config` is
    Settings.nameko_config(), whose key signs.

        with SignedClusterRpcProxy(settings.nameko_config(), context_data={"caller": admin}) as rpc:
            rpc.order_service.get_order(order_id)
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._proxy = _SignedClusterProxy(self._worker_ctx, self._reply_listener)


class TimedMethodProxy(SignedMethodProxy):
    """One service's call to another, as a transient request, that gives up
    after `timeout` seconds, or when the caller's deadline comes, whichever is
    first, with UpstreamTimeout (504). nameko 2.14's RpcProxy waits for ever:
    a hung callee would hold the caller's worker, and its open transaction
    with the row locks it took, for as long as the hang lasts."""

    def __init__(self, worker_ctx, service_name, method_name, reply_listener, timeout, **options):
        super().__init__(worker_ctx, service_name, method_name, reply_listener, **options)
        self.timeout = timeout

    def __call__(self, *args, **kwargs):
        left = seconds_left(self.worker_ctx.data.get(DEADLINE_KEY))
        check_deadline(self.worker_ctx.data.get(DEADLINE_KEY), doing=f"calling {self.service_name}")
        timeout = self.timeout if left is None else min(self.timeout, left)
        with tracing.client_span(self.service_name, self.method_name):
            return self._call_within(timeout, *args, **kwargs)

    def _call_within(self, timeout, *args, **kwargs):
        if tracing.enabled():
            self.worker_ctx = tracing.worker_ctx_with_traceparent(self.worker_ctx)
        try:
            reply = self._call(*args, **kwargs)
        except UnknownService:
            raise ServiceUnavailable(f"{self.service_name} is not running.", {"service": self.service_name}) from None
        except BROKER_ERRORS as exc:
            log.warning("could not call %s.%s: %r", self.service_name, self.method_name, exc)
            raise ServiceUnavailable("The message broker is unreachable.",
                                     {"service": self.service_name, "broker": "unreachable"}) from None
        deadline = eventlet.Timeout(timeout)
        try:
            return reply.result()
        except eventlet.Timeout as exc:
            if exc is not deadline:
                raise
            # A late reply then finds no waiter and is dropped by nameko.
            # (nameko keeps waiters by correlation id, which it does not hand out.)
            events = self.reply_listener._reply_events
            for correlation_id in [key for key, event in events.items() if event is reply.reply_event]:
                events.pop(correlation_id, None)
            raise UpstreamTimeout(f"{self.service_name} did not answer in time.",
                                  {"service": self.service_name, "timeout_seconds": round(timeout, 3)}) from None
        finally:
            deadline.cancel()


class _TimedServiceProxy(ServiceProxy):
    def __init__(self, worker_ctx, service_name, reply_listener, timeout, **options):
        super().__init__(worker_ctx, service_name, reply_listener, **options)
        self.timeout = timeout

    def __getattr__(self, name):
        return TimedMethodProxy(self.worker_ctx, self.service_name, name, self.reply_listener, self.timeout,
                                **self.options)

    @property
    def settling(self):
        """The same service, called without the request's deadline: for calls
        that settle what the request already decided (undo a reservation after
        a rollback, release the stock of a committed cancel). They are
        idempotent and must run even when the request's time is up."""
        data = {key: value for key, value in self.worker_ctx.data.items() if key != DEADLINE_KEY}
        unbounded = copy.copy(self.worker_ctx)
        unbounded.data = data
        return _TimedServiceProxy(unbounded, self.service_name, self.reply_listener, self.timeout, **self.options)


class ServiceReplyListener(ReplyListener):
    queue_consumer = ResilientQueueConsumer()


class ServiceRpcProxy(RpcProxy):
    """Calls to another service that carry this service as the caller (role
    "service": it has checked the end user itself) and time out after
    SERVICE_RPC_TIMEOUT seconds (UpstreamTimeout) instead of waiting for ever.

    The request id and other context data pass through unchanged.
    """
    rpc_reply_listener = ServiceReplyListener()

    def setup(self):
        super().setup()
        self.timeout = settings_of(self.container).service_rpc_timeout

    def get_dependency(self, worker_ctx):
        as_service = copy.copy(worker_ctx)
        as_service.data = {**worker_ctx.data,
                           CALLER_KEY: {"sub": worker_ctx.service_name, "role": SERVICE}}
        return _TimedServiceProxy(as_service, self.target_service, self.rpc_reply_listener, self.timeout,
                                  **self.options)
