"""order_service's orchestration through its real entrypoints, with inventory_service's real
entrypoints behind it, both on in-memory fakes (no Postgres, no broker)."""
import uuid

import pytest
from nameko.testing.services import worker_factory

from common.contract.caller import Caller
from common.contract.errors import (
    DomainError,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidTransition,
    NotFound,
    OutcomeUnknown,
    ServiceUnavailable,
    UnknownCustomer,
    UpstreamTimeout,
    ValidationFailed,
    VersionConflict,
)
from inventory_service.service import InventoryService
from order_service.service import OrderService
from tests.unit.fakes import (
    SETTINGS,
    AsRpc,
    FakeCustomerService,
    FakeUnitOfWork,
    InMemoryInventoryStore,
    InMemoryOrderStore,
)

CUSTOMER = {"id": str(uuid.uuid4()), "shipping_address": {"line1": "1 Road", "city": "X", "postal_code": "1",
                                                          "country": "GB"}}


class World:
    """order_service with inventory_service behind it, each on its own fakes."""

    def __init__(self, settings=SETTINGS):
        self.stock = InMemoryInventoryStore()
        self.stock.add_product("A", stock=10, unit_price="29.99")
        self.stock.add_product("B", stock=10, unit_price="0.10")
        self.inventory = worker_factory(InventoryService, uow=FakeUnitOfWork(self.stock), settings=settings,
                                        caller=Caller("order_service", "service"))
        self.inventory_rpc = AsRpc(self.inventory)
        self.orders_store = InMemoryOrderStore()
        self.customers = FakeCustomerService(CUSTOMER)
        self.orders = worker_factory(OrderService, uow=FakeUnitOfWork(self.orders_store), settings=settings,
                                     caller=Caller("admin-1", "admin"), customer_rpc=self.customers, context_data={},
                                     inventory_rpc=self.inventory_rpc)

    def reserved(self, sku):
        return self.stock.get_product(sku).reserved

    def order_events(self):
        return self.orders.uow.event_types()

    def create(self, quantity=2, sku="A", **kwargs):
        return self.orders.create_order({"customer_id": CUSTOMER["id"],
                                         "items": [{"sku": sku, "quantity": quantity}]}, **kwargs)


@pytest.fixture
def world():
    return World()


def test_create_order_persists_with_its_event_in_one_transaction(world):
    order = world.create()
    assert order["total_amount"] == "59.98" and order["status"] == "pending"
    [(event_type, data)] = world.orders.uow.events
    assert event_type == "order_created" and data == order
    assert world.orders.uow.commits == 1
    assert world.reserved("A") == 2
    assert world.orders.get_order(order["id"]) == order


def test_unknown_customer_reserves_nothing(world):
    with pytest.raises(UnknownCustomer):
        world.orders.create_order({"customer_id": str(uuid.uuid4()), "items": [{"sku": "A", "quantity": 1}]})
    assert world.inventory_rpc.calls == []
    assert world.reserved("A") == 0


def test_refused_reservation_writes_nothing(world):
    with pytest.raises(InsufficientStock):
        world.create(quantity=11)
    assert world.orders_store.tables["orders"] == {}
    assert world.order_events() == []
    assert world.reserved("A") == 0
    assert "release" not in world.inventory_rpc.calls


def test_failed_persist_releases_the_reservation_and_emits_nothing(world):
    world.orders_store.fail_on_insert = RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        world.create()
    assert world.inventory_rpc.calls == ["reserve", "release"]
    assert world.reserved("A") == 0
    assert world.orders_store.tables["orders"] == {}
    assert world.order_events() == []


def test_an_order_not_committed_before_its_deadline_is_abandoned(world):
    late = World(SETTINGS.model_copy(update={"order_create_deadline_seconds": 1e-9}))
    with pytest.raises(UpstreamTimeout):
        late.create()
    assert late.reserved("A") == 0
    assert late.orders_store.tables["orders"] == {}


def test_a_customer_known_from_events_needs_no_rpc(world):
    world.orders_store.know_customer(CUSTOMER["id"], {"line1": "x", "city": "Y", "postal_code": "2",
                                                      "country": "FR"})
    order = world.create()
    assert world.customers.calls == 0
    assert order["shipping_address"]["line1"] == "x"


def test_a_redelivered_attempt_returns_the_first_order_and_reserves_nothing(world):
    attempt = str(uuid.uuid4())
    first = world.create(attempt_id=attempt)
    again = world.create(attempt_id=attempt)
    assert again == first and first["id"] == attempt
    assert world.reserved("A") == 2
    assert world.order_events() == ["order_created"]


