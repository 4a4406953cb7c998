"""Customer rules: plain Python, no I/O."""
import uuid


def normalize(fields):
    """Emails compare case-insensitively, so they are stored lower-cased."""
    if "email" in fields:
        return {**fields, "email": fields["email"].lower()}
    return fields


def parse_customer_id(value):
    """A UUID, or None when `value` cannot be one (then it names no customer)."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None
