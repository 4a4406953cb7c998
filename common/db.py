"""Database plumbing every service shares (no business rules)."""
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, IntegrityError

from common.errors import ServiceUnavailable

# No pool_pre_ping (a round trip per transaction): after a Postgres restart the
# first transaction on a dead connection fails (503) and SQLAlchemy then
# replaces every pooled connection made before the failure.
# One connection per Nameko worker (MAX_WORKERS, default 10) and a little slack:
# a stack must fit Postgres's max_connections (default 100) twice over.
ENGINE_OPTIONS = {"pool_size": 10, "max_overflow": 2}

_psycopg_made_green = False


def make_psycopg2_green():
    """Let psycopg2 yield to the eventlet hub while it waits on the network.

    Without it one slow query blocks every worker of the service. Call once,
    at import of a service module, before the first connection is made.
    """
    global _psycopg_made_green
    if not _psycopg_made_green:
        from psycogreen.eventlet import patch_psycopg

        patch_psycopg()
        _psycopg_made_green = True


@contextmanager
def transaction(db):
    """One unit of work: commit on success, roll back whole on any error.

    A lost or refused database connection becomes ServiceUnavailable (503);
    integrity errors pass through for the caller to name precisely.
    """
    session = db.get_session()
    try:
        yield session
        session.commit()
    except BaseException as exc:
        _rollback_quietly(session)
        _raise_unavailable_if_connection_lost(exc)
        raise
    finally:
        session.close()


@contextmanager
def single_statement(db):
    """A session for work that is one SQL statement: in autocommit, so it costs
    one round trip instead of three (no BEGIN, no COMMIT). One statement is
    atomic and sees one snapshot on its own; use `transaction` for anything
    that takes two statements."""
    session = db.get_session()
    try:
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield session
    except BaseException as exc:
        _raise_unavailable_if_connection_lost(exc)
        raise
    finally:
        session.close()


def _raise_unavailable_if_connection_lost(exc):
    if (isinstance(exc, DBAPIError) and not isinstance(exc, IntegrityError)
            and (exc.connection_invalidated or _is_connection_error(exc))):
        raise ServiceUnavailable("The database is unavailable.", {"database": "unreachable"}) from None


def _rollback_quietly(session):
    # On a dead connection rollback fails too; the original error matters more.
    try:
        session.rollback()
    except DBAPIError:
        pass


def _is_connection_error(exc):
    import psycopg2

    return isinstance(exc.orig, (psycopg2.OperationalError, psycopg2.InterfaceError))


def constraint_name(integrity_error):
    """The name of the constraint an IntegrityError violated, if Postgres said."""
    diag = getattr(integrity_error.orig, "diag", None)
    return getattr(diag, "constraint_name", None)
