"""A pool of long-lived, started standalone RPC proxies, and what a call's failures mean.

A nameko ClusterRpcProxy is single-threaded and costly to start (a broker
connection and a reply queue), so a process keeps started ones and lends
each to one thread at a time. A proxy that failed at the transport level
(broker gone, reply timed out) is discarded, never lent again; the next
borrower starts a fresh one, which is how the pool recovers after a broker
restart.

Every call carries the request's deadline (common/contract/context.py) and waits no
longer than it, and its caller signed for it (common/kit/rpc.py, CallerSigningPublisher;
each send is signed afresh). Its transport failures are told apart honestly:
- the request never left (no connection to the broker, nobody consumes the
  service's queue): ServiceUnavailable, 503, nothing was done;
- the request may have been taken (the connection broke while publishing or
  waiting, or no reply came in time): NoAnswer. A call marked `redrive`
  (idempotent per attempt, like create_order) is then sent again, same
  arguments, until it is answered or the deadline comes. So is one whose
  service answered FailureNotRecorded (it failed but could not make that
  final, so another run may still succeed).
"""
import logging
import socket
import threading
import time
from collections import deque

from amqp.exceptions import ConnectionError as AmqpConnectionError
from kombu import Connection
from nameko import serialization
from nameko.constants import AMQP_SSL_CONFIG_KEY, AMQP_URI_CONFIG_KEY, LOGIN_METHOD_CONFIG_KEY
from nameko.exceptions import RpcTimeout, UnknownService
from nameko.standalone.rpc import ClusterRpcProxy, PollingQueueConsumer, SingleThreadedReplyListener

from common.contract.context import DEADLINE_KEY
from common.contract.errors import FailureNotRecorded, ServiceUnavailable
from common.kit.rpc import BROKER_ERRORS, CallerSigningPublisher, SignedMethodProxy
from gateway import metrics

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 2.0  # a broker that does not finish the AMQP handshake by then is not there
REDRIVE_PAUSE_SECONDS = (0.2, 1.0)  # first and longest pause between sends of one call


class NoAnswer(Exception):
    """The request may have reached the service, but no answer came back in time."""


class ReplyLost(Exception):
    """The connection broke while waiting: the reply, if any, went with it."""


class FailFastPublisher(CallerSigningPublisher):
    """nameko's publisher retries a broker connection for ~10 s, holding the
    caller all that time; give up within about a second."""
    retry_policy = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.3, "interval_max": 0.5}
    transport_options = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.3, "interval_max": 0.5}


class FailFastMethodProxy(SignedMethodProxy):
    publisher_cls = FailFastPublisher


class _DeadlineReplyConsumer(PollingQueueConsumer):
    """nameko's polling reply consumer, except that it waits until the call's
    deadline (not `timeout` per read), connects with a short timeout, and
    reports a broken connection (ReplyLost) instead of quietly declaring a new
    reply queue and waiting on (the reply went with the old queue)."""
    deadline = None  # epoch seconds, set by the pool before each call

    def register_provider(self, provider):
        self.provider = provider
        config = provider.container.config
        self.serializer, self.accept = serialization.setup(config)
        self.connection = Connection(config[AMQP_URI_CONFIG_KEY], ssl=config.get(AMQP_SSL_CONFIG_KEY),
                                     login_method=config.get(LOGIN_METHOD_CONFIG_KEY),
                                     connect_timeout=CONNECT_TIMEOUT_SECONDS)
        self.queue = provider.queue
        self._setup_consumer()
        self.stopped = False

    def get_message(self, correlation_id):
        try:
            while correlation_id not in self.replies:
                left = self.deadline - time.time()
                if left <= 0:
                    raise socket.timeout()
                self.consumer.connection.drain_events(timeout=left)
            body, message = self.replies.pop(correlation_id)
            self.provider.handle_message(body, message)
        except socket.timeout:
            self.provider._reply_events.pop(correlation_id).send_exception(RpcTimeout(self.deadline))
        except (OSError, AmqpConnectionError) as exc:
            self.provider._reply_events.pop(correlation_id).send_exception(ReplyLost(repr(exc)))


class _DeadlineReplyListener(SingleThreadedReplyListener):
    def __init__(self, timeout=None):
        super().__init__(timeout=timeout)
        self.queue_consumer = _DeadlineReplyConsumer(timeout=timeout)


class _NeverLeft(Exception):
    def __init__(self, error):
        super().__init__(error.message)
        self.error = error


