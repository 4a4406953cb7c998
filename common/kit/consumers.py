"""Event consumers that neither lose nor double an event.

- `reliable_event_handler`: a Nameko event handler whose failures are
  retried with exponential backoff (through a per-queue retry queue whose
  messages expire back into the handler's queue), and after
  EVENT_MAX_RETRIES go to the `dead-letters` queue through RabbitMQ's
  dead-letter exchange: never acked away, never requeued forever. While the
  service's own database is unavailable, an event waits (without spending
  its retries) until it is back.
- `batch_event_handler`: the same, for a handler that takes a list of
  envelopes and handles them in one transaction (see BatchEventHandler).
- `unbound_batch_event_handler`: a batch handler whose queue is declared
  without its binding to the source's exchange: the service binds and unbinds
  it itself (`binding()`), e.g. only while someone wants its events.
- `first_time` / `first_times`: record event ids in the consumer's
  `processed_events` table in the same transaction as the handler's effect,
  so a redelivered event has no second effect.
"""
import logging
from datetime import datetime, timezone
from functools import partial

from eventlet.event import Event
from kombu import Connection, Exchange, Queue
from nameko.amqp.publish import Publisher
from nameko.events import EventHandler
from nameko.exceptions import ContainerBeingKilled
from sqlalchemy import String, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY, UUID, insert
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import DateTime

from common.contract.errors import ServiceUnavailable
from common.contract.settings import settings_of
from common.kit.batch_publisher import corked
from common.kit.rpc import BROKER_ERRORS, ResilientQueueConsumer
from common.observability.metrics import EVENT_BATCH_SIZE, EVENT_RETRIES, EVENTS_DEAD_LETTERED

log = logging.getLogger(__name__)

DEAD_LETTER_EXCHANGE = "dead-letters"
DEAD_LETTER_QUEUE = "dead-letters"
RETRIES_HEADER = "x-retries"
TRANSIENT_RETRY_SECONDS = 2.0


def replicated(queue_arguments, quorum):
    """`queue_arguments` for a queue that survives the loss of a broker node: with
    AMQP_QUORUM_QUEUES a quorum queue (replicated on a majority of the cluster's
    nodes), dead-lettering at least once; otherwise a classic durable queue."""
    if not quorum:
        return queue_arguments
    arguments = {**queue_arguments, "x-queue-type": "quorum"}
    if "x-dead-letter-exchange" in arguments:
        # At-least-once dead-lettering (needs reject-publish overflow): a message
        # moves to its dead-letter target only once the target has it.
        arguments.update({"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"})
    return arguments


def dead_letter_topology(quorum=False):
    """The dead-letter exchange and the one queue that keeps every dead letter."""
    exchange = Exchange(DEAD_LETTER_EXCHANGE, type="fanout", durable=True)
    return exchange, Queue(DEAD_LETTER_QUEUE, exchange=exchange, durable=True,
                           queue_arguments=replicated({}, quorum))


def retry_queue_name(queue_name):
    return f"{queue_name}.retry"


