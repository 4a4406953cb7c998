"""Event consumers that neither lose nor double an event.

- `reliable_event_handler`: a Nameko event handler whose failures are
  retried with exponential backoff (through a per-queue retry queue whose
  messages expire back into the handler's queue), and after
  EVENT_MAX_RETRIES go to the `dead-letters` queue through RabbitMQ's
  dead-letter exchange: never acked away, never requeued forever. While the
  service's own database is unavailable, an event waits (without spending
  its retries) until it is back.
- `first_time`: records an event id in the consumer's `processed_events`
  table in the same transaction as the handler's effect, so a redelivered
  event has no second effect.
"""
import logging
from datetime import datetime, timezone

from kombu import Connection, Exchange, Queue
from nameko.amqp.publish import Publisher
from nameko.events import EventHandler
from sqlalchemy import String
from sqlalchemy.dialects.postgresql import UUID, insert
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import DateTime

from common.contract.errors import ServiceUnavailable
from common.contract.settings import settings_of
from common.kit.rpc import BROKER_ERRORS, ResilientQueueConsumer
from common.observability.metrics import EVENT_RETRIES, EVENTS_DEAD_LETTERED

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

    def setup(self):
        super().setup()
        settings = settings_of(self.container)
        quorum = settings.amqp_quorum_queues
        name = self.queue.name
        # Rejected messages go to the dead-letter exchange, not away.
        self.queue = Queue(name, exchange=self.queue.exchange, routing_key=self.queue.routing_key,
                           durable=True, auto_delete=False,
                           queue_arguments=replicated({"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE}, quorum))
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
            for entity in (dead_exchange, dead_queue, retry):
                entity.bind(channel).declare()

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


def processed_events_model(base):
    """The `processed_events` table in `base`'s schema."""

    class ProcessedEvent(base):
        __tablename__ = "processed_events"

        event_id: Mapped[str] = mapped_column(UUID(as_uuid=False), primary_key=True)
        handler: Mapped[str] = mapped_column(String(100))
        processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    table = ProcessedEvent.__table__
    # Built once: every event runs it, so its compiled form is reused (Core, no ORM work).
    ProcessedEvent.record_first_time = (insert(table).on_conflict_do_nothing(index_elements=["event_id"])
                                        .returning(table.c.event_id))
    return ProcessedEvent


def first_time(session, model, event_id, handler):
    """Record `event_id` in the caller's transaction; False if it was handled before.

    Concurrent deliveries of one event serialize on the primary key: the
    second waits for the first's transaction and then sees the row.
    """
    inserted = session.connection().execute(model.record_first_time, {
        "event_id": event_id, "handler": handler, "processed_at": datetime.now(timezone.utc)}).first()
    return inserted is not None
