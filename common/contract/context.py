"""Nameko context data the gateway sets on every RPC and services pass on,
and the deadline it carries.

The deadline (epoch seconds, wall clock) is when the gateway will have
answered its HTTP client. A service refuses to start work past it and to
commit past it (less a margin for the COMMIT itself), and a call it makes to
another service waits only as long as is left, so no change can commit
after its client was told 503 or 504. Hosts must keep their clocks in sync
(NTP): the deadline crosses processes as a time of day.
"""
import time

from common.contract.errors import DeadlineExceeded

REQUEST_ID_KEY = "request_id"
DEADLINE_KEY = "deadline"
# Time kept back for COMMIT to reach the disk before the deadline.
COMMIT_MARGIN_SECONDS = 0.5


def seconds_left(deadline, now=None):
    """Seconds until `deadline` (None: no deadline, so None)."""
    if deadline is None:
        return None
    return float(deadline) - (time.time() if now is None else now)


def check_deadline(deadline, margin=0.0, doing="this work"):
    """DeadlineExceeded if less than `margin` seconds are left before `deadline`."""
    left = seconds_left(deadline)
    if left is not None and left < margin:
        raise DeadlineExceeded(f"The caller's deadline passed before {doing}; nothing was changed.",
                               {"deadline": float(deadline)})
