"""X-API-Key: who a key acts as, asked of customer_service once per key per API_KEY_CACHE_SECONDS.

A gateway process keeps each answer (a Caller, or "no such live key") for
API_KEY_CACHE_SECONDS, so a busy client costs customer_service one call per
period, not one per request, and a revoked key is refused by every gateway
within that period (at once by the process that revoked it). Only the key's
digest is kept and sent; the key itself never leaves this process.
"""
import threading
import time
from collections import OrderedDict

from common.contract.caller import API_KEY_PREFIX, SERVICE, api_key_caller, api_key_digest, api_key_prefix
from common.contract.errors import Unauthenticated
from gateway.calls import GATEWAY_CALLER  # who asks customer_service about keys

MAX_KEY_LENGTH = 200
MAX_ENTRIES = 4096  # keys (good or bad) a process remembers; the oldest answer goes first


class ApiKeyCache:
    def __init__(self, ttl_seconds, verify):
        """`verify(prefix, digest, as_caller)` asks customer_service: {"id", "role", "customer_id"},
        or Unauthenticated for no such live key."""
        self._ttl = ttl_seconds
        self._verify = verify
        self._entries = OrderedDict()  # digest -> (expires at (monotonic), Caller or None)
        self._lock = threading.Lock()

    def caller_for(self, key):
        """The Caller `key` acts as; Unauthenticated when it names no live key."""
        if not key.startswith(API_KEY_PREFIX) or len(key) > MAX_KEY_LENGTH:
            raise Unauthenticated("The API key is not valid.", {"api_key": "malformed"})
        digest = api_key_digest(key)
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(digest)
        if entry is None or entry[0] <= now:
            entry = (now + self._ttl, self._ask(key, digest))
            with self._lock:
                self._entries[digest] = entry
                self._entries.move_to_end(digest)
                while len(self._entries) > MAX_ENTRIES:
                    self._entries.popitem(last=False)
        caller = entry[1]
        if caller is None:
            raise Unauthenticated("The API key is not valid.", {"api_key": "unknown or revoked"})
        return caller

    def forget(self, key_id):
        """Drop what this process knows of key `key_id` (it was just revoked here)."""
        sub = api_key_caller(key_id, SERVICE).sub
        with self._lock:
            for digest in [d for d, (_, caller) in self._entries.items() if caller and caller.sub == sub]:
                del self._entries[digest]

    def _ask(self, key, digest):
        try:
            found = self._verify(api_key_prefix(key), digest, GATEWAY_CALLER)
        except Unauthenticated:
            return None
        return api_key_caller(found["id"], found["role"], found.get("customer_id"))
