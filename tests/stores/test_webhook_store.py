"""WebhookStore on Postgres and its in-memory fake pass the same tests: subscriptions, deliveries
recorded against the webhook as it was when the event occurred, once per event; claims bounded per
host; outcomes recorded only under their claim; pruning past the retention, never a pending delivery."""
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from tests.stores.conftest import BACKENDS, MEMORY
from tests.unit.fakes import InMemoryWebhookStore
from webhook_service import domain
from webhook_service.storage import WebhookStore

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(params=BACKENDS)
def store(request):
    if request.param == MEMORY:
        return InMemoryWebhookStore()
    return WebhookStore(request.getfixturevalue("session"))


def _webhook(store, event_types=("order_created",), enabled=True, host="hooks.example", at=T0):
    return store.insert_webhook(uuid.uuid4(), {"url": f"https://{host}/in", "event_types": list(event_types),
                                               "description": None, "enabled": enabled}, host, "encrypted", at)


def _record(store, event_type="order_created", occurred_at=T0 + timedelta(minutes=1), event_id=None):
    event_id = event_id or uuid.uuid4()
    return store.record_deliveries(event_type, [(event_id, occurred_at, '{"a":1}')], occurred_at)


def test_one_delivery_per_subscribed_webhook_and_none_for_a_redelivery(store):
    subscribed, also = _webhook(store), _webhook(store, ("order_created", "stock_low"))
    _webhook(store, ("stock_low",))
    _webhook(store, enabled=False)
    event_id = uuid.uuid4()
    recorded = _record(store, event_id=event_id)
    assert len(recorded) == 2
    assert {store.get_delivery(hook.id, delivery_id) is not None
            for hook in (subscribed, also) for delivery_id in recorded} == {True, False}
    assert _record(store, event_id=event_id) == []


def test_an_event_with_no_subscriber_writes_nothing(store):
    _webhook(store, ("stock_low",))
    event_id = uuid.uuid4()
    assert _record(store, event_id=event_id) == []
    # No dedup record either: once a webhook is subscribed (from before it occurred), it is delivered.
    _webhook(store, at=T0)
    assert len(_record(store, event_id=event_id)) == 1


def test_a_batch_records_each_event_against_the_webhooks_of_its_own_moment(store):
    _webhook(store, at=T0)
    late = _webhook(store, at=T0 + timedelta(minutes=5))
    seen, early, later = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    _record(store, event_id=seen)
    at = T0 + timedelta(minutes=10)
    recorded = store.record_deliveries("order_created", [
        (seen, T0 + timedelta(minutes=1), "{}"), (early, T0 + timedelta(minutes=1), "{}"),
        (later, T0 + timedelta(minutes=6), "{}"), (later, T0 + timedelta(minutes=6), "{}")], at)
    assert len(recorded) == 3  # early: the first hook; later: both; seen: nothing again
    assert len([d for d in recorded if store.get_delivery(late.id, d) is not None]) == 1


def test_webhooks_are_created_got_and_listed_newest_first(store):
    first, second, third = (_webhook(store, at=T0 + timedelta(minutes=minute)) for minute in range(3))
    assert store.get_webhook(second.id).url == "https://hooks.example/in"
    assert store.get_webhook(uuid.uuid4()) is None
    page = store.list_webhooks({}, 2)
    assert [w.id for w in page] == [third.id, second.id]
    assert [w.id for w in store.list_webhooks({}, 2, (page[-1].created_at, page[-1].id))] == [first.id]


def test_a_disabled_webhook_gets_no_new_deliveries_and_its_pending_ones_wait(store):
    hook = _webhook(store)
    [waiting] = _record(store)
    store.update_webhook(hook, {"enabled": False, "disabled_reason": "failing"}, T0 + timedelta(minutes=2))
    assert (store.get_webhook(hook.id).enabled, store.get_webhook(hook.id).disabled_reason) == (False, "failing")
    assert _record(store, occurred_at=T0 + timedelta(minutes=3)) == []
    now = T0 + timedelta(hours=1)
    assert store.claim_due(now, now + timedelta(seconds=30), 10, 4, {}) == []
    store.update_webhook(hook, {"enabled": True, "disabled_reason": None}, T0 + timedelta(minutes=4))
    assert [c.id for c in store.claim_due(now, now + timedelta(seconds=30), 10, 4, {})] == [waiting]


