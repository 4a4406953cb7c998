"""Which events reach webhook_service: each handler's queue is bound to its source's exchange only
while a webhook wants its event type, so an event no webhook subscribes to costs webhook_service
nothing (RabbitMQ does not even route it there).

The handlers (common/kit/consumers.py UnboundBatchEventHandler, one per event type) declare their
durable queues, retries and dead letters as ever, with no binding. `EventBindings` binds and
unbinds them over a connection of its own; the service decides what is wanted (storage.py
`wanted_event_types`, under `lock_bindings`) and calls it:

- `route(event_types)`: before a webhook that wants them is created or enabled (its transaction
  holding the lock until it commits);
- `apply(wanted, among)`: the wanted bound and the others unbound: at start (which also takes
  away the bindings an older version declared), on a timer, after a delete.

Binding what is bound and unbinding what is not are no-ops for RabbitMQ, so every call states the
whole of what it wants and nothing is remembered but what to log.
"""
import logging

import eventlet
from amqp.exceptions import AMQPError
from eventlet.semaphore import Semaphore
from kombu import Connection
from nameko.extensions import DependencyProvider

from common.contract.settings import settings_of
from common.kit.consumers import UnboundBatchEventHandler
from common.kit.rpc import BROKER_ERRORS
from webhook_service import metrics

log = logging.getLogger(__name__)

# What a bind or unbind that did not happen raises: the broker unreachable or gone, a refusal.
BINDING_ERRORS = (*BROKER_ERRORS, AMQPError)
# A broker that does not answer fails the operations after this long, as an unreachable one does
# (the caller holds a database lock meanwhile).
TIMEOUT_SECONDS = 10


class EventBindings(DependencyProvider):
    """`self.bindings` in a worker: binds and unbinds the queues of the service's UnboundBatchEventHandlers."""

    def setup(self):
        self.amqp_uri = settings_of(self.container).amqp_uri
        self._connection = self._channel = None
        self._one_at_a_time = Semaphore()  # one channel: one sequence of operations at a time
        self.routed = {}  # event type -> what this process last made of its binding (True: bound)
        self.looked = False  # whether it has set every type's binding once (at start)

    def stop(self):
        self._close()

    def kill(self):
        self._close()

    def get_dependency(self, worker_ctx):
        return self

    def handlers(self):
        """{event type: its handler} (after setup: their queues are named then)."""
        return {entrypoint.event_type: entrypoint for entrypoint in self.container.entrypoints
                if isinstance(entrypoint, UnboundBatchEventHandler)}

    def route(self, event_types):
        """Bind `event_types`' queues (BINDING_ERRORS if it could not be done). Not `bind`: nameko's
        extensions have one."""
        self._set({event_type: True for event_type in event_types})

    def apply(self, wanted, among=None):
        """Bind the types in `wanted`, unbind the others (of `among`, default: every handler's)."""
        self._set({event_type: event_type in wanted for event_type in (self.handlers() if among is None else among)},
                  whole=among is None)

    def _set(self, states, whole=False):
        handlers = self.handlers()
        with self._one_at_a_time:
            for attempt in (1, 2):  # once more on a new connection: the one kept may have died idle
                try:
                    with eventlet.Timeout(TIMEOUT_SECONDS, TimeoutError(f"no answer in {TIMEOUT_SECONDS} s")):
                        channel = self._open()
                        for event_type, bound in states.items():
                            queue, exchange, routing_key = handlers[event_type].binding()
                            operation = channel.queue_bind if bound else channel.queue_unbind
                            operation(queue=queue, exchange=exchange, routing_key=routing_key)
                    break
                except BINDING_ERRORS:
                    self._close()
                    if attempt == 2:
                        raise
            self._note(states, whole)

    def _note(self, states, whole):
        first_look = whole and not self.looked  # at start: what the broker had before is unknown
        self.looked = self.looked or whole
        added = sorted(event_type for event_type, bound in states.items() if bound and not self.routed.get(event_type))
        removed = sorted(event_type for event_type, bound in states.items() if not bound and self.routed.get(event_type))
        self.routed.update(states)
        if first_look:
            log.info("event types routed to webhook_service: %s; no other (no webhook wants them)",
                     ", ".join(sorted(event_type for event_type, bound in self.routed.items() if bound)) or "none")
        else:
            if added:
                log.info("now routed to webhook_service (a webhook wants them): %s", ", ".join(added))
            if removed:
                log.info("no longer routed to webhook_service (no webhook wants them): %s", ", ".join(removed))
        metrics.BOUND_EVENT_TYPES.labels(self.container.service_name).set(sum(self.routed.values()))

    def _open(self):
        if self._channel is None:
            connection = Connection(self.amqp_uri, connect_timeout=TIMEOUT_SECONDS)
            self._connection = connection
            self._channel = connection.channel()
        return self._channel

    def _close(self):
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.collect()  # no goodbye to a broker that may not answer
            except Exception as exc:  # half open, or already gone: dropped all the same
                log.debug("dropping the bindings' connection: %r", exc)
