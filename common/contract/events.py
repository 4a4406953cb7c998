"""The event envelope every service emits (see the contract's Events section)."""
import uuid
from datetime import datetime, timezone


def make_envelope(event_type, data, request_id=None):
    return {
        "event_id": str(uuid.uuid4()),
        "type": event_type,
        "occurred_at": datetime.now(timezone.utc).isoformat(),
        "request_id": request_id,
        "data": data,
    }
