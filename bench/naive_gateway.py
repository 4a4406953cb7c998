"""The naive peer: our gateway, but a fresh ClusterRpcProxy for every request.

This is how the Nameko docs show a web app calling services
(`with ClusterRpcProxy(config) as rpc: ...`): each request opens a broker
connection, declares and consumes its own reply queue, then tears it all
down. Everything else (routes, validation, auth, error mapping, gunicorn
settings) is the real gateway, so the ratio ours/naive is the worth of the
pool in gateway/rpc_pool.py.

Served like the gateway: `gunicorn -c gateway/gunicorn_conf.py bench.naive_gateway:app`.
"""
import logging
import time

from nameko.exceptions import RpcTimeout, UnknownService

from common.contract.context import DEADLINE_KEY
from common.contract.errors import ServiceUnavailable
from common.contract.settings import load_settings
from common.kit.rpc import BROKER_ERRORS, SignedClusterRpcProxy
from gateway.app import create_app
from gateway.rpc_pool import NoAnswer

log = logging.getLogger(__name__)


class PerRequestProxy:
    """Quacks like RpcProxyPool (`call`), with a new ClusterRpcProxy for every call (the signing
    one, as every caller must sign)."""

    def __init__(self, nameko_config, timeout):
        self._config = nameko_config
        self._timeout = timeout

    def call(self, service, method, args=(), kwargs=None, context_data=None, deadline=None, redrive=False):
        data = {**(context_data or {}), DEADLINE_KEY: deadline or time.time() + self._timeout}
        standalone = SignedClusterRpcProxy(self._config, context_data=data, timeout=self._timeout)
        try:
            proxy = standalone.start()
        except BROKER_ERRORS as exc:
            log.warning("cannot start an RPC proxy: %r", exc)
            raise ServiceUnavailable("The message broker is unreachable.", {"broker": "unreachable"}) from None
        try:
            return getattr(getattr(proxy, service), method)(*args, **(kwargs or {}))
        except UnknownService as exc:
            raise ServiceUnavailable(f"{exc.args[0]} is not running.", {"service": exc.args[0]}) from None
        except (RpcTimeout, *BROKER_ERRORS) as exc:
            raise NoAnswer(repr(exc)) from None
        finally:
            try:
                standalone.stop()
            except Exception:  # a broken connection has nothing left to close cleanly
                pass

    def close(self):
        pass


def create_naive_app(settings=None):
    settings = settings or load_settings()
    return create_app(settings, rpc_pool=PerRequestProxy(settings.nameko_config(), settings.rpc_timeout))


app = create_naive_app()