class RpcProxyPool:
    def __init__(self, nameko_config, timeout, max_size):
        self._config = nameko_config
        self._timeout = timeout
        self._idle = deque()
        # Bounds live proxies (and so broker connections) per process.
        self._slots = threading.BoundedSemaphore(max_size)

    def call(self, service, method, args=(), kwargs=None, context_data=None, deadline=None, redrive=False):
        """`service.method(*args, **kwargs)` with `context_data` and the `deadline`
        (epoch seconds; default RPC_TIMEOUT from now). Errors the service raises
        pass through; ServiceUnavailable when the request never left; NoAnswer
        when it may have been taken but nothing answered before the deadline."""
        deadline = deadline or time.time() + self._timeout
        pause, may_be_taken = REDRIVE_PAUSE_SECONDS[0], False
        while True:
            try:
                return self._call_once(service, method, args, kwargs or {}, context_data or {}, deadline)
            except _NeverLeft as never_left:
                if not may_be_taken:
                    raise never_left.error from None
            except (NoAnswer, FailureNotRecorded) as exc:
                may_be_taken = True
                log.warning("no final answer from %s.%s (%s)%s", service, method, exc,
                            "; sending it again" if redrive else "")
                if not redrive:
                    raise
            left = deadline - time.time()
            if left <= 0:
                raise NoAnswer(f"{service} did not answer before the deadline")
            time.sleep(min(pause, left))
            pause = min(pause * 2, REDRIVE_PAUSE_SECONDS[1])

    def _call_once(self, service, method, args, kwargs, context_data, deadline):
        left = deadline - time.time()
        if left <= 0 or not self._slots.acquire(timeout=left):
            raise _NeverLeft(ServiceUnavailable("All RPC connections are busy.", {"rpc_pool": "exhausted"}))
        try:
            standalone = self._checkout()
            # The proxy's worker context is what nameko sends as context data.
            standalone._worker_ctx.data = {**context_data, DEADLINE_KEY: deadline}
            standalone._reply_listener.queue_consumer.deadline = deadline
            # A started standalone proxy keeps its worker context and reply listener in
            # private attributes (tests/unit/test_adaptations.py pins them). `timeout`
            # bounds the wait for the broker's confirm of the request.
            proxy = FailFastMethodProxy(standalone._worker_ctx, service, method, standalone._reply_listener,
                                        timeout=max(deadline - time.time(), 0.001))
            try:
                reply = proxy.call_async(*args, **kwargs)
            except UnknownService:  # returned by the broker: nobody consumes the service's queue
                self._give_back(standalone)
                raise _NeverLeft(ServiceUnavailable(f"{service} is not running.", {"service": service})) from None
            except BROKER_ERRORS as exc:
                self._discard(standalone)
                raise NoAnswer(f"the connection failed while sending: {exc!r}") from None
            try:
                result = reply.result()
            except (RpcTimeout, ReplyLost, RuntimeError, *BROKER_ERRORS) as exc:
                # RuntimeError: nameko's reply wait found its consumer disconnected.
                self._discard(standalone)
                raise NoAnswer(f"no reply: {exc!r}") from None
            except BaseException:
                self._give_back(standalone)
                raise
            self._give_back(standalone)
            return result
        finally:
            self._slots.release()

    def _checkout(self):
        metrics.count_proxies("in_use", 1)
        try:
            standalone = self._idle.pop()
            metrics.count_proxies("idle", -1)
            return standalone
        except IndexError:
            pass
        standalone = ClusterRpcProxy(self._config, timeout=self._timeout, reply_listener_cls=_DeadlineReplyListener)
        try:
            standalone.start()
        except BROKER_ERRORS as exc:
            log.warning("cannot start an RPC proxy: %r", exc)
            metrics.count_proxies("in_use", -1)
            raise _NeverLeft(ServiceUnavailable("The message broker is unreachable.",
                                                {"broker": "unreachable"})) from None
        return standalone

    def _give_back(self, standalone):
        self._idle.append(standalone)
        metrics.count_proxies("in_use", -1)
        metrics.count_proxies("idle", 1)

    def _discard(self, standalone):
        metrics.count_proxies("in_use", -1)
        try:
            standalone.stop()
        except Exception:  # the connection is already broken; nothing to close cleanly
            pass

    def close(self):
        while self._idle:
            standalone = self._idle.pop()
            metrics.count_proxies("idle", -1)
            try:
                standalone.stop()
            except Exception:  # nothing left to close cleanly
                pass
