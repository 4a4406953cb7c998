"""Concurrent order creates of one gateway process share one RPC message and one reply.

Natural batching, no added wait: a request's create joins a queue; each of
BATCH_IN_FLIGHT sender threads takes what is queued (up to BATCH_MAX) and sends
it as one `order_service.create_orders` call, whose reply carries each order's
outcome. While batches are in flight, new creates queue up and form the next
one; at one connection every batch is one create and nothing waits: a create
that finds no batch in flight and none queued is sent at once by its own
request thread, with no hand-over to a sender. Each entry
keeps what is its own: its attempt id, body, Idempotency-Key, caller (signed
for that entry), request id, deadline and traceparent; order_service checks
each entry's signature and then the entry as its caller.

A batch whose reply was lost is sent again (create_orders is idempotent per
attempt), while its latest deadline allows; a request waits no longer than
its own deadline. BATCH_MAX=1 turns this off: each create is its own call.
"""
import logging
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from common.contract.caller import CALLER_KEY
from common.contract.context import REQUEST_ID_KEY
from common.contract.errors import DeadlineExceeded
from gateway import metrics
from gateway.calls import GATEWAY_CALLER
from gateway.rpc_pool import NoAnswer

log = logging.getLogger(__name__)

# The batch's own caller: the gateway, which checked each entry's caller (its token or key)
# and signed it for that entry (gateway/calls.py).
BATCH_CALLER = GATEWAY_CALLER.to_context()


class CreateBatches:
    """Batches of `order_service.create_orders` through `pool`, at most `in_flight` at once
    (sent by as many threads, or a lone create by its own)."""

    def __init__(self, pool, max_size, in_flight):
        self._pool, self._max_size, self._in_flight = pool, max_size, in_flight
        self._queue = queue.SimpleQueue()
        self._senders = []
        self._starting = threading.Lock()
        self._sending, self._counting = 0, threading.Condition()  # batches in flight, at most in_flight

    def create(self, entry):
        """The outcome of one create ({"order": ...} or an error outcome); NoAnswer when
        none came before the entry's deadline (epoch seconds)."""
        self._start()
        waiter = Future()
        if self._idle():
            self._send([(entry, waiter)])
        else:
            self._queue.put((entry, waiter))
        try:
            return waiter.result(timeout=max(entry["deadline"] - time.time(), 0.0))
        except FutureTimeout:
            raise NoAnswer("no answer to the batch before this request's deadline") from None

    def _idle(self):
        """True, counting a batch in flight, if none is and nothing is queued."""
        with self._counting:
            if self._sending or not self._queue.empty():
                return False
            self._sending += 1
            return True

    def _start(self):
        # Threads are started in the process that serves (gunicorn forks its workers after import).
        if len(self._senders) == self._in_flight:
            return
        with self._starting:
            while len(self._senders) < self._in_flight:
                sender = threading.Thread(target=self._send_forever, name="create-batches", daemon=True)
                sender.start()
                self._senders.append(sender)

    def _send_forever(self):
        while True:
            batch = self._next_batch()
            if batch:
                self._send(batch)
            else:
                self._done_sending()

    def _next_batch(self):
        """What is queued, up to the bound, less the entries whose deadline has passed, once
        fewer than `in_flight` batches are in flight (counting it)."""
        batch = [self._queue.get()]
        with self._counting:
            self._counting.wait_for(lambda: self._sending < self._in_flight)
            self._sending += 1
        while len(batch) < self._max_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        now = time.time()
        for entry, waiter in batch:
            if entry["deadline"] <= now:
                waiter.set_exception(DeadlineExceeded("The request's deadline passed before it was sent.",
                                                      {"deadline": entry["deadline"]}))
        return [(entry, waiter) for entry, waiter in batch if entry["deadline"] > now]

    def _send(self, batch):
        """Send `batch`, counted in flight already."""
        try:
            self._call(batch)
        finally:
            self._done_sending()

    def _done_sending(self):
        with self._counting:
            self._sending -= 1
            self._counting.notify()

    def _call(self, batch):
        entries = [entry for entry, _ in batch]
        context = {REQUEST_ID_KEY: entries[0]["request_id"], CALLER_KEY: BATCH_CALLER}
        started, outcome = time.perf_counter(), "ok"
        try:
            outcomes = self._pool.call("order_service", "create_orders", (entries,), context_data=context,
                                       deadline=max(entry["deadline"] for entry in entries), redrive=True)
        except Exception as exc:  # the batch's failure is each of its entries' answer
            outcome = "no_answer" if isinstance(exc, NoAnswer) else getattr(exc, "code", "error")
            for _, waiter in batch:
                waiter.set_exception(exc)
            return
        finally:
            metrics.record_rpc("order_service", "create_orders", outcome, time.perf_counter() - started)
        for (_, waiter), entry_outcome in zip(batch, outcomes):
            waiter.set_result(entry_outcome)