def test_deliveries_are_listed_newest_first_by_status(store):
    hook = _webhook(store)
    for minute in range(1, 4):
        _record(store, occurred_at=T0 + timedelta(minutes=minute))
    [delivered] = _settle(store, T0 + timedelta(minutes=2, seconds=30), [200])  # the oldest due
    listed = store.list_deliveries(hook.id, {}, 10)
    assert [d.created_at for d in listed] == [T0 + timedelta(minutes=m) for m in (3, 2, 1)]
    assert [d.id for d in store.list_deliveries(hook.id, {"status": "delivered"}, 10)] == [delivered.id]
    assert [d.id for d in store.list_deliveries(hook.id, {}, 10, (listed[0].created_at, listed[0].id))] == \
        [d.id for d in listed[1:]]
    assert store.list_deliveries(_webhook(store).id, {}, 10) == []


def test_a_resent_delivery_is_pending_due_now_for_a_new_round(store):
    hook = _webhook(store)
    [delivery_id] = _record(store)
    _settle(store, T0 + timedelta(hours=1), [500])  # failed: one attempt is the round here
    failed = store.get_delivery(hook.id, delivery_id)
    assert (failed.status, failed.attempts) == ("failed", 1)
    again = store.resend(store.get_delivery(hook.id, delivery_id, lock=True), T0 + timedelta(hours=2))
    assert (again.status, again.attempts_before_resend, again.next_attempt_at) == \
        ("pending", 1, T0 + timedelta(hours=2))
    assert store.get_delivery(_webhook(store).id, delivery_id) is None  # only under its own webhook


def test_the_webhook_as_it_was_when_the_event_occurred_decides(store):
    hook = _webhook(store)
    store.update_webhook(hook, {"enabled": False}, T0 + timedelta(minutes=10))
    store.update_webhook(hook, {"enabled": True}, T0 + timedelta(minutes=20))
    store.update_webhook(hook, {"event_types": ["stock_low"]}, T0 + timedelta(minutes=30))
    assert len(_record(store, occurred_at=T0 + timedelta(minutes=5))) == 1  # enabled then, handled late
    assert _record(store, occurred_at=T0 + timedelta(minutes=15)) == []  # emitted while disabled: never
    assert len(_record(store, occurred_at=T0 + timedelta(minutes=25))) == 1
    assert _record(store, occurred_at=T0 + timedelta(minutes=35)) == []  # no longer subscribed
    assert _record(store, occurred_at=T0 - timedelta(minutes=1)) == []  # before it existed


def test_the_types_wanted_are_an_enabled_webhooks_and_what_one_wanted_since_the_moment_given(store):
    store.lock_bindings()  # taken before reading what is wanted (a no-op alone)
    hook = _webhook(store, ("order_created", "stock_low"))
    _webhook(store, ("customer_created",), enabled=False)
    gone = _webhook(store, ("invoice_issued",))
    assert store.wanted_event_types(T0) == {"order_created", "stock_low", "invoice_issued"}
    store.delete_webhook(gone)  # wants nothing from then on, not even for a moment before
    store.update_webhook(hook, {"event_types": ["order_created"]}, T0 + timedelta(minutes=10))
    # stock_low stops being wanted once its version was taken over from before the moment given.
    assert store.wanted_event_types(T0 + timedelta(minutes=5)) == {"order_created", "stock_low"}
    assert store.wanted_event_types(T0 + timedelta(minutes=10)) == {"order_created"}
    store.update_webhook(hook, {"enabled": False}, T0 + timedelta(minutes=20))
    assert store.wanted_event_types(T0 + timedelta(minutes=15)) == {"order_created"}
    assert store.wanted_event_types(T0 + timedelta(minutes=20)) == set()
    store.update_webhook(hook, {"enabled": True}, T0 + timedelta(minutes=30))
    assert store.wanted_event_types(T0 + timedelta(hours=1)) == {"order_created"}


def test_claims_take_at_most_per_host_counting_those_in_flight(store):
    slow, quick = _webhook(store, host="slow.example"), _webhook(store, host="quick.example")
    for _ in range(5):
        _record(store)
    now = T0 + timedelta(hours=1)
    claimed = store.claim_due(now, now + timedelta(seconds=30), 20, 2, {"slow.example": 1})
    by_host = sorted(c.host for c in claimed)
    assert by_host == ["quick.example", "quick.example", "slow.example"]
    assert {c.webhook_id for c in claimed} == {slow.id, quick.id}
    # Claimed rows are not claimed again while their lease holds; after it, they are.
    again = store.claim_due(now, now + timedelta(seconds=30), 20, 2, {})
    assert sorted(c.host for c in again) == ["quick.example"] * 2 + ["slow.example"] * 2
    later = now + timedelta(seconds=31)
    assert len(store.claim_due(later, later + timedelta(seconds=30), 20, 10, {})) == 10


