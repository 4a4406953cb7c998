"""A pool of long-lived, started standalone RPC proxies.

A nameko ClusterRpcProxy is single-threaded and costly to start (a broker
connection and a reply queue), so a process keeps started ones and lends
each to one thread at a time. A proxy that failed at the transport level
(broker gone, reply timed out) is discarded, never lent again; the next
borrower starts a fresh one, which is how the pool recovers after a broker
restart.
"""
import logging
import threading
from collections import deque
from contextlib import contextmanager

from nameko.exceptions import RpcTimeout, UnknownService
from nameko.rpc import MethodProxy
from nameko.standalone.rpc import ClusterRpcProxy

from common.entrypoints import BROKER_ERRORS, RpcRequestPublisher, reuse_publisher_connections
from common.errors import ServiceUnavailable, UpstreamTimeout

log = logging.getLogger(__name__)

class FailFastPublisher(RpcRequestPublisher):
    """nameko's publisher retries a broker connection for ~10 s, holding the
    caller all that time; give up within about a second and answer 503."""
    retry_policy = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.3, "interval_max": 0.5}
    transport_options = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.3, "interval_max": 0.5}


class FailFastMethodProxy(MethodProxy):
    publisher_cls = FailFastPublisher


class _FailFastCluster:
    """`cluster.service.method(...)` over a started standalone proxy, failing fast."""

    def __init__(self, standalone):
        self._standalone = standalone

    def __getattr__(self, service_name):
        return _FailFastService(self._standalone, service_name)

    __getitem__ = __getattr__


class _FailFastService:
    def __init__(self, standalone, service_name):
        self._standalone = standalone
        self._service_name = service_name

    def __getattr__(self, method_name):
        return FailFastMethodProxy(self._standalone._worker_ctx, self._service_name, method_name,
                                   self._standalone._reply_listener)


class RpcProxyPool:
    def __init__(self, nameko_config, timeout, max_size):
        reuse_publisher_connections()
        self._config = nameko_config
        self._timeout = timeout
        self._idle = deque()
        # Bounds live proxies (and so broker connections) per process.
        self._slots = threading.BoundedSemaphore(max_size)

    @contextmanager
    def cluster(self, context_data=None):
        """Lend a cluster proxy: `with pool.cluster({...}) as rpc: rpc.svc.method()`.

        `context_data` (e.g. the request id) travels with every call made
        through it. Transport failures become ServiceUnavailable (503) and
        UpstreamTimeout (504); errors the services raise pass through.
        """
        if not self._slots.acquire(timeout=self._timeout):
            raise ServiceUnavailable("All RPC connections are busy.", {"rpc_pool": "exhausted"})
        try:
            standalone = self._checkout()
            # The proxy's worker context is what nameko sends as context data.
            standalone._worker_ctx.data = dict(context_data or {})
            try:
                yield _FailFastCluster(standalone)
            except RpcTimeout:
                self._discard(standalone)
                raise UpstreamTimeout("A service did not answer in time.",
                                      {"timeout_seconds": self._timeout}) from None
            except UnknownService as exc:  # a publish nobody could take: the service is down
                self._idle.append(standalone)
                raise ServiceUnavailable(f"{exc.args[0]} is not running.",
                                         {"service": exc.args[0]}) from None
            except BROKER_ERRORS as exc:
                self._discard(standalone)
                log.warning("RPC proxy failed on the transport: %r", exc)
                raise ServiceUnavailable("The message broker is unreachable.",
                                         {"broker": "unreachable"}) from None
            except BaseException:
                self._idle.append(standalone)
                raise
            else:
                self._idle.append(standalone)
        finally:
            self._slots.release()

    def _checkout(self):
        try:
            return self._idle.pop()
        except IndexError:
            pass
        standalone = ClusterRpcProxy(self._config, timeout=self._timeout)
        try:
            standalone.start()
        except BROKER_ERRORS as exc:
            log.warning("cannot start an RPC proxy: %r", exc)
            raise ServiceUnavailable("The message broker is unreachable.",
                                     {"broker": "unreachable"}) from None
        return standalone

    def _discard(self, standalone):
        try:
            standalone.stop()
        except Exception:  # the connection is already broken; nothing to close cleanly
            pass

    def close(self):
        while self._idle:
            self._discard(self._idle.pop())
