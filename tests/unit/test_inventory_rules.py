"""inventory_service's rules through its real entrypoints, on in-memory fakes (no Postgres, no broker)."""
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from nameko.testing.services import worker_factory

from common.contract.caller import Caller
from common.contract.context import DEADLINE_KEY
from common.contract.errors import (
    InsufficientStock,
    InvalidTransition,
    NotFound,
    ServiceUnavailable,
    StockBelowReserved,
    UnknownSku,
    ValidationFailed,
)
from inventory_service.service import InventoryService
from tests.unit.fakes import SETTINGS, FakeUnitOfWork, InMemoryInventoryStore


@pytest.fixture
def store():
    return InMemoryInventoryStore()


@pytest.fixture
def inventory(store):
    return worker_factory(InventoryService, uow=FakeUnitOfWork(store), settings=SETTINGS,
                          caller=Caller("order_service", "service"))


def order_id():
    return str(uuid.uuid4())


def units(store, sku):
    product = store.get_product(sku)
    return product.stock, product.reserved


def test_a_reservation_takes_every_item_at_its_current_price(inventory, store):
    store.add_product("A", stock=5, unit_price="2.50")
    store.add_product("B", stock=5, unit_price="9.99", currency="EUR")
    view = inventory.reserve(order_id(), [{"sku": "B", "quantity": 1}, {"sku": "A", "quantity": 3}])
    assert view["status"] == "reserved"
    assert [(i["sku"], i["quantity"], i["unit_price"]) for i in view["items"]] == [("A", 3, "2.50"), ("B", 1, "9.99")]
    assert units(store, "A") == (5, 3) and units(store, "B") == (5, 1)
    [(event_type, data)] = inventory.uow.events
    assert event_type == "stock_reserved" and [p["sku"] for p in data["products"]] == ["A", "B"]


def test_a_reservation_takes_all_or_nothing(inventory, store):
    store.add_product("A", stock=5)
    store.add_product("B", stock=1)
    with pytest.raises(InsufficientStock) as error:
        inventory.reserve(order_id(), [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 2}])
    assert error.value.details["sku"] == "B" and error.value.details["available"] == 1
    assert units(store, "A") == (5, 0) and units(store, "B") == (1, 0)
    assert store.tables["reservations"] == {}
    # The refused unit of work committed nothing; its refusal was recorded in one of its own.
    assert inventory.uow.event_types() == ["stock_reservation_failed"]


def test_a_batch_takes_its_orders_in_turn_and_fails_only_those_that_cannot_be_had(inventory, store):
    store.add_product("A", stock=3)
    store.add_product("B", stock=5)
    held = order_id()
    inventory.reserve(held, [{"sku": "B", "quantity": 1}])
    first, short, unknown, fits = order_id(), order_id(), order_id(), order_id()
    outcomes = inventory.reserve_many([
        {"order_id": first, "items": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}]},
        {"order_id": short, "items": [{"sku": "A", "quantity": 2}]},
        {"order_id": held, "items": [{"sku": "A", "quantity": 1}]},
        {"order_id": unknown, "items": [{"sku": "NOPE", "quantity": 1}]},
        {"order_id": "not-a-uuid", "items": [{"sku": "A", "quantity": 1}]},
        {"order_id": fits, "items": [{"sku": "A", "quantity": 1}]},
        {"order_id": first, "items": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}]},
    ])
    assert [outcome.get("kind") or outcome["reservation"]["order_id"] for outcome in outcomes] == [
        first, "InsufficientStock", held, "UnknownSku", "ValidationFailed", fits, first]
    assert outcomes[1]["error"]["details"]["available"] == 1
    assert [item["sku"] for item in outcomes[2]["reservation"]["items"]] == ["B"]  # the first reservation
    assert outcomes[6] == outcomes[0]
    assert units(store, "A") == (3, 3) and units(store, "B") == (5, 2)
    assert set(store.tables["reservations"]) == {uuid.UUID(held), uuid.UUID(first), uuid.UUID(fits)}
    assert inventory.uow.event_types().count("stock_reservation_failed") == 1


def test_a_refusal_is_recorded_once_per_attempt_due_at_its_deadline_and_withdrawn_by_its_success(store):
    deadline = 1_900_000_000.0
    inventory = worker_factory(InventoryService, uow=FakeUnitOfWork(store), settings=SETTINGS,
                               caller=Caller("order_service", "service"), context_data={DEADLINE_KEY: deadline})
    store.add_product("A", stock=1)
    store.add_product("B", stock=5)
    attempt = order_id()
    lines = [{"sku": "B", "quantity": 1}, {"sku": "A", "quantity": 2}]
    for _ in range(2):  # the same attempt refused twice: one row
        with pytest.raises(InsufficientStock):
            inventory.reserve(attempt, lines)
    [row] = store.tables["refusals"].values()
    assert row["event_type"] == "stock_reservation_failed"
    assert row["next_attempt_at"] == datetime.fromtimestamp(deadline, timezone.utc)
    assert row["payload"]["data"] == {"order_id": attempt,
                                      "items": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}],
                                      "short": [{"sku": "A", "requested": 2, "available": 1}]}
    other = order_id()
    with pytest.raises(InsufficientStock):
        inventory.reserve(other, lines)
    assert len(store.tables["refusals"]) == 2
    store.get_product("A").stock = 2  # more came in: a later run of the first attempt succeeds
    inventory.reserve(attempt, lines)
    assert [row["payload"]["data"]["order_id"] for row in store.tables["refusals"].values()] == [other]


