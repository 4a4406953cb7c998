"""The naive peer: our gateway, but a fresh ClusterRpcProxy for every request.

This is how the Nameko docs show a web app calling services
(`with ClusterRpcProxy(config) as rpc: ...`): each request opens a broker
connection, declares and consumes its own reply queue, then tears it all
down. Everything else (routes, validation, auth, error mapping, gunicorn
settings) is the real gateway, so the ratio ours/naive is the worth of the
pool in common/rpc_pool.py.

Served like the gateway: `gunicorn -c gateway/gunicorn_conf.py bench.naive_gateway:app`.
"""
import logging
from contextlib import contextmanager

from nameko.exceptions import RpcTimeout, UnknownService
from nameko.standalone.rpc import ClusterRpcProxy

from common.config import Settings
from common.errors import ServiceUnavailable, UpstreamTimeout
from common.rpc_pool import BROKER_ERRORS
from gateway.app import create_app

log = logging.getLogger(__name__)


class PerRequestProxy:
    """Quacks like RpcProxyPool: `with proxy.cluster(context_data) as rpc: rpc.svc.method()`."""

    def __init__(self, nameko_config, timeout):
        self._config = nameko_config
        self._timeout = timeout

    @contextmanager
    def cluster(self, context_data=None):
        standalone = ClusterRpcProxy(self._config, context_data=dict(context_data or {}), timeout=self._timeout)
        try:
            proxy = standalone.start()
        except BROKER_ERRORS as exc:
            log.warning("cannot start an RPC proxy: %r", exc)
            raise ServiceUnavailable("The message broker is unreachable.", {"broker": "unreachable"}) from None
        try:
            yield proxy
        except RpcTimeout:
            raise UpstreamTimeout("A service did not answer in time.", {"timeout_seconds": self._timeout}) from None
        except UnknownService as exc:
            raise ServiceUnavailable(f"{exc.args[0]} is not running.", {"service": exc.args[0]}) from None
        except BROKER_ERRORS:
            raise ServiceUnavailable("The message broker is unreachable.", {"broker": "unreachable"}) from None
        finally:
            try:
                standalone.stop()
            except Exception:  # a broken connection has nothing left to close cleanly
                pass

    def close(self):
        pass


def create_naive_app(settings=None):
    settings = settings or Settings.from_env()
    return create_app(settings, rpc_pool=PerRequestProxy(settings.nameko_config(), settings.rpc_timeout))


app = create_naive_app()
