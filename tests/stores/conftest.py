"""The middle tier: each service's Store on the real Postgres and its in-memory fake
(tests/unit/fakes.py) pass the same tests, so the fakes cannot drift.

A test module asks for both with one parametrized fixture, e.g.

    @pytest.fixture(params=BACKENDS)
    def store(request):
        if request.param == MEMORY:
            return InMemoryOrderStore()
        return OrderStore(request.getfixturevalue("session"))

Asking for `session` only in the Postgres case keeps the in-memory runs free of the database.
"""
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from tests import support

POSTGRES, MEMORY = "postgres", "memory"
BACKENDS = (POSTGRES, MEMORY)


@pytest.fixture(scope="session")
def database():
    """A throwaway database migrated to head: (name, url); dropped after the session."""
    name, url = support.create_database()
    try:
        support.alembic(url, "upgrade", "head")
        yield name, url
    finally:
        support.drop_database(name)


@pytest.fixture(scope="session")
def engine(database):
    engine = create_engine(database[1])
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine):
    """A session in a transaction rolled back after the test, so every test starts from
    the empty, migrated schemas. A store's own flushes and savepoints run inside it."""
    with engine.connect() as connection:
        transaction = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield session
        finally:
            session.close()
            transaction.rollback()