def test_without_a_deadline_a_refusal_falls_due_after_the_create_deadline(store):
    inventory = worker_factory(InventoryService, uow=FakeUnitOfWork(store), settings=SETTINGS,
                               caller=Caller("order_service", "service"), context_data={})
    store.add_product("A", stock=0)
    before = datetime.now(timezone.utc)
    with pytest.raises(InsufficientStock):
        inventory.reserve(order_id(), [{"sku": "A", "quantity": 1}])
    [row] = store.tables["refusals"].values()
    assert row["next_attempt_at"] - before >= timedelta(seconds=SETTINGS.order_create_deadline_seconds)


def test_products_announce_their_creation_and_changes_and_stock_coming_back(inventory, store):
    inventory.caller = Caller("admin-1", "admin")
    created = inventory.create_product({"sku": "N", "name": "New", "unit_price": "1.00", "stock": 1})
    assert inventory.uow.events == [("product_created", created)]
    inventory.caller = Caller("order_service", "service")
    held = order_id()
    inventory.reserve(held, [{"sku": "N", "quantity": 1}])  # 0 available
    inventory.release(held)  # back to 1: stock_back
    inventory.reserve(order_id(), [{"sku": "N", "quantity": 1}])
    inventory.caller = Caller("admin-1", "admin")
    updated = inventory.update_product("N", {"stock": 4})  # 0 -> 3 available: stock_back
    inventory.update_product("N", {"stock": 5})  # 3 -> 4: not back from 0
    assert inventory.uow.event_types() == ["product_created", "stock_reserved", "stock_released", "stock_back",
                                           "stock_reserved", "product_updated", "stock_back", "product_updated"]
    back = [data for event_type, data in inventory.uow.events if event_type == "stock_back"]
    assert [product["available"] for product in back] == [1, 3]
    assert [data for event_type, data in inventory.uow.events if event_type == "product_updated"][0] == updated


def test_unknown_skus_are_refused_before_shortage(inventory, store):
    store.add_product("A", stock=0)
    with pytest.raises(UnknownSku) as error:
        inventory.reserve(order_id(), [{"sku": "A", "quantity": 1}, {"sku": "NOPE", "quantity": 1}])
    assert error.value.details == {"skus": ["NOPE"]}


def test_reserve_is_idempotent_per_order(inventory, store):
    store.add_product("A", stock=5)
    oid = order_id()
    first = inventory.reserve(oid, [{"sku": "A", "quantity": 2}])
    assert inventory.reserve(oid, [{"sku": "A", "quantity": 2}]) == first
    assert units(store, "A") == (5, 2)
    assert inventory.uow.event_types() == ["stock_reserved"]


def test_stock_low_fires_once_per_crossing(inventory, store):
    store.add_product("A", stock=10, threshold=5)
    inventory.reserve(order_id(), [{"sku": "A", "quantity": 4}])  # 6 left: above
    inventory.reserve(order_id(), [{"sku": "A", "quantity": 2}])  # 4 left: crosses
    inventory.reserve(order_id(), [{"sku": "A", "quantity": 1}])  # 3 left: already below
    assert inventory.uow.event_types().count("stock_low") == 1


def test_release_and_commit_are_idempotent_and_final(inventory, store):
    store.add_product("A", stock=5)
    released, committed = order_id(), order_id()
    inventory.reserve(released, [{"sku": "A", "quantity": 2}])
    inventory.reserve(committed, [{"sku": "A", "quantity": 1}])

    assert inventory.release(released)["status"] == "released"
    assert inventory.release(released)["status"] == "released"
    assert inventory.commit(committed)["status"] == "committed"
    assert inventory.commit(committed)["status"] == "committed"
    assert units(store, "A") == (4, 0)
    assert inventory.uow.event_types().count("stock_released") == 1
    assert inventory.uow.event_types().count("stock_committed") == 1
    with pytest.raises(InvalidTransition):
        inventory.commit(released)
    with pytest.raises(InvalidTransition):
        inventory.release(committed)
    with pytest.raises(NotFound):
        inventory.release(order_id())


