"""Helpers storage modules share (no business rules)."""
import time

from sqlalchemy import delete, select, text

_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


def constraint_name(integrity_error):
    """The name of the constraint an IntegrityError violated, if Postgres said."""
    diag = getattr(integrity_error.orig, "diag", None)
    return getattr(diag, "constraint_name", None)


def advisory_lock(session, key):
    """A transaction-scoped lock on `key` (say, the id of a row that may not exist
    yet): two runs of one create take turns, so the second sees what the first made."""
    session.connection().execute(_ADVISORY_LOCK, {"key": str(key)})


# Pruning deletes at most PRUNE_BATCH rows per statement, each its own short transaction (one
# DELETE of a week of rows would hold its locks and bloat the table at once), and a run stops
# starting batches after MAX_PRUNING_SECONDS: the next run goes on where it stopped.
PRUNE_BATCH, MAX_PRUNING_SECONDS = 1000, 10


def bounded_delete(model, moment, before):
    """DELETE of at most PRUNE_BATCH rows of `model` whose `moment` column is before `before`."""
    [key] = model.__table__.primary_key.columns.values()  # one column: a composite key needs another form
    return delete(model).where(key.in_(select(key).where(moment < before).limit(PRUNE_BATCH).scalar_subquery()))


def prune_in_batches(delete_batch, stop_at):
    """Call `delete_batch()` (one bounded DELETE in a transaction of its own: the rows it deleted)
    until it deletes fewer than PRUNE_BATCH or time.monotonic() passes `stop_at`; how many in all."""
    deleted = 0
    while time.monotonic() < stop_at:
        batch = delete_batch()
        deleted += batch
        if batch < PRUNE_BATCH:
            break
    return deleted
