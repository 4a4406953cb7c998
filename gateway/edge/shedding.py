"""Load shedding: at most GATEWAY_MAX_IN_FLIGHT requests held per gateway process.

gunicorn's gthread worker hands every request to its thread pool, whose
queue has no bound: under overload each request waits behind all the others
and latency grows without limit while throughput stays flat. This worker
counts the requests it has handed over and not yet finished (running or
waiting for a thread); past the bound it hands a request to a small pool of
its own instead, whose threads only answer 503 `overloaded` with Retry-After
(gateway/edge/refusal.py, in front of the app, which never sees the
request), so a refusal never waits behind the queue it protects. The count
lives on the worker's main loop, which alone submits requests and hears them
finish: no lock.

gunicorn's master imports this module (gateway/gunicorn_conf.py) before it
sets PROMETHEUS_MULTIPROC_DIR: it must not import prometheus_client, so the
answer is in a module of its own.

Subclasses gunicorn's ThreadWorker through its `enqueue_req` and
`get_thread_pool` (tests/unit/test_adaptations.py pins them).
"""
import threading
from concurrent import futures

from gunicorn.workers.gthread import ThreadWorker

SHED_THREAD_PREFIX = "gateway-shed"
SHED_THREADS = 2  # answering 503 takes a fraction of a millisecond
RETRY_AFTER_SECONDS = 1


def is_shedding():
    """Whether this request is one the worker refuses (it runs on a shedding thread)."""
    return threading.current_thread().name.startswith(SHED_THREAD_PREFIX)


class SheddingThreadWorker(ThreadWorker):
    max_in_flight = 192  # set from GATEWAY_MAX_IN_FLIGHT by gateway/gunicorn_conf.py

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.in_flight = 0
        self.shed_pool = None

    def get_thread_pool(self):
        self.shed_pool = futures.ThreadPoolExecutor(max_workers=SHED_THREADS, thread_name_prefix=SHED_THREAD_PREFIX)
        return super().get_thread_pool()

    def enqueue_req(self, conn):
        shed = self.in_flight >= self.max_in_flight
        if not shed:
            self.in_flight += 1
        pool = self.shed_pool if shed else self.tpool
        done = pool.submit(self.handle, conn)
        done.add_done_callback(lambda fut: self.method_queue.defer(self._finished, conn, fut, shed))

    def _finished(self, conn, fut, shed):
        if not shed:
            self.in_flight -= 1
        self.finish_request(conn, fut)