def test_a_replacement_moves_only_the_difference(inventory, store):
    store.add_product("A", stock=5)
    store.add_product("B", stock=5)
    oid = order_id()
    inventory.reserve(oid, [{"sku": "A", "quantity": 3}])
    view = inventory.replace_reservation(oid, [{"sku": "A", "quantity": 1}, {"sku": "B", "quantity": 4}])
    assert [(i["sku"], i["quantity"]) for i in view["items"]] == [("A", 1), ("B", 4)]
    assert units(store, "A") == (5, 1) and units(store, "B") == (5, 4)


def test_a_replacement_that_cannot_be_reserved_leaves_the_old_one(inventory, store):
    store.add_product("A", stock=5)
    store.add_product("B", stock=2)
    oid = order_id()
    inventory.reserve(oid, [{"sku": "A", "quantity": 3}])
    with pytest.raises(InsufficientStock) as error:
        inventory.replace_reservation(oid, [{"sku": "A", "quantity": 5}, {"sku": "B", "quantity": 3}])
    # The order's own 3 units of A count as available to it: B is what is short.
    assert error.value.details["sku"] == "B"
    assert units(store, "A") == (5, 3) and units(store, "B") == (2, 0)
    assert [(i.sku, i.quantity) for i in store.reservation_items(uuid.UUID(oid))] == [("A", 3)]


def test_stock_cannot_go_below_what_is_reserved(inventory, store):
    store.add_product("A", stock=5)
    inventory.reserve(order_id(), [{"sku": "A", "quantity": 3}])
    inventory.caller = Caller("admin-1", "admin")  # stock changes are the admin's
    with pytest.raises(StockBelowReserved):
        inventory.update_product("A", {"stock": 2})
    assert inventory.update_product("A", {"stock": 3})["available"] == 0


def test_products_page_by_sku_with_a_cursor(inventory, store):
    for sku in ("C", "A", "B"):
        store.add_product(sku, stock=1)
    first = inventory.list_products(limit=2)
    assert [product["sku"] for product in first["items"]] == ["A", "B"]
    rest = inventory.list_products(limit=2, cursor=first["next_cursor"])
    assert [product["sku"] for product in rest["items"]] == ["C"] and rest["next_cursor"] is None
    with pytest.raises(ValidationFailed) as error:
        inventory.list_products(cursor="not-a-cursor")
    assert error.value.details == {"cursor": ["Not a cursor this API issued."]}
    with pytest.raises(ValidationFailed) as error:
        inventory.list_products(limit=101)
    assert list(error.value.details) == ["limit"]


class _Orders:
    """order_service as the reconciler sees it: {order id: status}."""

    def __init__(self, states=None, error=None):
        self.states, self.error = states or {}, error

    def order_states(self, order_ids):
        if self.error:
            raise self.error
        return {order_id: self.states[order_id] for order_id in order_ids if order_id in self.states}


def _age_every_reservation(store):
    for reservation in store.tables["reservations"].values():
        reservation.checked_at -= timedelta(seconds=SETTINGS.reservation_grace_seconds + 1)


@pytest.mark.parametrize("order_status, reservation_after, stock_after", [
    (None, "released", (5, 0)),          # the order never committed
    ("cancelled", "released", (5, 0)),   # its release failed after the cancel
    ("shipped", "committed", (3, 0)),    # its commit failed after the shipment
    ("delivered", "committed", (3, 0)),
    ("pending", "reserved", (5, 2)),     # alive: left alone
    ("processing", "reserved", (5, 2)),
])
def test_the_reconciler_settles_a_reservation_by_its_orders_status(store, order_status, reservation_after,
                                                                    stock_after):
    store.add_product("A", stock=5)
    oid = order_id()
    orders = _Orders({oid: order_status} if order_status else {})
    inventory = worker_factory(InventoryService, uow=FakeUnitOfWork(store), settings=SETTINGS,
                               caller=Caller("order_service", "service"), order_rpc=orders)
    inventory.reserve(oid, [{"sku": "A", "quantity": 2}])
    _age_every_reservation(store)

    inventory.reconcile_reservations()

    assert store.get_reservation(uuid.UUID(oid)).status == reservation_after
    assert units(store, "A") == stock_after


def test_the_reconciler_leaves_young_reservations_and_waits_out_a_missing_order_service(store):
    store.add_product("A", stock=5)
    oid = order_id()
    inventory = worker_factory(InventoryService, uow=FakeUnitOfWork(store), settings=SETTINGS,
                               caller=Caller("order_service", "service"),
                               order_rpc=_Orders(error=ServiceUnavailable("order_service is not running.",
                                                                          {"service": "order_service"})))
    inventory.reserve(oid, [{"sku": "A", "quantity": 2}])
    inventory.reconcile_reservations()  # younger than the grace: not even asked about
    _age_every_reservation(store)
    inventory.reconcile_reservations()  # order_service is not running: nothing is decided
    assert store.get_reservation(uuid.UUID(oid)).status == "reserved"
    assert units(store, "A") == (5, 2)