def test_a_failed_attempt_answers_the_same_again_and_never_makes_the_order(world):
    attempt = str(uuid.uuid4())
    with pytest.raises(InsufficientStock):
        world.create(quantity=11, attempt_id=attempt)
    world.stock.add_product("A", stock=20, unit_price="29.99")  # a later run could now succeed
    with pytest.raises(InsufficientStock):  # a broker redelivery, or an earlier send still queued
        world.create(quantity=11, attempt_id=attempt)
    assert world.orders_store.tables["orders"] == {} and world.reserved("A") == 0
    assert world.order_events() == []


def test_a_failed_run_whose_failure_was_undone_answers_the_first_failure_again(world):
    attempt = str(uuid.uuid4())
    world.orders_store.fail_on_insert = RuntimeError("connection lost")
    with pytest.raises(RuntimeError):  # the first answer: 500
        world.create(attempt_id=attempt)
    world.orders_store.fail_on_insert = None
    with pytest.raises(DomainError) as again:
        world.create(attempt_id=attempt)
    assert again.value.code == "internal_error"
    assert world.orders_store.tables["orders"] == {} and world.reserved("A") == 0


def test_a_failure_that_cannot_be_recorded_is_outcome_unknown_naming_the_order(world):
    attempt = str(uuid.uuid4())
    world.orders_store.fail_on_record = ServiceUnavailable("The database is unreachable.")
    with pytest.raises(OutcomeUnknown) as unknown:
        world.create(quantity=11, attempt_id=attempt)
    assert unknown.value.details["order_id"] == attempt


def test_a_run_answers_the_order_another_run_of_the_attempt_made_meanwhile(world):
    """Runs of one attempt take turns on its lock; one that gets it after another run made
    the order answers that order (a failure found in a run is recorded under its lock)."""
    attempt = str(uuid.uuid4())
    other_instance = worker_factory(OrderService, uow=FakeUnitOfWork(world.orders_store), settings=SETTINGS,
                                    caller=Caller("admin-1", "admin"), customer_rpc=world.customers, context_data={},
                                    inventory_rpc=world.inventory_rpc)

    def the_other_run_commits_before_ours_holds_the_lock():
        world.orders_store.on_lock = None
        other_instance.create_order({"customer_id": CUSTOMER["id"], "items": [{"sku": "A", "quantity": 3}]},
                                    attempt_id=attempt)

    world.orders_store.on_lock = the_other_run_commits_before_ours_holds_the_lock
    order = world.create(quantity=11, attempt_id=attempt)  # ours alone would be short of stock
    assert order["id"] == attempt and order["items"][0]["quantity"] == 3 and world.reserved("A") == 3
    assert world.orders_store.tables["failed"] == {}


def test_an_idempotency_key_replays_the_first_answer_and_refuses_another_body(world):
    first = world.create(idempotency_key="checkout-42")
    assert world.create(idempotency_key="checkout-42") == first
    assert world.reserved("A") == 2
    with pytest.raises(IdempotencyKeyReused):
        world.create(quantity=3, idempotency_key="checkout-42")


def test_new_items_are_re_reserved_and_re_priced_or_the_old_ones_stand(world):
    order = world.create(quantity=2)
    updated = world.orders.update_order(order["id"], {"items": [{"sku": "B", "quantity": 3}]})
    assert updated["total_amount"] == "0.30" and updated["version"] == 2
    assert (world.reserved("A"), world.reserved("B")) == (0, 3)
    with pytest.raises(InsufficientStock):
        world.orders.update_order(order["id"], {"items": [{"sku": "A", "quantity": 11}]})
    assert (world.reserved("A"), world.reserved("B")) == (0, 3)
    assert world.orders.get_order(order["id"])["total_amount"] == "0.30"


def test_shipping_commits_the_stock_and_cancelling_releases_it(world):
    shipped, cancelled = world.create(quantity=2), world.create(quantity=3)
    world.orders.update_shipping(shipped["id"], {"carrier": "DHL", "tracking_number": "JD1"})
    for status in ("processing", "shipped", "delivered"):
        world.orders.update_status(shipped["id"], {"status": status})
    world.orders.update_status(cancelled["id"], {"status": "cancelled"})
    product = world.stock.get_product("A")
    assert (product.stock, product.reserved) == (8, 0)
    history = world.orders.order_history(shipped["id"])["items"]
    assert [(change["from"], change["to"]) for change in history] == [
        (None, "pending"), ("pending", "processing"), ("processing", "shipped"), ("shipped", "delivered")]


