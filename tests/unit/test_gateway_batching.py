"""The gateway's batches of order creates (gateway/batching.py), with a stand-in RPC pool."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from common.contract.errors import DeadlineExceeded, ServiceUnavailable
from gateway.batching import BATCH_CALLER, CreateBatches
from gateway.rpc_pool import NoAnswer


class Pool:
    """Answers create_orders after `seconds`, each entry with its attempt id; records each batch."""

    def __init__(self, seconds=0.05, error=None):
        self.seconds, self.error, self.batches, self.threads = seconds, error, [], []
        self._lock = threading.Lock()
        self.at_once = self.most_at_once = 0

    def call(self, service, method, args, context_data, deadline, redrive):
        (entries,) = args
        with self._lock:
            self.batches.append((service, method, [entry["attempt_id"] for entry in entries], context_data,
                                 deadline, redrive))
            self.threads.append(threading.current_thread())
        with self._lock:
            self.at_once += 1
            self.most_at_once = max(self.most_at_once, self.at_once)
        time.sleep(self.seconds)
        with self._lock:
            self.at_once -= 1
        if self.error is not None:
            raise self.error
        return [{"order": {"id": entry["attempt_id"]}} for entry in entries]


def entry(attempt_id, seconds_left=5.0):
    return {"attempt_id": attempt_id, "data": {}, "idempotency_key": None, "caller": {"sub": "a", "role": "admin"},
            "request_id": f"r-{attempt_id}", "deadline": time.time() + seconds_left, "traceparent": None}


def test_one_create_at_a_time_is_a_batch_of_one_and_waits_for_nothing():
    pool = Pool(seconds=0)
    batches = CreateBatches(pool, max_size=32, in_flight=2)
    for attempt in ("a", "b", "c"):
        assert batches.create(entry(attempt)) == {"order": {"id": attempt}}
    assert [ids for _, _, ids, *_ in pool.batches] == [["a"], ["b"], ["c"]]
    assert pool.threads == [threading.current_thread()] * 3  # sent by the request's own thread: no hand-over
    service, method, _, context, _, redrive = pool.batches[0]
    assert (service, method, redrive) == ("order_service", "create_orders", True)
    assert context["caller"] == BATCH_CALLER and context["request_id"] == "r-a"


def test_creates_that_arrive_while_batches_are_in_flight_form_the_next_ones():
    pool = Pool(seconds=0.2)
    batches = CreateBatches(pool, max_size=8, in_flight=1)
    with ThreadPoolExecutor(max_workers=20) as threads:
        outcomes = list(threads.map(lambda i: batches.create(entry(str(i))), range(20)))
    assert outcomes == [{"order": {"id": str(i)}} for i in range(20)]
    sizes = [len(ids) for _, _, ids, *_ in pool.batches]
    assert sum(sizes) == 20 and max(sizes) <= 8 and len(sizes) < 20
    assert pool.most_at_once == 1  # a lone create counts as the batch in flight
    assert sorted(i for _, _, ids, *_ in pool.batches for i in ids) == sorted(str(i) for i in range(20))


def test_a_batch_that_failed_is_each_entrys_failure():
    batches = CreateBatches(Pool(error=ServiceUnavailable("down", {"broker": "unreachable"})), 4, 1)
    with pytest.raises(ServiceUnavailable):
        batches.create(entry("a"))


def test_an_entry_whose_deadline_passed_in_the_queue_is_not_sent():
    pool = Pool(seconds=0.3)
    batches = CreateBatches(pool, max_size=4, in_flight=1)
    with ThreadPoolExecutor(max_workers=2) as threads:
        first = threads.submit(batches.create, entry("slow", seconds_left=5))
        time.sleep(0.05)  # "late" queues behind the batch in flight, and its deadline passes there
        with pytest.raises((NoAnswer, DeadlineExceeded)):  # either way 504 outcome_unknown, naming the order
            threads.submit(batches.create, entry("late", seconds_left=0.1)).result()
        assert first.result() == {"order": {"id": "slow"}}
    assert [ids for _, _, ids, *_ in pool.batches] == [["slow"]]
