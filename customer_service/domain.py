"""Customer rules: plain Python, no I/O."""
import uuid
from datetime import datetime


def normalize_new_customer(fields):
    """Emails compare case-insensitively, so they are stored lower-cased."""
    return {**fields, "name": fields["name"].strip() or fields["name"], "email": fields["email"].lower()}


def parse_customer_id(value):
    """A UUID, or None when `value` cannot be one (then it names no customer)."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def list_key(customer):
    """Customers are listed oldest first; ties broken by id."""
    return [customer.created_at.isoformat(), str(customer.id)]


def parse_list_key(key):
    created_at, customer_id = key
    return datetime.fromisoformat(created_at), uuid.UUID(customer_id)
