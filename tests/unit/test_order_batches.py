"""create_orders: a batch of creates shares one transaction and one reservation call, and each
entry's outcome is its own (the real entrypoints of order_service and inventory_service on fakes)."""
import time
import uuid

import pytest

from common.contract.caller import ENTRY_METHOD, Caller, entry_digest, sign_caller
from common.contract.errors import Forbidden, UnknownSku, from_outcome
from tests.unit.fakes import SETTINGS
from tests.unit.test_order_rules import CUSTOMER, World

ADMIN = Caller("admin-1", "admin").to_context()


@pytest.fixture
def world():
    return World()


def entry(sku="A", quantity=1, customer_id=CUSTOMER["id"], key=None, caller=ADMIN, deadline=None, attempt=True):
    """One entry as the gateway sends it: its caller signed for it."""
    return signed({"data": {"customer_id": customer_id, "items": [{"sku": sku, "quantity": quantity}]},
                   "idempotency_key": key, "attempt_id": str(uuid.uuid4()) if attempt else None, "caller": caller,
                   "request_id": f"req-{uuid.uuid4().hex[:6]}", "deadline": deadline, "traceparent": None})


def signed(raw, key=SETTINGS.caller_signing_keys[0]):
    digest = entry_digest(raw.get("data"), raw.get("idempotency_key"), raw.get("attempt_id"))
    return {**raw, "caller": sign_caller(key, raw["caller"], ENTRY_METHOD, digest)}


def codes(outcomes):
    return ["ok" if "order" in outcome else outcome["error"]["code"] for outcome in outcomes]


def test_a_batch_of_mixed_outcomes_fails_each_bad_entry_alone(world):
    world.stock.add_product("SHORT", stock=1, unit_price="1.00")
    batch = [entry(), entry(sku="NOPE"), entry(sku="SHORT", quantity=5), entry(customer_id=str(uuid.uuid4())),
             entry(sku="B", quantity=2), signed({"data": {"items": []}, "caller": ADMIN})]
    outcomes = world.orders.create_orders(batch)
    assert codes(outcomes) == ["ok", "unknown_sku", "insufficient_stock", "unknown_customer", "ok",
                               "validation_failed"]
    assert world.inventory_rpc.calls == ["reserve_many"]  # one call for the batch
    assert world.orders.uow.commits == 1  # one transaction for the batch
    assert world.reserved("A") == 1 and world.reserved("B") == 2 and world.reserved("SHORT") == 0
    assert outcomes[2]["error"]["details"]["available"] == 1  # what was there before the batch
    made = {outcome["order"]["id"] for outcome in outcomes if "order" in outcome}
    assert made == {batch[0]["attempt_id"], batch[4]["attempt_id"]} == {str(i) for i in world.orders_store.tables["orders"]}


def test_each_failure_is_its_attempts_answer_and_each_event_carries_its_own_request_id(world):
    batch = [entry(), entry(sku="NOPE")]
    world.orders.create_orders(batch)
    assert set(world.orders_store.tables["failed"]) == {uuid.UUID(batch[1]["attempt_id"])}
    again = world.orders.create_orders(batch)  # a re-drive of the same attempts
    assert codes(again) == ["ok", "unknown_sku"] and world.reserved("A") == 1
    assert again[0]["order"]["id"] == batch[0]["attempt_id"]
    created = [row for row in world.orders.uow.events if row[0] == "order_created"]
    assert len(created) == 1


def test_an_entry_past_its_deadline_fails_alone_and_gives_its_stock_back(world):
    batch = [entry(quantity=2), entry(quantity=3, deadline=time.time() + 0.1)]
    outcomes = world.orders.create_orders(batch)
    assert codes(outcomes) == ["ok", "deadline_exceeded"]
    assert world.reserved("A") == 2 and world.orders_store.tables["failed"] == {}  # a deadline is not recorded
    assert "release" in world.inventory_rpc.calls


def test_one_key_twice_in_a_batch_makes_one_order_and_replays_it(world):
    first, second = entry(key="checkout-7"), entry(key="checkout-7")
    other_body = entry(key="checkout-7", quantity=4)
    outcomes = world.orders.create_orders([first, second, other_body])
    assert codes(outcomes) == ["ok", "ok", "idempotency_key_reused"]
    assert outcomes[0]["order"] == outcomes[1]["order"] and world.reserved("A") == 1


def test_each_entry_is_checked_as_its_own_caller(world):
    stranger = Caller("customer:x", "customer", str(uuid.uuid4())).to_context()
    outcomes = world.orders.create_orders([entry(), entry(caller=stranger), entry(caller=None)])
    assert codes(outcomes) == ["ok", "forbidden", "unauthenticated"]


def test_an_entry_whose_signature_does_not_hold_fails_alone_unauthenticated(world):
    good, edited, unsigned, other_body = entry(), entry(), entry(), entry()
    edited["caller"] = {**edited["caller"], "sub": "someone-else"}
    unsigned["caller"] = ADMIN
    other_body["data"] = {**other_body["data"], "items": [{"sku": "A", "quantity": 2}]}
    wrong_key = signed({**entry(), "caller": ADMIN}, key=b"another-key-of-16-chars")
    outcomes = world.orders.create_orders([good, edited, unsigned, other_body, wrong_key])
    assert codes(outcomes) == ["ok"] + ["unauthenticated"] * 4
    assert [from_outcome(o).details["caller_signature"] for o in outcomes[1:]] == ["bad", "missing", "bad", "bad"]
    assert world.reserved("A") == 1 and len(world.orders_store.tables["orders"]) == 1
    assert world.orders_store.tables["failed"] == {}  # nothing was attempted for them


def test_only_a_service_or_an_admin_may_send_a_batch(world):
    world.orders.caller = Caller("customer:x", "customer", CUSTOMER["id"])
    with pytest.raises(Forbidden):
        world.orders.create_orders([entry()])


def test_a_single_create_is_a_batch_of_one_reserving_as_before_and_raising_its_own_error(world):
    order = world.create()
    assert world.inventory_rpc.calls == ["reserve"] and order["status"] == "pending"
    outcome = world.orders.create_orders([entry(sku="NOPE")])[0]
    assert isinstance(from_outcome(outcome), UnknownSku)


def test_the_batch_rolled_back_ends_each_attempt_alone(world):
    world.orders_store.fail_on_insert = RuntimeError("connection lost")
    batch = [entry(), entry(sku="B")]
    outcomes = world.orders.create_orders(batch)
    assert codes(outcomes) == ["internal_error", "internal_error"]
    assert set(world.orders_store.tables["failed"]) == {uuid.UUID(item["attempt_id"]) for item in batch}
    assert world.reserved("A") == 0 and world.reserved("B") == 0
