"""Nameko entrypoints that survive a broker outage.

With nameko 2.14's own `rpc`, a reply that cannot be published (the broker
is restarting) raises inside the container's worker thread and kills the
whole service. Here the failed reply is logged and left unacknowledged: the
caller times out (504), the broker redelivers the request when it is back,
and handlers are idempotent where that matters (create_order's attempt id).
"""
import logging

from amqp.exceptions import ConnectionError as AmqpConnectionError
from kombu.exceptions import OperationalError
from nameko.rpc import Rpc

log = logging.getLogger(__name__)

BROKER_ERRORS = (OSError, OperationalError, AmqpConnectionError)


class ResilientRpc(Rpc):
    def handle_result(self, message, worker_ctx, result, exc_info):
        try:
            return super().handle_result(message, worker_ctx, result, exc_info)
        except BROKER_ERRORS as exc:
            log.warning("could not reply to %s (broker unreachable: %r); the request will be redelivered",
                        worker_ctx.call_id, exc)
            return result, exc_info


rpc = ResilientRpc.decorator
