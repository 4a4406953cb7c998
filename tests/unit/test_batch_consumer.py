"""BatchEventHandler's rules (common/kit/consumers.py), on a stand-in container and broker:
what forms a batch, when messages are acked, and how a failed batch falls back."""
from types import SimpleNamespace

import eventlet
import pytest
from nameko.exceptions import ContainerBeingKilled

from common.contract.errors import ServiceUnavailable
from common.kit.consumers import RETRIES_HEADER, TRANSIENT_RETRY_SECONDS, BatchEventHandler, retry_queue_name

QUEUE = "evt-order_service-order_created--customer_service.on_order_created"


class Message:
    def __init__(self, number, retries=None):
        self.number = number
        self.headers = {"nameko.request_id": f"request-{number}", "nameko.origin": "outbox"}
        if retries is not None:
            self.headers[RETRIES_HEADER] = retries
        self.payload = {"event_id": f"event-{number}"}
        self.rejected = False

    def reject(self, requeue):
        assert requeue is False
        self.rejected = True


class Worker:
    """A worker the handler spawned, until the test finishes it."""

    def __init__(self, entrypoint, envelopes, context, handle_result):
        self.envelopes, self.context, self._handle_result = envelopes, context, handle_result
        self.ctx = SimpleNamespace(args=(envelopes,), service_name="customer_service", entrypoint=entrypoint)

    def numbers(self):
        return [int(envelope["event_id"].split("-")[1]) for envelope in self.envelopes]


class World:
    """The handler, its container's workers and its broker's acks, requeues and retries."""

    def __init__(self, batch_max=3, max_retries=2):
        self.workers, self.acked, self.requeued, self.retried = [], [], [], []
        self.being_killed = False
        handler = BatchEventHandler("order_service", "order_created")
        handler.container = SimpleNamespace(service_name="customer_service", spawn_worker=self._spawn_worker,
                                            spawn_managed_thread=lambda fn, identifier=None: eventlet.spawn(fn))
        handler.method_name = "on_order_created"
        handler.queue = SimpleNamespace(name=QUEUE)
        handler.queue_consumer = SimpleNamespace(ack_message=lambda m: self.acked.append(m.number),
                                                 requeue_message=lambda m: self.requeued.append(m.number),
                                                 unregister_provider=lambda provider: None)
        handler.retry_publisher = SimpleNamespace(publish=self._publish)
        handler.max_retries, handler.retry_base_seconds, handler.batch_max = max_retries, 1.0, batch_max
        self.handler = handler
        self.messages = {}

    def _spawn_worker(self, entrypoint, args, kwargs, context_data=None, handle_result=None):
        if self.being_killed:
            raise ContainerBeingKilled()
        worker = Worker(entrypoint, args[0], context_data, handle_result)
        self.workers.append(worker)
        return worker.ctx

    def _publish(self, payload, exchange, routing_key, headers, expiration):
        assert (exchange, routing_key) == ("", retry_queue_name(QUEUE))
        self.retried.append((int(payload["event_id"].split("-")[1]), headers[RETRIES_HEADER], expiration))

    def deliver(self, *numbers, retries=None):
        for number in numbers:
            message = self.messages[number] = Message(number, retries)
            self.handler.handle_message(message.payload, message)

    def running(self):
        """The workers spawned and not yet finished, each as the event numbers it was given."""
        return [worker.numbers() for worker in self.workers]

    def finish(self, error=None, fails=()):
        """Finish the oldest running worker: with `error`, or failing if it holds an event in `fails`.
        Returns its context and outcome (what nameko hands the dependencies)."""
        worker = self.workers.pop(0)
        if error is None and set(worker.numbers()) & set(fails):
            error = ValueError("poison")
        exc_info = None if error is None else (type(error), error, None)
        self.events_settled = self.handler.events_settled(worker.ctx, exc_info)
        worker._handle_result(worker.ctx, None, exc_info)
        for _ in range(5):  # the managed threads the handler spawned
            eventlet.sleep(0)
        return worker.ctx, exc_info


def test_at_low_load_every_batch_is_one_event_with_its_own_context():
    world = World()
    world.deliver(1)
    assert world.running() == [[1]]
    assert world.workers[0].context == {"request_id": "request-1", "origin": "outbox"}
    world.finish()
    assert (world.acked, world.running(), world.events_settled) == ([1], [], 1)
    world.deliver(2)
    assert world.running() == [[2]]


def test_what_arrives_while_a_batch_runs_is_the_next_batch_up_to_the_bound():
    world = World(batch_max=3)
    world.deliver(1)
    world.deliver(2, 3, 4, 5)
    assert world.running() == [[1]]  # one worker of the handler at a time
    world.finish()
    assert world.acked == [1] and world.running() == [[2, 3, 4]]
    # A batch's context is what its messages share: not any one request's id.
    assert world.workers[0].context == {"origin": "outbox"}
    world.deliver(6)
    world.finish()
    assert (world.acked, world.events_settled) == ([1, 2, 3, 4], 3)
    assert world.running() == [[5, 6]]
    world.finish()
    assert world.acked == [1, 2, 3, 4, 5, 6] and world.running() == []