def test_a_reason_is_kept_in_the_history_and_the_status_event_and_limited_to_500(world):
    order = world.create()
    world.orders.update_status(order["id"], {"status": "cancelled", "reason": "Ordered twice by mistake"})
    history = world.orders.order_history(order["id"])["items"]
    assert [(change["to"], change["reason"]) for change in history] == [
        ("pending", None), ("cancelled", "Ordered twice by mistake")]
    cancelled = [data for event_type, data in world.orders.uow.events if event_type == "order_cancelled"]
    assert [(data["id"], data["previous_status"], data["reason"]) for data in cancelled] == [
        (order["id"], "pending", "Ordered twice by mistake")]
    with pytest.raises(ValidationFailed) as too_long:
        world.orders.update_status(world.create()["id"], {"status": "cancelled", "reason": "x" * 501})
    assert "reason" in too_long.value.details


def test_an_illegal_move_or_a_stale_version_changes_nothing(world):
    order = world.create()
    with pytest.raises(InvalidTransition):
        world.orders.update_status(order["id"], {"status": "shipped"})  # from pending
    world.orders.update_status(order["id"], {"status": "processing"})
    with pytest.raises(InvalidTransition):
        world.orders.update_status(order["id"], {"status": "shipped"})  # no carrier yet
    with pytest.raises(VersionConflict):
        world.orders.update_status(order["id"], {"status": "cancelled"}, expected_version=1)
    assert world.orders.get_order(order["id"])["status"] == "processing"
    assert world.reserved("A") == 2


def test_deleting_releases_the_stock_and_the_order(world):
    order = world.create()
    deleted = world.orders.delete_order(order["id"])
    assert deleted["id"] == order["id"] and world.reserved("A") == 0
    assert world.order_events() == ["order_created", "order_deleted"]
    with pytest.raises(NotFound):
        world.orders.get_order(order["id"])


def test_a_customer_event_redelivered_is_remembered_once(world):
    envelope = {"event_id": str(uuid.uuid4()), "data": {"id": CUSTOMER["id"], "shipping_address": None,
                                                        "updated_at": "2026-11-21T10:00:00+00:00"}}
    world.orders.on_customer_created(envelope)
    world.orders.on_customer_created(envelope)
    assert list(world.orders_store.tables["customers"]) == [uuid.UUID(CUSTOMER["id"])]
    assert world.orders_store.tables["processed"] == {envelope["event_id"]}


# ---- changes as attempts: one answer per attempt id, like a create's ----------------------


def test_a_change_run_again_gives_its_first_answer_and_changes_nothing_more(world):
    order = world.create()
    attempt = str(uuid.uuid4())
    first = world.orders.update_shipping(order["id"], {"carrier": "DHL"}, attempt_id=attempt)
    world.orders.update_shipping(order["id"], {"carrier": "UPS"})  # someone else's change, in between
    again = world.orders.update_shipping(order["id"], {"carrier": "DHL"}, attempt_id=attempt)  # a redelivery
    assert again == first and first["version"] == 2
    assert world.orders.get_order(order["id"])["carrier"] == "UPS"  # not set back to DHL
    assert world.order_events() == ["order_created", "order_updated", "order_updated"]


def test_a_change_answered_503_is_never_applied_by_another_run_of_it(world, monkeypatch):
    order = world.create()
    attempt = str(uuid.uuid4())
    get_order = world.orders_store.get_order

    def database_gone_once(*args, **kwargs):
        monkeypatch.setattr(world.orders_store, "get_order", get_order)
        raise ServiceUnavailable("The database is unavailable.", {"database": "unreachable"})

    monkeypatch.setattr(world.orders_store, "get_order", database_gone_once)
    with pytest.raises(ServiceUnavailable):  # the client's answer: 503, not done
        world.orders.update_status(order["id"], {"status": "cancelled"}, attempt_id=attempt)
    with pytest.raises(ServiceUnavailable):  # the database is back, the request redelivered: still not done
        world.orders.update_status(order["id"], {"status": "cancelled"}, attempt_id=attempt)
    assert world.orders.get_order(order["id"])["status"] == "pending" and world.reserved("A") == 2
    assert world.order_events() == ["order_created"]
    cancelled = world.orders.update_status(order["id"], {"status": "cancelled"}, attempt_id=str(uuid.uuid4()))
    assert cancelled["status"] == "cancelled" and world.reserved("A") == 0  # a fresh attempt works


