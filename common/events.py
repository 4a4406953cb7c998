"""The event envelope every service emits (see the contract's Events section)."""
import logging
import uuid
from datetime import datetime, timezone

log = logging.getLogger(__name__)


def make_envelope(event_type, data, request_id=None):
    return {
        "event_id": str(uuid.uuid4()),
        "type": event_type,
        "occurred_at": datetime.now(timezone.utc).isoformat(),
        "request_id": request_id,
        "data": data,
    }


def emit_after_commit(dispatch, event_type, data, request_id=None):
    """Publish an event for a change that is already committed.

    A broker failure is logged, not raised: the caller's change stands.
    """
    try:
        dispatch(event_type, make_envelope(event_type, data, request_id))
    except Exception:
        log.exception("could not publish %s", event_type)
