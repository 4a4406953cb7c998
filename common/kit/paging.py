"""Opaque keyset cursors: base64url JSON of the last row's sort key.

Storage queries fetch `limit + 1` rows; `split_page` keeps `limit` of them
and makes a cursor only when there really is a next page.
"""
import base64
import binascii
import json
import uuid
from datetime import datetime, timezone

from common.contract.errors import ValidationFailed
from common.contract.schemas.base import load_or_raise


def encode_cursor(key):
    raw = json.dumps(key, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor, parse_key=lambda key: key):
    """The sort key inside `cursor` (None for the first page), through `parse_key`."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return parse_key(json.loads(base64.urlsafe_b64decode(padded.encode())))
    except (binascii.Error, ValueError, TypeError, IndexError, AttributeError, OverflowError):
        raise ValidationFailed("Invalid cursor.", {"cursor": ["Not a cursor this API issued."]}) from None


def page_request(schema, filters, limit, cursor, parse_key):
    """(filters, limit, the key to continue after or None) of a list call: `filters`,
    `limit` and `cursor` checked together with `schema` (400 naming the field), the
    cursor decoded with `parse_key`."""
    query = load_or_raise(schema, {**(filters or {}), "limit": limit, "cursor": cursor})
    after = decode_cursor(query.pop("cursor"), parse_key)
    return query, query.pop("limit"), after


def split_page(rows, limit, key_of):
    """(the page, the cursor of the next page or None) from `limit + 1` rows."""
    page = rows[:limit]
    next_cursor = encode_cursor(key_of(page[-1])) if len(rows) > limit else None
    return page, next_cursor


def created_id_key(row):
    """The sort key of lists ordered by (created_at, id); rows are objects or dicts."""
    if isinstance(row, dict):
        return [row["created_at"].isoformat(), str(row["id"])]
    return [row.created_at.isoformat(), str(row.id)]


def parse_created_id_key(key):
    created_at, row_id = key
    moment = datetime.fromisoformat(created_at)
    if moment.utcoffset() is None:
        raise ValueError("a cursor time needs a UTC offset")
    return moment.astimezone(timezone.utc), uuid.UUID(row_id)
