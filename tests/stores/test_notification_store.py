"""NotificationStore and its in-memory fake pass the same tests: the store on a throwaway
Postgres database migrated to head, each call in its own committed session as a unit of
work would run it; the fake as the unit tests use it."""
import smtplib
import uuid
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker

from notification_service import domain
from notification_service.storage import NotificationStore
from tests import support
from tests.unit.fakes import InMemoryNotificationStore

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
LEASE = timedelta(minutes=4)
CUSTOMER_ID = uuid.uuid4()


@pytest.fixture(scope="module")
def sessions():
    name, url = support.create_database()
    try:
        support.alembic(url, "upgrade", "head")
        engine = create_engine(url)
        yield sessionmaker(bind=engine, expire_on_commit=False)
        engine.dispose()
    finally:
        support.drop_database(name)


@pytest.fixture(params=["postgres", "in_memory"])
def stores(request):
    """`with stores() as store:` one unit of work on the store under test."""
    if request.param == "in_memory":
        fake = InMemoryNotificationStore()
        yield lambda: nullcontext(fake)
        return
    yield on_postgres(request.getfixturevalue("sessions"))


def on_postgres(make_session):
    """`with units() as store:` one committed transaction on an emptied notifications table."""
    with make_session.begin() as session:
        session.execute(text("TRUNCATE notifications.notifications, notifications.processed_events"))

    @contextmanager
    def unit_of_work():
        with make_session.begin() as session:
            yield NotificationStore(session)
    return unit_of_work


def refused_for_good():
    return smtplib.SMTPRecipientsRefused({"ada@example.com": (550, b"no such user")})


def email_row(recipient="ada@example.com"):
    notification_id = uuid.uuid4()
    return {"id": notification_id, "channel": "email", "kind": "order_confirmation", "order_id": uuid.uuid4(),
            "customer_id": CUSTOMER_ID, "recipient": recipient, "subject": "We received your order",
            "body_text": "Hello", "body_html": "<p>Hello</p>",
            "message_id": domain.message_id(notification_id, "orders@shop.example"), "push_subscription": None}


def queue(stores, at, recipient="ada@example.com", event_id=None):
    """One notification queued (due) at `at`; its id, or None if the event was queued before."""
    with stores() as store:
        queued = store.queue_once([(event_id or uuid.uuid4(), "order_created", [email_row(recipient)])],
                                  "notify_customer", at)
    return queued[0] if queued else None


def claim(stores, at, limit=20):
    with stores() as store:
        return store.claim_due(at, at + LEASE, limit)


def record(stores, notification, error, at):
    with stores() as store:
        return store.record_attempt(notification, domain.after_attempt(notification, error, at, 5, 8), at)


def stored(stores, notification_id):
    with stores() as store:
        return store.get_notification(notification_id)


def test_one_notification_per_event_and_recipient(stores):
    event_id = uuid.uuid4()
    assert queue(stores, T0, event_id=event_id) is not None
    assert queue(stores, T0, event_id=event_id) is None


def test_one_event_has_a_notification_per_channel_each_with_its_own_fields(stores):
    event_id, subscription = uuid.uuid4(), {"id": str(uuid.uuid4()), "keys": {"p256dh": "k", "auth": "a"}}
    endpoint = "https://push.example/" + "x" * 600  # endpoints are longer than email addresses
    rows = [email_row(), {**email_row("+14155552671"), "channel": "sms", "message_id": None, "body_html": ""},
            {**email_row(endpoint), "channel": "push", "message_id": None, "body_html": "",
             "push_subscription": subscription}]
    with stores() as store:
        queued = store.queue_once([(event_id, "order_created", rows)], "notify_customer", T0)
    assert len(queued) == 3
    by_channel = {n.channel: n for n in claim(stores, T0)}
    assert set(by_channel) == {"email", "sms", "push"}
    assert (by_channel["push"].recipient, by_channel["push"].push_subscription) == (endpoint, subscription)
    assert by_channel["sms"].message_id is None and by_channel["email"].push_subscription is None


def test_a_batch_of_events_queues_each_new_one_once_in_one_call(stores):
    seen, fresh, empty = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    queue(stores, T0, event_id=seen)
    claim(stores, T0)  # out of the way
    twice = email_row("grace@example.com")
    with stores() as store:
        queued = store.queue_once([(seen, "order_created", [email_row("again@example.com")]),
                                   (fresh, "order_shipped", [twice]),
                                   (fresh, "order_shipped", [{**twice, "id": uuid.uuid4()}]),
                                   (empty, "order_created", [])], "notify_customer", T0)
    [notification] = claim(stores, T0)
    assert queued == [notification.id] and notification.id == twice["id"]
    assert (notification.event_id, notification.event_type, notification.recipient) == (
        fresh, "order_shipped", "grace@example.com")
    with stores() as store:
        assert store.queue_once([(fresh, "order_shipped", [email_row()])], "notify_customer", T0) == []


def test_a_claim_takes_due_queued_rows_oldest_first_up_to_its_limit(stores):
    later, first = queue(stores, T0 + timedelta(seconds=1)), queue(stores, T0)
    queue(stores, T0 + timedelta(hours=1))  # not due yet
    one = claim(stores, T0 + timedelta(seconds=5), limit=1)
    assert [n.id for n in one] == [first]
    rest = claim(stores, T0 + timedelta(seconds=5))
    assert [n.id for n in rest] == [later]
    assert one[0].claim_token is not None and rest[0].claim_token not in (None, one[0].claim_token)
    assert rest[0].claimed_until == T0 + timedelta(seconds=5) + LEASE
    assert rest[0].message_id == domain.message_id(later, "orders@shop.example")


