"""OrderStore on Postgres and InMemoryOrderStore (tests/unit/fakes.py) answer alike."""
import json
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from common.contract.caller import Caller
from common.contract.schemas.orders import OrderSchema
from common.kit.outbox import Outbox
from order_service import domain
from order_service.storage import ATTEMPT_RECORDS, OrderStore
from tests.stores.conftest import BACKENDS, MEMORY
from tests.unit.fakes import InMemoryOrderStore

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)
ADMIN = Caller("admin-1", "admin")
CUSTOMER_ID = uuid.uuid4()
ADDRESS = {"line1": "1 Road", "city": "X", "postal_code": "1", "country": "GB"}


@pytest.fixture(params=BACKENDS)
def store(request):
    if request.param == MEMORY:
        return InMemoryOrderStore()
    return OrderStore(request.getfixturevalue("session"))


def saved(store):
    """What the unit of work does before COMMIT: the ORM's flush (in memory a change is made at once)."""
    if isinstance(store, OrderStore):
        store.session.flush()


def reservation(*prices):
    return {"status": "reserved", "items": [{"sku": sku, "quantity": 1, "unit_price": price, "currency": "EUR"}
                                            for sku, price in prices]}


def insert(store, at=T0, customer_id=CUSTOMER_ID, lines=(("B", 1), ("A", 2)), by="admin-1"):
    """A new pending order, made as create_order makes it; returns its id."""
    order_id = uuid.uuid4()
    lines = domain.merge_lines([{"sku": sku, "quantity": quantity} for sku, quantity in lines])
    order_row, item_rows = domain.new_order(
        order_id, {"id": str(customer_id), "shipping_address": ADDRESS}, lines,
        reservation(("A", "29.99"), ("B", "0.10"), ("C", "5.00")), None, at)
    event = Outbox.row("order_created", OrderSchema().dump({**order_row, "items": item_rows}))
    store.insert_new_orders([(order_row, item_rows, by, event)])
    return order_id


def history(store, order_id):
    return [(c.from_status, c.to_status, c.changed_by) for c in store.status_history(order_id)]


def test_a_new_order_reads_back_with_its_items_and_first_status(store):
    order_id = insert(store)
    view = store.order_view(order_id)
    assert view["items"] == [{"sku": "A", "quantity": 2, "unit_price": "29.99", "line_total": "59.98"},
                             {"sku": "B", "quantity": 1, "unit_price": "0.10", "line_total": "0.10"}]
    assert {key: view[key] for key in ("id", "customer_id", "status", "total_amount", "currency", "version",
                                       "shipping_address", "carrier", "tracking_number")} == {
        "id": order_id, "customer_id": CUSTOMER_ID, "status": "pending", "total_amount": Decimal("60.08"),
        "currency": "EUR", "version": 1, "shipping_address": ADDRESS, "carrier": None, "tracking_number": None}
    assert view["created_at"] == view["updated_at"] == T0
    order = store.get_order(order_id, lock=True)
    assert [item.sku for item in order.items] == ["A", "B"]
    assert history(store, order_id) == [(None, "pending", "admin-1")]
    assert store.order_view(uuid.uuid4()) is None and store.get_order(uuid.uuid4()) is None


def test_orders_made_together_keep_their_own_items_status_and_address(store):
    made = []
    for lines, address, by in ((("A", 1),), None, "admin-1"), ((("C", 2), ("B", 1)), {"city": "Paris"}, "customer:9"):
        order_id = uuid.uuid4()
        order_row, item_rows = domain.new_order(
            order_id, {"id": str(CUSTOMER_ID), "shipping_address": address},
            domain.merge_lines([{"sku": sku, "quantity": quantity} for sku, quantity in lines]),
            reservation(("A", "29.99"), ("B", "0.10"), ("C", "5.00")), None, T0)
        made.append((order_row, item_rows, by, Outbox.row("order_created", {"order_id": str(order_id)})))
    store.insert_new_orders(made)
    first, second = (store.order_view(order_row["id"]) for order_row, *_ in made)
    assert [(item["sku"], item["quantity"]) for item in first["items"]] == [("A", 1)]
    assert [(item["sku"], item["quantity"]) for item in second["items"]] == [("B", 1), ("C", 2)]
    assert (first["shipping_address"], second["shipping_address"]) == (None, {"city": "Paris"})
    assert (first["total_amount"], second["total_amount"]) == (Decimal("29.99"), Decimal("10.10"))
    assert [history(store, order_row["id"]) for order_row, *_ in made] == [
        [(None, "pending", "admin-1")], [(None, "pending", "customer:9")]]


def context(store, order_id, customer_id=CUSTOMER_ID):
    return store.create_contexts([(order_id, customer_id)])[order_id]


