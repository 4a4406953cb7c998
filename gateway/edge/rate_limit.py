"""Per-caller rate limits (RATE_LIMIT), counted in Redis (REDIS_URL) by every gateway process and instance.

The `limits` library's sliding-window counter: two counters per caller in
Redis, checked and incremented by one Lua script, so every gateway sees the
same count and a burst spread over several of them is limited as one.
Flask-Limiter would add per-route limits and decorators we do not need: here
there is one limit and one counter per caller for every limited route.

A request is counted only when it is let through: the script checks the
window and increments it in one atomic step only if the request fits, so an
answer refused with 429 is never counted (and a client retrying too early
does not push its own reset further away).

When Redis cannot be reached the gateway fails open: the request goes on
unlimited, one log line per RETRY_REDIS_AFTER_SECONDS says so, and
rate_limit_unchecked_total counts every such request; Redis is tried again
after that pause (so a dead Redis costs no timeout per request).
"""
import logging
import math
import threading
import time
from dataclasses import dataclass

from limits import parse
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from redis.exceptions import RedisError

from gateway import metrics

log = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 0.25  # connecting and each command: Redis answers in well under a millisecond
RETRY_REDIS_AFTER_SECONDS = 1.0
KEY_PREFIX = "oms-rate-limit"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # until the window lets one more request through

    def headers(self):
        """The RateLimit-* headers (IETF draft httpapi-ratelimit-headers), and Retry-After on a refusal."""
        headers = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
                   "RateLimit-Reset": str(self.reset_seconds)}
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.reset_seconds))
        return headers


class RateLimiter:
    def __init__(self, expression, redis_url):
        self.item = parse(expression)
        self.expression = expression
        self._redis_url = redis_url
        self._strategy = None  # made in the serving process, after gunicorn's fork
        self._lock = threading.Lock()
        self._retry_at = 0.0

    def check(self, caller_key):
        """The Verdict for one more request of `caller_key` (counted if allowed); None when Redis is out."""
        if time.monotonic() < self._retry_at:
            metrics.count_rate_limit_unchecked()
            return None
        try:
            strategy = self._limiter()
            allowed = strategy.hit(self.item, caller_key)
            reset_at, remaining = strategy.get_window_stats(self.item, caller_key)
        except (StorageError, RedisError, OSError) as exc:
            self._retry_at = time.monotonic() + RETRY_REDIS_AFTER_SECONDS
            log.warning("rate limits unchecked for %.0f s: Redis is unreachable (%r)", RETRY_REDIS_AFTER_SECONDS, exc)
            metrics.count_rate_limit_unchecked()
            return None
        return Verdict(allowed, self.item.amount, max(0, remaining), max(0, math.ceil(reset_at - time.time())))

    def _limiter(self):
        with self._lock:
            if self._strategy is None:
                storage = storage_from_string(
                    self._redis_url, key_prefix=KEY_PREFIX, wrap_exceptions=True,
                    socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
                self._strategy = SlidingWindowCounterRateLimiter(storage)
            return self._strategy
