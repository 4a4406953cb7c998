"""A circuit breaker per service, per gateway process.

After BREAKER_FAILURES consecutive calls of one service that timed out or
found it unavailable, its circuit opens: for BREAKER_RESET_SECONDS every call
to it is refused at once (503 service_unavailable with Retry-After), so a
stopped service holds no gateway thread and cannot slow the routes of the
others. Then one call goes through as a probe (half-open; the others are
still refused meanwhile): its success closes the circuit, its failure opens
it for another period. Any answer of the service, an error of its own
included (404, 409, ...), is a success: it is there.

Our own, not pybreaker: pybreaker holds one lock for the whole of every call
through a breaker, which would let one gateway thread at a time talk to a
service; here the lock guards only the state, never a call.
"""
import contextlib
import threading
import time

from common.contract.errors import DeadlineExceeded, ServiceUnavailable
from gateway import metrics
from gateway.rpc_pool import NoAnswer

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
PROBE_RETRY_SECONDS = 1  # what Retry-After says while a probe is out


def verdict(service, exc):
    """What a call's exception says of `service`: False (failing: a timeout, a lost reply, a 503 of
    its own such as not running or its database down), None (nothing: the broker or the gateway's
    own pool failed), True (it answered, if only to say that a service it calls is unavailable)."""
    if isinstance(exc, (NoAnswer, DeadlineExceeded)):
        return False
    if isinstance(exc, ServiceUnavailable):
        if {"broker", "rpc_pool"} & set(exc.details):
            return None
        return exc.details.get("service", service) != service
    return True


class Breaker:
    def __init__(self, service, failures, reset_seconds, clock=time.monotonic):
        self.service = service
        self._max_failures = failures
        self._reset_seconds = reset_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        metrics.breaker_state(service, CLOSED)

    @property
    def state(self):
        return self._state

    def before_call(self):
        """Let a call through, or ServiceUnavailable (with `retry_after_seconds`) while the circuit is open."""
        with self._lock:
            if self._state == CLOSED:
                return
            left = self._opened_at + self._reset_seconds - self._clock()
            if self._state == OPEN and left <= 0:
                self._move(HALF_OPEN)  # this call is the probe
                return
            retry_after = PROBE_RETRY_SECONDS if self._state == HALF_OPEN else max(1, int(left + 0.999))
        metrics.count_breaker_refusal(self.service)
        raise ServiceUnavailable(f"{self.service} is failing: its calls are refused for a while.",
                                 {"service": self.service, "circuit": "open", "retry_after_seconds": retry_after})

    @contextlib.contextmanager
    def guard(self):
        """Around one call: refused while open; its outcome (see `verdict`) counted."""
        self.before_call()
        outcome = None
        try:
            yield
            outcome = True
        except Exception as exc:
            outcome = verdict(self.service, exc)
            raise
        finally:
            {True: self.succeeded, False: self.failed, None: self.released}[outcome]()

    def succeeded(self):
        with self._lock:
            self._failures = 0
            if self._state != CLOSED:
                self._move(CLOSED)

    def failed(self):
        with self._lock:
            self._failures += 1
            if self._state == HALF_OPEN or (self._state == CLOSED and self._failures >= self._max_failures):
                self._opened_at = self._clock()
                self._move(OPEN)

    def released(self):
        """A call that told nothing: a probe's turn passes to the next call."""
        with self._lock:
            if self._state == HALF_OPEN:
                self._opened_at = self._clock() - self._reset_seconds
                self._move(OPEN)

    def _move(self, state):
        self._state = state
        metrics.breaker_state(self.service, state)


class Breakers:
    """One Breaker per service, made on first use."""

    def __init__(self, failures, reset_seconds):
        self._failures, self._reset_seconds = failures, reset_seconds
        self._breakers = {}
        self._lock = threading.Lock()

    def of(self, service):
        breaker = self._breakers.get(service)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.setdefault(service, Breaker(service, self._failures, self._reset_seconds))
        return breaker