def test_a_refused_change_stays_refused_for_its_attempt_when_it_could_be_made_later(world):
    order = world.create()
    world.orders.update_status(order["id"], {"status": "processing"})
    attempt = str(uuid.uuid4())
    with pytest.raises(InvalidTransition):  # no carrier yet: 409
        world.orders.update_status(order["id"], {"status": "shipped"}, attempt_id=attempt)
    world.orders.update_shipping(order["id"], {"carrier": "DHL", "tracking_number": "JD1"})
    with pytest.raises(InvalidTransition):
        world.orders.update_status(order["id"], {"status": "shipped"}, attempt_id=attempt)
    assert world.orders.get_order(order["id"])["status"] == "processing"
    assert world.stock.get_product("A").stock == 10


def test_a_deleted_order_s_attempt_gives_the_deleted_order_again(world):
    order = world.create()
    attempt = str(uuid.uuid4())
    deleted = world.orders.delete_order(order["id"], attempt_id=attempt)
    assert world.orders.delete_order(order["id"], attempt_id=attempt) == deleted
    assert world.order_events() == ["order_created", "order_deleted"] and world.reserved("A") == 0


def test_an_items_change_refused_keeps_the_old_reservation_for_every_run_of_it(world):
    order = world.create(quantity=2)
    attempt = str(uuid.uuid4())
    with pytest.raises(InsufficientStock):
        world.orders.update_order(order["id"], {"items": [{"sku": "A", "quantity": 11}]}, attempt_id=attempt)
    world.stock.add_product("A", stock=20, unit_price="29.99")
    with pytest.raises(InsufficientStock):
        world.orders.update_order(order["id"], {"items": [{"sku": "A", "quantity": 11}]}, attempt_id=attempt)
    assert world.orders.get_order(order["id"])["items"][0]["quantity"] == 2


def test_a_change_s_failure_that_cannot_be_recorded_is_outcome_unknown_naming_the_order(world):
    order = world.create()
    world.orders_store.fail_on_record = ServiceUnavailable("The database is unreachable.")
    with pytest.raises(OutcomeUnknown) as unknown:
        world.orders.update_status(order["id"], {"status": "shipped"}, attempt_id=str(uuid.uuid4()))
    assert unknown.value.details == {"order_id": order["id"], "reason": "failure_not_recorded"}


def test_a_failed_change_run_answers_the_change_another_run_made_meanwhile(world, monkeypatch):
    """Our run fails (the database went away) and, before it records that, another run of
    the same attempt (a redelivery, on another instance) makes the change: ours answers it."""
    order = world.create()
    attempt = str(uuid.uuid4())
    other_instance = worker_factory(OrderService, uow=FakeUnitOfWork(world.orders_store), settings=SETTINGS,
                                    caller=Caller("admin-1", "admin"), customer_rpc=world.customers, context_data={},
                                    inventory_rpc=world.inventory_rpc)
    get_order = world.orders_store.get_order

    def database_gone_once(*args, **kwargs):
        monkeypatch.setattr(world.orders_store, "get_order", get_order)
        raise ServiceUnavailable("The database is unavailable.", {"database": "unreachable"})

    def the_other_run_commits_before_ours_records_its_failure():
        world.orders_store.on_lock = None
        other_instance.update_status(order["id"], {"status": "processing"}, attempt_id=attempt)

    def our_run_will_fail():
        monkeypatch.setattr(world.orders_store, "get_order", database_gone_once)
        world.orders_store.on_lock = the_other_run_commits_before_ours_records_its_failure

    world.orders_store.on_lock = our_run_will_fail
    changed = world.orders.update_status(order["id"], {"status": "processing"}, attempt_id=attempt)
    assert changed["status"] == "processing" and changed["version"] == 2
    assert world.orders_store.tables["failed"] == {}
    assert world.order_events() == ["order_created"]  # ours committed nothing; the other run's events:
    assert other_instance.uow.event_types() == ["order_status_changed", "order_processing"]


def test_an_attempt_id_answers_only_its_own_order(world):
    first, second = world.create(), world.create()
    attempt = str(uuid.uuid4())
    world.orders.update_shipping(first["id"], {"carrier": "DHL"}, attempt_id=attempt)
    with pytest.raises(ValidationFailed):
        world.orders.update_shipping(second["id"], {"carrier": "DHL"}, attempt_id=attempt)
    assert world.orders.get_order(second["id"])["carrier"] is None