class ReliableEventHandler(EventHandler):
    queue_consumer = ResilientQueueConsumer()
    # False: the queue is declared with no binding (kombu binds a queue only to a named exchange),
    # so neither this setup nor the consumer's (re)declaring it on every reconnect adds one; the
    # service binds it as `binding()` says, when it wants this handler's events.
    binds_queue = True

    def setup(self):
        super().setup()
        settings = settings_of(self.container)
        quorum = settings.amqp_quorum_queues
        name = self.queue.name
        self.source_exchange = self.queue.exchange
        # Rejected messages go to the dead-letter exchange, not away.
        bound = {"exchange": self.source_exchange, "routing_key": self.queue.routing_key} if self.binds_queue else {}
        self.queue = Queue(name, durable=True, auto_delete=False,
                           queue_arguments=replicated({"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE}, quorum),
                           **bound)
        # Nobody consumes the retry queue: each message waits out its expiration,
        # then RabbitMQ dead-letters it straight back into the handler's queue.
        retry = Queue(retry_queue_name(name), durable=True, queue_arguments=replicated({
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": name}, quorum))
        dead_exchange, dead_queue = dead_letter_topology(quorum)
        self.max_retries, self.retry_base_seconds = settings.event_max_retries, settings.event_retry_base_seconds
        amqp_uri = settings.amqp_uri
        # Its own (pooled, confirmed) connection: never write on the consumer's channel from a worker.
        self.retry_publisher = Publisher(amqp_uri)
        with Connection(amqp_uri) as connection:
            channel = connection.channel()
            entities = [dead_exchange, dead_queue, retry]
            if not self.binds_queue:
                # The source's exchange and the queue too (the consumer declares the exchange only with a
                # binding, and the queue once it starts): the service can bind it from now on.
                entities += [self.source_exchange, self.queue]
            for entity in entities:
                entity.bind(channel).declare()

    def binding(self):
        """(queue, exchange, routing key): the binding that routes this handler's events to its queue."""
        return self.queue.name, self.source_exchange.name, self.event_type

    def handle_message_processed(self, message, result=None, exc_info=None):
        if exc_info is None:
            self.queue_consumer.ack_message(message)
            return
        retries = int((message.headers or {}).get(RETRIES_HEADER, 0))
        if isinstance(exc_info[1], ServiceUnavailable):
            # Our database is down, not the event's fault: wait for it without
            # spending the event's retries (it would be dead-lettered in seconds).
            self._retry_later(message, retries, TRANSIENT_RETRY_SECONDS, exc_info[1])
            return
        if retries >= self.max_retries:
            log.error("event on %s failed %d times: dead-lettered", self.queue.name, retries + 1)
            message.reject(requeue=False)
            EVENTS_DEAD_LETTERED.labels(self.container.service_name, self.queue.name).inc()
            return
        self._retry_later(message, retries + 1, self.retry_base_seconds * 2 ** retries, exc_info[1])

    def _retry_later(self, message, retries, delay, error):
        log.warning("event on %s failed (%r); retry %d in %.1fs", self.queue.name, error, retries, delay)
        EVENT_RETRIES.labels(self.container.service_name, self.queue.name).inc()
        try:
            self.retry_publisher.publish(
                message.payload, exchange="", routing_key=retry_queue_name(self.queue.name),
                headers={**(message.headers or {}), RETRIES_HEADER: retries}, expiration=delay)
        except BROKER_ERRORS as exc:
            # Left unacknowledged: the broker redelivers it once the connection is back.
            log.warning("could not schedule the retry (%r); the event will be redelivered", exc)
            return
        self.queue_consumer.ack_message(message)


reliable_event_handler = ReliableEventHandler.decorator


class BatchQueueConsumer(ResilientQueueConsumer):
    """The queue consumer of a service's batch handlers: a channel of their own,
    whose prefetch is two batches (a prefetch applies to each consumer of a
    channel alike; the service's other consumers keep MAX_WORKERS). With one,
    the batch waiting while another runs would be what the running one left
    of the prefetch: batches would alternate between k and prefetch - k."""

    @property
    def prefetch_count(self):
        batch_max = settings_of(self.container).consumer_batch_max
        return self.container.max_workers if batch_max == 1 else 2 * batch_max


class BatchEventHandler(ReliableEventHandler):
    """A reliable event handler whose method takes a list of envelopes and
    handles them in one transaction (dedup rows, effects, outbox rows): one
    transaction's fixed costs shared by many events.

    Batches form by themselves, with no added wait: while one worker of this
    handler runs, the messages that arrive (up to its consumer's prefetch, see
    BatchQueueConsumer) wait; when it is done, the next worker takes all of
    them, up to CONSUMER_BATCH_MAX. At low load every batch is one message.
    Messages are acked after the worker returns, i.e. after its commit.
    CONSUMER_BATCH_MAX=1 turns batching off: each message is a worker of its
    own as soon as it arrives, up to MAX_WORKERS at once, as with
    ReliableEventHandler.

    A batch that fails is handled again one envelope per worker, one after
    another, so only the event at fault goes through the retries and the dead
    letters of ReliableEventHandler; its neighbours take effect once. A batch
    that meets an unavailable database is not: every event in it waits for the
    database without spending its retries.

    A worker's context data is what all its messages carry alike: a batch of
    one keeps its request id and traceparent (its logs and trace); a larger
    batch belongs to no one request: each event's request id is in its
    envelope, and the handler passes it on to what it emits for that event
    (`tx.emit(..., request_id=envelope["request_id"])`).
    """

    queue_consumer = BatchQueueConsumer()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_max = 1
        self._waiting = []  # (body, message) delivered, not yet given to a worker
        self._busy = False
        self._stopping = False

    def setup(self):
        super().setup()
        self.batch_max = settings_of(self.container).consumer_batch_max

    def stop(self):
        # Messages still waiting stay unacknowledged: the broker redelivers them.
        self._stopping = True
        super().stop()

    def handle_message(self, body, message):
        if self.batch_max == 1:
            self._spawn([(body, message)], _nothing)
            return
        self._waiting.append((body, message))
        if not self._busy:
            self._next_batch()

    def _next_batch(self):
        if self._stopping or not self._waiting:
            self._busy = False
            return
        self._busy = True
        batch, self._waiting = self._waiting[:self.batch_max], self._waiting[self.batch_max:]
        self._spawn(batch, self._after_batch)

    def _after_batch(self):
        # Not from the finishing worker itself: spawning waits for a free worker,
        # and the finishing worker may hold the last one.
        self.container.spawn_managed_thread(self._next_batch, identifier=f"{self.method_name}.next_batch")

    def _spawn(self, batch, then):
        """Run the method on `batch` in a worker; False if the container is being killed."""
        EVENT_BATCH_SIZE.labels(self.container.service_name, self.method_name).observe(len(batch))
        try:
            self.container.spawn_worker(self, ([body for body, _ in batch],), {},
                                        context_data=_shared([self.unpack_message_headers(m) for _, m in batch]),
                                        handle_result=partial(self._settle, batch, then))
        except ContainerBeingKilled:
            for _, message in batch:
                self.queue_consumer.requeue_message(message)
            return False
        return True

    def _settle(self, batch, then, worker_ctx, result=None, exc_info=None):
        if self.falls_back(len(batch), exc_info):
            log.warning("a batch of %d events on %s failed (%r): handling them one at a time",
                        len(batch), self.queue.name, exc_info[1])
            self.container.spawn_managed_thread(partial(self._one_at_a_time, batch, then),
                                                identifier=f"{self.method_name}.one_at_a_time")
        else:
            # The batch's acks leave together, not a segment (and a broker wake-up) each.
            with corked(_socket_of(batch[0][1])):
                for _, message in batch:
                    self.handle_message_processed(message, result, exc_info)
            then()
        return result, exc_info

    def _one_at_a_time(self, batch, then):
        for delivered in batch:
            done = Event()
            if self._stopping or not self._spawn([delivered], done.send):
                # Left unacknowledged (or requeued): the broker delivers them again.
                break
            done.wait()
        then()

    @staticmethod
    def falls_back(size, exc_info):
        """Whether a worker's batch is to be handled again one event at a time."""
        return exc_info is not None and size > 1 and not isinstance(exc_info[1], ServiceUnavailable)

    def events_settled(self, worker_ctx, exc_info):
        """How many events a worker's outcome is final for (the metrics count events, not workers)."""
        size = len(worker_ctx.args[0])
        return 0 if self.falls_back(size, exc_info) else size


batch_event_handler = BatchEventHandler.decorator


class UnboundBatchEventHandler(BatchEventHandler):
    """A BatchEventHandler whose queue (durable, with its retries and dead letters as ever) gets
    no event until the service binds it (`binding()`); its setup declares the queue and the
    source's exchange, so the binding can be made from then on."""
    binds_queue = False


unbound_batch_event_handler = UnboundBatchEventHandler.decorator


def _nothing():
    pass


def _socket_of(message):
    """The socket `message` came on, or None once its connection is closed."""
    connection = getattr(getattr(message, "channel", None), "connection", None)
    transport = getattr(connection, "transport", None)
    return getattr(transport, "sock", None)


def _shared(headers):
    """The context data every message of a batch carries alike."""
    first, *others = headers
    return {key: value for key, value in first.items() if all(other.get(key) == value for other in others)}


def processed_events_model(base):
    """The `processed_events` table in `base`'s schema."""

    class ProcessedEvent(base):
        __tablename__ = "processed_events"

        event_id: Mapped[str] = mapped_column(UUID(as_uuid=False), primary_key=True)
        handler: Mapped[str] = mapped_column(String(100))
        processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    table = ProcessedEvent.__table__
    # Built once: every event runs them, so their compiled forms are reused (Core, no ORM work).
    ProcessedEvent.record_first_time = (insert(table).on_conflict_do_nothing(index_elements=["event_id"])
                                        .returning(table.c.event_id))
    # Many ids in one statement (an array, so any number compiles alike), in id order:
    # two transactions recording overlapping batches wait for each other, never deadlock.
    ids = (select(func.unnest(bindparam("event_ids", type_=ARRAY(UUID(as_uuid=False)))).label("event_id"))
           .distinct().subquery())
    ProcessedEvent.record_first_times = (
        insert(table).from_select(["event_id", "handler", "processed_at"],
                                  select(ids.c.event_id, bindparam("handler", type_=String), func.now())
                                  .order_by(ids.c.event_id))
        .on_conflict_do_nothing(index_elements=["event_id"]).returning(table.c.event_id))
    return ProcessedEvent


def first_time(session, model, event_id, handler):
    """Record `event_id` in the caller's transaction; False if it was handled before.

    Concurrent deliveries of one event serialize on the primary key: the
    second waits for the first's transaction and then sees the row.
    """
    inserted = session.connection().execute(model.record_first_time, {
        "event_id": event_id, "handler": handler, "processed_at": datetime.now(timezone.utc)}).first()
    return inserted is not None


def first_times(session, model, event_ids, handler):
    """`first_time` for many events in one statement: the set of `event_ids` not handled before."""
    if not event_ids:
        return set()
    inserted = session.connection().execute(model.record_first_times, {"event_ids": list(event_ids),
                                                                        "handler": handler})
    return {event_id for (event_id,) in inserted}
