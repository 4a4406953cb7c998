"""The cost of one nameko RPC hop with nothing behind it, for the bench.

Set up exactly like our services (same entrypoint, publishers and
adaptations: the bench starts it with `python -m common.kit.runner run`): what
one call to `ping` costs in CPU is what every hop of the order path pays
before any work of its own.
"""
from common.kit.rpc import rpc


class PingService:
    name = "bench_ping"

    @rpc
    def ping(self, payload=None):
        return payload
