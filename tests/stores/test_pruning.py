"""Retention on Postgres: the outbox relay's prune (sent events and a consumer's dedup records)
deletes what is past its retention a bounded batch at a time, and nothing newer."""
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, insert, select

from common.kit import db
from common.kit.outbox import Outbox, OutboxRelay
from order_service.storage import layout

NOW = datetime.now(timezone.utc)
OUTBOX, PROCESSED = layout.outbox, layout.processed_events


@pytest.fixture
def relay(engine):
    relay = OutboxRelay(OUTBOX, engine, publisher=None, interval=1, gather_seconds=0, retention_hours=24,
                        dedup=(PROCESSED, timedelta(hours=48)))
    yield relay
    with engine.begin() as connection:  # the prune commits: leave the schema empty for the others
        connection.execute(OUTBOX.__table__.delete())
        connection.execute(PROCESSED.__table__.delete())


def sent_event(sent_at):
    return {**Outbox.row("order_created", {"id": str(uuid.uuid4())}), "sent_at": sent_at}


def dedup_record(processed_at):
    return {"event_id": str(uuid.uuid4()), "handler": "on_customer_created", "processed_at": processed_at}


def count(engine, model):
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(model)).scalar()


def test_what_is_past_its_retention_goes_in_bounded_batches_and_the_rest_stays(engine, relay, monkeypatch):
    monkeypatch.setattr(db, "PRUNE_BATCH", 2)
    with engine.begin() as connection:
        connection.execute(insert(OUTBOX), [sent_event(NOW - timedelta(hours=25)) for _ in range(5)]
                           + [sent_event(NOW - timedelta(hours=23)), sent_event(None)])
        connection.execute(insert(PROCESSED), [dedup_record(NOW - timedelta(hours=49)) for _ in range(3)]
                           + [dedup_record(NOW - timedelta(hours=47))])
    assert relay.prune() == 8  # 5 events (2 + 2 + 1) and 3 records (2 + 1)
    assert (count(engine, OUTBOX), count(engine, PROCESSED)) == (2, 1)  # the newer and the unsent stay
    assert relay.prune() == 0


def test_a_run_stops_starting_batches_when_its_time_is_up(monkeypatch):
    monkeypatch.setattr(db, "PRUNE_BATCH", 1)
    clock = iter([0.0, 0.5, 2.0])
    monkeypatch.setattr(db.time, "monotonic", lambda: next(clock))
    # Full batches at 0.0 and 0.5; at 2.0 the time is up, with rows left for the next run.
    assert db.prune_in_batches(lambda: 1, stop_at=1.0) == 2
