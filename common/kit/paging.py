"""Paging of every list entrypoint: opaque keyset cursors (base64url JSON of the
last row's sort key) and `Listing`, one list's query, sort key and resource.

Storage queries fetch `limit + 1` rows; `split_page` keeps `limit` of them
and makes a cursor only when there really is a next page.
"""
import base64
import binascii
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from common.contract.errors import ValidationFailed
from common.contract.schemas.base import load_or_raise, schema_instance


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


@dataclass(frozen=True)
class Listing:
    """One list entrypoint: the schema of its filters, limit and cursor, its sort key
    (`key_of` a row, `parse_key` back from a cursor), the schema its rows are dumped
    with, and whether a customer sees only their own rows (filters narrowed to them)."""
    query: type
    resource: type
    key_of: Callable = created_id_key
    parse_key: Callable = parse_created_id_key
    own_only: bool = False

    def page(self, caller, uow, filters, limit, cursor, fetch):
        """{"items", "next_cursor"}: `fetch(store, filters, limit + 1, after)` in one statement."""
        query, limit, after = page_request(self.query, filters, limit, cursor, self.parse_key)
        if self.own_only and not caller.narrow_to_own(query):
            return {"items": [], "next_cursor": None}
        with uow.single_statement() as store:
            rows = fetch(store, query, limit + 1, after)
            page, next_cursor = split_page(rows, limit, self.key_of)
            return {"items": schema_instance(self.resource).dump(page, many=True), "next_cursor": next_cursor}