def test_the_create_context_tells_what_an_attempt_left_and_who_the_customer_is(store):
    order_id = uuid.uuid4()
    assert context(store, order_id) == (False, None, None)
    store.remember_customer(CUSTOMER_ID, ADDRESS, T0)
    store.record_failed_attempt(order_id, {"code": "insufficient_stock"}, T0)
    store.record_failed_attempt(order_id, {"code": "internal_error"}, T0)  # the first failure stays
    done_before, failure, customer = context(store, order_id)
    assert (done_before, failure) == (False, {"code": "insufficient_stock"})
    assert (customer.id, customer.shipping_address) == (CUSTOMER_ID, ADDRESS)
    made = insert(store)
    assert store.attempt_outcome(made) == (True, None, None)


def test_the_contexts_of_a_batch_come_together_each_for_its_own_order(store):
    made, failed, fresh, stranger = insert(store), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    store.remember_customer(CUSTOMER_ID, ADDRESS, T0)
    store.record_failed_attempt(failed, {"code": "unknown_sku"}, T0)
    store.lock_attempts(sorted([made, failed, fresh]))
    contexts = store.create_contexts([(made, CUSTOMER_ID), (failed, CUSTOMER_ID), (fresh, stranger)])
    assert set(contexts) == {made, failed, fresh}
    assert contexts[made][:2] == (True, None) and contexts[failed][:2] == (False, {"code": "unknown_sku"})
    assert contexts[fresh] == (False, None, None)
    assert contexts[made][2].shipping_address == ADDRESS


def test_a_change_attempt_keeps_its_answer_or_its_failure_and_outlives_its_order(store):
    order_id, changed, failed = insert(store), uuid.uuid4(), uuid.uuid4()
    store.lock_attempts([changed])
    answer = {"id": str(order_id), "customer_id": str(CUSTOMER_ID), "total_amount": "60.08", "version": 2}
    store.record_change(changed, order_id, answer, T0)
    store.record_failed_attempt(failed, {"code": "service_unavailable"}, T0)
    assert store.attempt_outcome(changed) == (False, None, answer)
    assert store.attempt_outcome(failed) == (False, {"code": "service_unavailable"}, None)
    order = store.get_order(order_id, lock=True)
    order.delete(ADMIN)
    store.delete_order(order)
    saved(store)
    assert store.attempt_outcome(changed) == (False, None, answer)


def test_a_key_given_back_is_free_again_only_for_the_order_that_claimed_it(store):
    first, second = uuid.uuid4(), uuid.uuid4()
    assert store.claim_idempotency_key("k-1", "hash", first, T0) is None
    store.unclaim_idempotency_key("k-1", second)  # not its claim: nothing changes
    assert store.claim_idempotency_key("k-1", "hash", second, T0).order_id == first
    store.unclaim_idempotency_key("k-1", first)
    assert store.claim_idempotency_key("k-1", "hash", second, T0) is None


def test_a_customer_is_not_overwritten_by_an_older_event(store):
    store.remember_customer(CUSTOMER_ID, {"line1": "new"}, T0)
    store.remember_customer(CUSTOMER_ID, {"line1": "old"}, T0 - timedelta(minutes=1))
    assert context(store, uuid.uuid4())[2].shipping_address == {"line1": "new"}
    store.remember_customer(CUSTOMER_ID, {"line1": "newer"}, T0 + timedelta(minutes=1))
    assert context(store, uuid.uuid4())[2].shipping_address == {"line1": "newer"}


def test_lists_are_newest_first_filtered_and_continue_after_a_key(store):
    other = uuid.uuid4()
    ids = [insert(store, at=T0 + timedelta(minutes=i), customer_id=CUSTOMER_ID if i % 2 else other)
           for i in range(5)]
    store.get_order(ids[3]).change_status("cancelled", ADMIN, T0 + timedelta(hours=1))
    saved(store)

    def listed(filters=None, limit=10, after=None):
        return [row["id"] for row in store.list_orders(filters or {}, limit, after)]

    assert listed() == ids[::-1]
    assert listed(limit=2) == [ids[4], ids[3]]
    assert listed(after=(T0 + timedelta(minutes=3), ids[3])) == [ids[2], ids[1], ids[0]]
    assert listed({"customer_id": CUSTOMER_ID}) == [ids[3], ids[1]]
    assert listed({"status": "cancelled"}) == [ids[3]]
    assert listed({"status": "pending", "customer_id": other}) == [ids[4], ids[2], ids[0]]
    assert listed({"created_after": T0 + timedelta(minutes=1), "created_before": T0 + timedelta(minutes=4)}) == [
        ids[3], ids[2]]
    assert store.list_orders({}, 1)[0]["items"][0] == {"sku": "A", "quantity": 2, "unit_price": "29.99",
                                                       "line_total": "59.98"}


