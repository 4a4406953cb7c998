"""RPC plumbing for services: the `rpc` entrypoint, the publishers it and the
service-to-service proxy use, their queue consumer, and `ServiceRpcProxy`.

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
from nameko.amqp.publish import Publisher
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_SERIALIZER,
    LOGIN_METHOD_CONFIG_KEY,
    NON_PERSISTENT,
    SERIALIZER_CONFIG_KEY,
)
from nameko.exceptions import UnknownService
from nameko.messaging import QueueConsumer
from nameko.rpc import MethodProxy, ReplyListener, Responder, Rpc, RpcConsumer, RpcProxy, ServiceProxy, get_rpc_exchange

from common.contract.caller import CALLER_KEY, SERVICE
from common.contract.context import DEADLINE_KEY, check_deadline, seconds_left
from common.contract.errors import DeadlineExceeded, ServiceUnavailable, UpstreamTimeout
from common.contract.settings import settings_of
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
        # DeadlineExceeded at once: its client has had its answer already.
        try:
            check_deadline(self.unpack_message_headers(message).get(DEADLINE_KEY), doing="starting")
        except DeadlineExceeded:
            try:
                self.rpc_consumer.handle_result(message, None, sys.exc_info())
            except BROKER_ERRORS as exc:
                log.warning("could not refuse a late request (broker unreachable: %r)", exc)
            return
        super().handle_message(body, message)

    def handle_result(self, message, worker_ctx, result, exc_info):
        try:
            return super().handle_result(message, worker_ctx, result, exc_info)
        except BROKER_ERRORS as exc:
            log.warning("could not reply to %s (broker unreachable: %r); the request will be redelivered",
                        worker_ctx.call_id, exc)
            return result, exc_info


rpc = ResilientRpc.decorator


class TimedMethodProxy(MethodProxy):
    """One service's call to another, as a transient request, that gives up
    after `timeout` seconds, or when the caller's deadline comes, whichever is
    first, with UpstreamTimeout (504). nameko 2.14's RpcProxy waits for ever:
    a hung callee would hold the caller's worker, and its open transaction
    with the row locks it took, for as long as the hang lasts."""
    publisher_cls = RpcRequestPublisher

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