def test_a_bound_of_one_turns_batching_off_one_worker_per_event_at_once():
    world = World(batch_max=1)
    world.deliver(1, 2, 3)
    assert world.running() == [[1], [2], [3]]
    assert [worker.context["request_id"] for worker in world.workers] == ["request-1", "request-2", "request-3"]
    world.finish(fails=[2])
    world.finish(fails=[2])
    world.finish(fails=[2])
    assert (world.acked, world.retried, world.running()) == ([1, 2, 3], [(2, 1, 1.0)], [])


@pytest.mark.parametrize("batch_max, prefetch", [(1, 10), (4, 8), (100, 200)])
def test_batch_consumers_prefetch_two_batches_on_a_channel_of_their_own(batch_max, prefetch):
    from common.kit.consumers import BatchQueueConsumer
    from common.kit.rpc import ResilientQueueConsumer
    from tests.unit.fakes import SETTINGS

    consumer = BatchQueueConsumer()
    consumer.container = SimpleNamespace(max_workers=10, config={
        "SETTINGS": SETTINGS.model_copy(update={"consumer_batch_max": batch_max})})
    assert consumer.prefetch_count == prefetch
    assert isinstance(consumer, ResilientQueueConsumer) and consumer.sharing_key is not ResilientQueueConsumer


def test_nothing_is_acked_before_its_batch_returns():
    world = World()
    world.deliver(1)
    world.deliver(2, 3)
    assert world.acked == []
    world.finish()
    assert world.acked == [1]


def test_a_failed_batch_is_handled_again_one_event_at_a_time_and_only_the_poison_one_retries():
    world = World()
    world.deliver(1)
    world.deliver(2, 3, 4)
    world.finish()
    world.deliver(5)  # arrives during the fallback: it waits for it
    world.finish(fails=[3])
    assert (world.acked, world.retried, world.events_settled) == ([1], [], 0)
    for expected in ([2], [3], [4]):
        assert world.running() == [expected]  # one after another
        world.finish(fails=[3])
        assert world.events_settled == 1
    assert world.retried == [(3, 1, 1.0)]  # through the retry queue, as one event alone would
    assert world.acked == [1, 2, 3, 4]  # 3 once its retry holds it
    assert world.running() == [[5]]


def test_a_poison_event_out_of_retries_is_dead_lettered_alone():
    world = World(max_retries=2)
    world.deliver(1)
    world.deliver(2, retries=2)
    world.deliver(3)
    world.finish()
    world.finish(fails=[2])
    world.finish(fails=[2])
    world.finish(fails=[2])
    assert world.acked == [1, 3] and world.retried == []
    assert [number for number, message in world.messages.items() if message.rejected] == [2]


def test_an_unavailable_database_makes_every_event_of_the_batch_wait_without_spending_retries():
    world = World()
    world.deliver(1)
    world.deliver(2, 3, retries=1)
    world.finish()
    world.finish(ServiceUnavailable("The database is unavailable."))
    assert world.events_settled == 2 and world.running() == []
    assert world.retried == [(2, 1, TRANSIENT_RETRY_SECONDS), (3, 1, TRANSIENT_RETRY_SECONDS)]
    assert world.acked == [1, 2, 3]  # acked once the retry holds them


def test_a_container_being_killed_requeues_the_batch_it_cannot_start():
    world = World()
    world.deliver(1)
    world.deliver(2, 3)
    world.being_killed = True
    world.finish()
    assert (world.acked, world.requeued, world.running()) == ([1], [2, 3], [])


@pytest.mark.parametrize("during_fallback", [False, True])
def test_a_stopping_handler_starts_no_other_batch(during_fallback):
    world = World()
    world.deliver(1)
    world.deliver(2, 3)
    if during_fallback:
        world.finish()
        world.finish(fails=[2])
        assert world.running() == [[2]]
    world.handler.stop()
    world.finish(fails=[2])
    world.deliver(4)
    # Unacknowledged, not lost: the broker delivers them again.
    assert world.running() == [] and 4 not in world.acked


def test_the_metrics_count_events_and_batch_sizes_not_workers():
    from prometheus_client import REGISTRY

    from common.observability.metrics import ServiceMetrics

    def handled(outcome):
        return REGISTRY.get_sample_value("events_handled_total", {
            "service": "customer_service", "handler": "on_order_created", "outcome": outcome}) or 0

    def batches():
        labels = {"service": "customer_service", "handler": "on_order_created"}
        return [REGISTRY.get_sample_value(f"event_batch_size_{part}", labels) or 0 for part in ("count", "sum")]

    world = World()
    metrics = ServiceMetrics()
    metrics.on, metrics._started = True, {}
    before_ok, before_error, before_batches = handled("ok"), handled("error"), batches()
    world.deliver(1)
    world.deliver(2, 3, 4)
    for _ in range(5):  # [1], [2, 3, 4] failing, then [2], [3] failing, [4]
        ctx, exc_info = world.finish(fails=[3])
        metrics.worker_result(ctx, None, exc_info)
    assert (handled("ok") - before_ok, handled("error") - before_error) == (3, 1)
    assert [now - before for now, before in zip(batches(), before_batches)] == [5, 7]  # 5 workers, 7 events