def test_a_claimed_row_is_not_claimed_again_before_its_lease_ends(stores):
    held = queue(stores, T0)
    [claimed] = claim(stores, T0)
    assert claimed.id == held
    free = queue(stores, T0 + timedelta(seconds=1))
    assert [n.id for n in claim(stores, T0 + LEASE - timedelta(seconds=1))] == [free]


def test_after_its_lease_expires_a_row_is_claimed_again_under_a_new_token(stores):
    queue(stores, T0)
    [first] = claim(stores, T0)
    [again] = claim(stores, T0 + LEASE)
    assert again.id == first.id and again.claim_token != first.claim_token
    assert (again.attempts, again.message_id) == (first.attempts, first.message_id)


def test_an_outcome_under_the_claim_is_recorded_and_releases_the_row(stores):
    notification_id = queue(stores, T0)
    [claimed] = claim(stores, T0)
    retry = record(stores, claimed, ConnectionRefusedError(111, "refused"), T0 + timedelta(seconds=1))
    assert (retry.status, retry.attempts, retry.claim_token, retry.claimed_until) == ("queued", 1, None, None)
    assert retry.next_attempt_at == T0 + timedelta(seconds=6)
    assert claim(stores, T0 + timedelta(seconds=5)) == []
    [again] = claim(stores, T0 + timedelta(seconds=6))  # due again long before the first lease would end
    sent = record(stores, again, None, T0 + timedelta(seconds=7))
    assert (sent.status, sent.attempts, sent.sent_at, sent.last_error) == \
        ("sent", 2, T0 + timedelta(seconds=7), retry.last_error)
    row = stored(stores, notification_id)
    assert (row.status, row.attempts, row.claim_token, row.updated_at) == ("sent", 2, None, T0 + timedelta(seconds=7))


def test_an_outcome_under_a_stale_claim_changes_nothing(stores):
    notification_id = queue(stores, T0)
    [stale] = claim(stores, T0)
    [current] = claim(stores, T0 + LEASE)
    assert record(stores, stale, None, T0 + LEASE + timedelta(seconds=1)) is None
    row = stored(stores, notification_id)
    assert (row.status, row.attempts, row.sent_at, row.claim_token) == ("queued", 0, None, current.claim_token)
    assert record(stores, current, None, T0 + LEASE + timedelta(seconds=2)).status == "sent"
    assert record(stores, stale, refused_for_good(), T0 + LEASE + timedelta(seconds=3)) is None
    assert stored(stores, notification_id).status == "sent"


def test_a_batch_of_outcomes_is_recorded_in_order_each_only_under_its_claim(stores):
    taken_again = queue(stores, T0, "bob@example.com")
    kept = queue(stores, T0 + timedelta(seconds=1), "ada@example.com")
    claimed = {n.id: n for n in claim(stores, T0 + timedelta(seconds=1))}
    [current] = claim(stores, T0 + timedelta(seconds=1) + LEASE, limit=1)  # the lease ran out: taken again
    assert current.id == taken_again
    at = T0 + LEASE + timedelta(seconds=2)
    attempts = [(claimed[taken_again], domain.after_attempt(claimed[taken_again], None, at, 5, 8)),
                (claimed[kept], domain.after_attempt(claimed[kept], ConnectionRefusedError(111, "refused"), at, 5, 8))]
    with stores() as store:
        stale, retried = store.record_attempts(attempts, at)
    assert stale is None  # nothing changed
    assert (retried.id, retried.status, retried.attempts, retried.claim_token) == (kept, "queued", 1, None)
    assert stored(stores, taken_again).claim_token == current.claim_token
    with stores() as store:
        assert store.record_attempts([], at) == []


def test_an_unclaimed_notification_has_no_outcome_to_record(stores):
    notification_id = queue(stores, T0)
    with pytest.raises(ValueError):
        record(stores, stored(stores, notification_id), None, T0)


def test_a_failed_notification_requeued_is_due_at_once(stores):
    notification_id = queue(stores, T0)
    [claimed] = claim(stores, T0)
    assert record(stores, claimed, refused_for_good(), T0).status == "failed"
    assert claim(stores, T0 + LEASE) == []
    with stores() as store:
        store.requeue(store.get_notification(notification_id, lock=True), T0 + timedelta(seconds=1))
    [again] = claim(stores, T0 + timedelta(seconds=1))
    assert (again.id, again.status, again.attempts) == (notification_id, "queued", 0)


def test_on_postgres_rows_another_claim_is_taking_are_skipped_not_waited_for(sessions):
    stores = on_postgres(sessions)
    taken, free = queue(stores, T0), queue(stores, T0 + timedelta(seconds=1))
    with sessions.begin() as other:
        other.execute(text("SET LOCAL lock_timeout = '2s'"))
        other.execute(text("SELECT 1 FROM notifications.notifications WHERE id = :id FOR UPDATE"), {"id": taken})
        with sessions.begin() as session:
            session.execute(text("SET LOCAL lock_timeout = '2s'"))  # a wait would fail the test, not hang it
            at = T0 + timedelta(seconds=1)
            assert [n.id for n in NotificationStore(session).claim_due(at, at + LEASE, 20)] == [free]