def test_an_outcome_is_recorded_only_under_its_claim(store):
    hook = _webhook(store)
    [delivery_id] = _record(store)
    now = T0 + timedelta(hours=1)
    [claimed] = store.claim_due(now, now + timedelta(seconds=30), 10, 4, {})
    assert claimed.body == '{"a":1}' and claimed.url == "https://hooks.example/in"
    store.resend(store.get_delivery(hook.id, delivery_id, lock=True), now)  # an admin's re-send takes it
    attempt = domain.after_attempt(claimed, domain.Outcome(200), now, 10, 5, 0.5)
    assert store.record_attempt(claimed, attempt, now) is None
    [again] = store.claim_due(now, now + timedelta(seconds=30), 10, 4, {})
    recorded = store.record_attempt(again, attempt, now)
    assert (recorded.status, recorded.attempts, recorded.claim_token) == ("delivered", 1, None)


def test_failing_since_is_the_first_failure_after_a_success(store):
    hook = _webhook(store)
    assert store.note_failed(hook.id, T0).failing_since == T0
    assert store.note_failed(hook.id, T0 + timedelta(hours=1)).failing_since == T0
    store.note_delivered(hook.id)
    assert store.note_failed(hook.id, T0 + timedelta(hours=2)).failing_since == T0 + timedelta(hours=2)


def test_deleting_a_webhook_takes_its_deliveries(store):
    hook = _webhook(store)
    [delivery_id] = _record(store)
    store.delete_webhook(hook)
    assert store.get_delivery(hook.id, delivery_id) is None
    assert store.get_webhook(hook.id) is None and store.note_failed(hook.id, T0) is None
    assert _record(store) == []


def _settle(store, now, outcomes):
    """Claim as many due deliveries as `outcomes` and record one each, in claim order (max attempts 1)."""
    claimed = store.claim_due(now, now + timedelta(seconds=30), len(outcomes), 100, {})
    for delivery, status_code in zip(claimed, outcomes, strict=True):
        store.record_attempt(delivery, domain.after_attempt(delivery, domain.Outcome(status_code), now, 10, 1, 0.5),
                             now)
    return claimed


def test_pruning_takes_ended_deliveries_past_retention_and_never_a_pending_one(store):
    hook = _webhook(store)
    events = [uuid.uuid4() for _ in range(3)]
    for event_id in events:
        _record(store, event_id=event_id)
    ended_at = T0 + timedelta(hours=1)
    delivered, failed = _settle(store, ended_at, [200, 500])  # the third is left pending
    assert store.prune_deliveries(ended_at, 100) == 0  # nothing ended before then
    assert store.prune_deliveries(ended_at + timedelta(seconds=1), 100) == 2
    assert store.get_delivery(hook.id, delivered.id) is None and store.get_delivery(hook.id, failed.id) is None
    [pending] = store.list_deliveries(hook.id, {}, 10)
    assert pending.status == "pending"
    assert store.prune_deliveries(T0 + timedelta(days=400), 100) == 0  # however old


def test_an_event_is_pruned_only_once_no_delivery_refers_to_it(store):
    hook = _webhook(store)
    kept, pruned = uuid.uuid4(), uuid.uuid4()
    _record(store, event_id=kept)
    _record(store, event_id=pruned)
    ended_at = T0 + timedelta(hours=1)
    [first] = _settle(store, ended_at, [200])  # one delivered, the other still pending
    store.prune_deliveries(ended_at + timedelta(seconds=1), 100)
    received = T0 + timedelta(minutes=1)
    assert store.prune_events(received, 100) == 0  # not yet past the retention
    assert store.prune_events(ended_at + timedelta(seconds=1), 100) == 1
    # The pending delivery's event stays, and with it the dedup of a redelivery.
    pending_event = kept if first.event_id == pruned else pruned
    assert _record(store, event_id=pending_event) == []
    # A copy arriving after its event was pruned is a new event (why the retention is days).
    assert len(_record(store, event_id=first.event_id)) == 1
    assert {d.event_id for d in store.list_deliveries(hook.id, {}, 10)} == {kept, pruned}


def test_a_deleted_webhooks_events_are_pruned(store):
    hook = _webhook(store)
    _record(store)
    store.delete_webhook(hook)
    assert store.prune_events(T0 + timedelta(days=31), 100) == 1


def test_pruning_goes_in_bounded_batches_the_oldest_first(store):
    hook = _webhook(store)
    for _ in range(5):
        _record(store)
    _settle(store, T0 + timedelta(hours=1), [200] * 5)
    before = T0 + timedelta(hours=2)
    assert [store.prune_deliveries(before, 2) for _ in range(4)] == [2, 2, 1, 0]
    assert [store.prune_events(before, 3) for _ in range(3)] == [3, 2, 0]
    assert store.list_deliveries(hook.id, {}, 10) == []
