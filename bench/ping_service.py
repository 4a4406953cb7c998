"""The cost of one nameko RPC hop with nothing behind it, for the bench.

Set up exactly like our services (same publishers, same config): what one
call to `ping` costs in CPU is what every hop of the order path pays before
any work of its own.
"""
import common  # noqa: F401  (eventlet's deprecation notice filtered)
from common.entrypoints import configure_nameko, rpc

configure_nameko()


class PingService:
    name = "bench_ping"

    @rpc
    def ping(self, payload=None):
        return payload
