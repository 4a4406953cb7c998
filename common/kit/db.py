"""Helpers storage modules share (no business rules)."""
from sqlalchemy import text

_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


def constraint_name(integrity_error):
    """The name of the constraint an IntegrityError violated, if Postgres said."""
    diag = getattr(integrity_error.orig, "diag", None)
    return getattr(diag, "constraint_name", None)


def advisory_lock(session, key):
    """A transaction-scoped lock on `key` (say, the id of a row that may not exist
    yet): two runs of one create take turns, so the second sees what the first made."""
    session.connection().execute(_ADVISORY_LOCK, {"key": str(key)})