def test_status_changes_and_their_history_are_kept(store):
    order_id = insert(store)
    order = store.get_order(order_id, lock=True)
    order.update_shipping({"carrier": "DHL", "tracking_number": "JD1"}, ADMIN, T0 + timedelta(minutes=1))
    order.change_status("processing", ADMIN, T0 + timedelta(minutes=2))
    order.change_status("shipped", Caller("order-bot", "service"), T0 + timedelta(minutes=3), reason="Left the depot")
    saved(store)
    view = store.order_view(order_id)
    assert (view["status"], view["version"], view["carrier"], view["tracking_number"]) == ("shipped", 4, "DHL", "JD1")
    assert view["updated_at"] == T0 + timedelta(minutes=3)
    assert history(store, order_id) == [(None, "pending", "admin-1"), ("pending", "processing", "admin-1"),
                                        ("processing", "shipped", "order-bot")]
    assert [c.changed_at for c in store.status_history(order_id)][1:] == [T0 + timedelta(minutes=2),
                                                                          T0 + timedelta(minutes=3)]
    assert [c.reason for c in store.status_history(order_id)] == [None, None, "Left the depot"]
    assert [event_type for event_type, _ in order.events] == [
        "order_updated", "order_status_changed", "order_processing", "order_status_changed", "order_shipped"]
    assert store.order_states([order_id, uuid.uuid4()]) == {str(order_id): "shipped"}


def test_replaced_items_and_address_are_kept(store):
    order_id = insert(store)
    order = store.get_order(order_id, lock=True)
    lines = domain.merge_lines([{"sku": "C", "quantity": 3}, {"sku": "B", "quantity": 4}])
    edited = order.edit(T0 + timedelta(minutes=1), lines, reservation(("B", "0.10"), ("C", "5.00")),
                        shipping_address=None)
    saved(store)
    view = store.order_view(order_id)
    assert view["items"] == [{"sku": "B", "quantity": 4, "unit_price": "0.10", "line_total": "0.40"},
                             {"sku": "C", "quantity": 3, "unit_price": "5.00", "line_total": "15.00"}]
    assert (view["total_amount"], view["shipping_address"], view["version"]) == (Decimal("15.40"), None, 2)
    assert edited["total_amount"] == "15.40" and edited["version"] == 2
    assert [item.sku for item in store.get_order(order_id).items] == ["B", "C"]


def test_a_deleted_order_is_gone_with_its_history(store):
    kept, gone = insert(store), insert(store)
    order = store.get_order(gone, lock=True)
    order.delete(ADMIN)
    store.delete_order(order)
    saved(store)
    assert store.get_order(gone) is None and store.order_view(gone) is None
    assert store.status_history(gone) == []
    assert store.order_states([kept, gone]) == {str(kept): "pending"}
    assert store.attempt_outcome(gone) == (False, None, None)


def test_an_idempotency_key_is_claimed_once_and_keeps_its_response(store):
    order_id = uuid.uuid4()
    assert store.claim_idempotency_key("checkout-1", "hash-1", order_id, T0) is None
    store.remember_response("checkout-1", {"id": str(order_id), "total_amount": "1.00"})
    first_use = store.claim_idempotency_key("checkout-1", "hash-2", uuid.uuid4(), T0)
    assert (first_use.request_hash, first_use.order_id) == ("hash-1", order_id)
    assert json.loads(first_use.response) == {"id": str(order_id), "total_amount": "1.00"}


def test_pruning_forgets_old_keys_and_attempts(store):
    old_attempt, new_attempt, old_change, new_change = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    store.record_change(old_change, uuid.uuid4(), {"id": "old"}, T0 - timedelta(days=2))
    store.record_change(new_change, uuid.uuid4(), {"id": "new"}, T0)
    store.claim_idempotency_key("old", "h", uuid.uuid4(), T0 - timedelta(days=2))
    store.claim_idempotency_key("new", "h", uuid.uuid4(), T0)
    store.record_failed_attempt(old_attempt, {"code": "x"}, T0 - timedelta(days=2))
    store.record_failed_attempt(new_attempt, {"code": "y"}, T0)
    assert [store.prune_attempts(kind, T0 - timedelta(days=1)) for kind in ATTEMPT_RECORDS] == [1, 1, 1]
    assert store.claim_idempotency_key("old", "h2", uuid.uuid4(), T0) is None  # free again
    assert store.claim_idempotency_key("new", "h2", uuid.uuid4(), T0).request_hash == "h"
    assert store.attempt_outcome(old_attempt) == (False, None, None)
    assert store.attempt_outcome(new_attempt) == (False, {"code": "y"}, None)
    assert store.attempt_outcome(old_change) == (False, None, None)
    assert store.attempt_outcome(new_change) == (False, None, {"id": "new"})
