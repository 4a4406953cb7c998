import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from common.contract.caller import Caller
from common.contract.errors import (
    Forbidden,
    InsufficientStock,
    InvalidTransition,
    UnknownSku,
    Unprocessable,
    ValidationFailed,
    VersionConflict,
)
from inventory_service import domain as inventory
from order_service import domain as orders
from tests.unit.fakes import FakeOrder, FakeProduct

ORDER_ID = str(uuid.uuid4())
NOW = datetime(2026, 11, 21, tzinfo=timezone.utc)
ADMIN = Caller("admin-1", "admin")
CUSTOMER = Caller("customer:1", "customer", str(uuid.uuid4()))


def test_reservation_plan_is_in_sku_order_and_refuses_duplicates():
    order_uuid, plan = inventory.reservation_plan(ORDER_ID, [{"sku": "B", "quantity": 1},
                                                             {"sku": "A", "quantity": 2}])
    assert str(order_uuid) == ORDER_ID
    assert plan == [("A", 2), ("B", 1)]
    with pytest.raises(ValidationFailed):
        inventory.reservation_plan(ORDER_ID, [{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 1}])
    with pytest.raises(ValidationFailed):
        inventory.reservation_plan("not-a-uuid", [{"sku": "A", "quantity": 1}])


def test_unknown_skus_are_all_named():
    with pytest.raises(UnknownSku) as error:
        inventory.check_all_known([("A", 1), ("B", 1), ("C", 1)], {"B"})
    assert error.value.details == {"skus": ["A", "C"]}


def test_shortage_names_the_failing_sku_first_and_every_short_one():
    error = inventory.shortage([("A", 5), ("B", 1), ("C", 9)], "C", {"A": 2, "B": 7, "C": 3})
    assert isinstance(error, InsufficientStock)
    assert error.details["sku"] == "C" and error.details["available"] == 3
    assert [item["sku"] for item in error.details["items"]] == ["C", "A"]


def test_plans_are_taken_in_turn_each_whole_or_not_at_all():
    products = {sku: FakeProduct(sku, sku, Decimal("1.00"), "EUR", stock, reserved=1, low_stock_threshold=2)
                for sku, stock in (("A", 4), ("B", 3))}
    first, short, unknown, last = inventory.allocate(
        [[("A", 2), ("B", 1)], [("A", 2), ("B", 1)], [("A", 1), ("C", 1)], [("A", 1), ("B", 1)]], products, NOW)
    assert [(product.sku, product.reserved, product.updated_at, quantity) for product, quantity in first.lines] == [
        ("A", 3, NOW, 2), ("B", 2, NOW, 1)]
    assert [(product.available, before, threshold) for product, before, threshold in first.changed] == [
        (1, 3, 2), (1, 2, 2)]
    assert isinstance(short, InsufficientStock) and short.details["sku"] == "A" and short.details["available"] == 1
    assert isinstance(unknown, UnknownSku) and unknown.details == {"skus": ["C"]}
    assert [(product.sku, product.reserved) for product, _ in last.lines] == [("A", 4), ("B", 3)]
    assert (products["A"].reserved, products["B"].reserved) == (1, 1)  # what was locked, left as it was


def test_lines_merge_per_sku():
    assert orders.merge_lines([{"sku": "B", "quantity": 1}, {"sku": "A", "quantity": 2},
                               {"sku": "B", "quantity": 3}]) == [
        {"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 4}]


def _reservation(*items):
    return {"order_id": ORDER_ID, "status": "reserved", "items": [
        {"sku": sku, "quantity": 1, "unit_price": price, "currency": currency}
        for sku, price, currency in items]}


def test_order_is_priced_from_the_reservation():
    customer = {"id": str(uuid.uuid4()), "shipping_address": {"line1": "x"}}
    lines = [{"sku": "A", "quantity": 3}, {"sku": "B", "quantity": 1}]
    order, items = orders.new_order(uuid.UUID(ORDER_ID), customer, lines,
                                    _reservation(("A", "0.10", "EUR"), ("B", "19.99", "EUR")), None, NOW)
    assert order["total_amount"] == Decimal("20.29")
    assert [item["line_total"] for item in items] == [Decimal("0.30"), Decimal("19.99")]
    assert order["currency"] == "EUR" and order["status"] == "pending"
    assert order["shipping_address"] == {"line1": "x"}


def test_an_order_has_one_currency():
    with pytest.raises(Unprocessable):
        orders.price_lines([{"sku": "A", "quantity": 1}, {"sku": "B", "quantity": 1}],
                           _reservation(("A", "1.00", "EUR"), ("B", "1.00", "USD")))


def _order(status="pending"):
    return FakeOrder([{"sku": "A", "quantity": 1, "unit_price": Decimal("1.00"), "line_total": Decimal("1.00")}],
                     id=uuid.UUID(ORDER_ID), customer_id=uuid.uuid4(), status=status, currency="EUR",
                     total_amount=Decimal("1.00"), shipping_address=None, carrier=None, tracking_number=None,
                     version=1, created_at=NOW, updated_at=NOW)


def test_a_status_change_is_checked_applied_and_recorded_by_the_order():
    order = _order()
    later = datetime(2026, 11, 22, tzinfo=timezone.utc)
    changed = order.change_status("processing", ADMIN, later, expected_version=1)
    assert (order.status, order.version, order.updated_at) == ("processing", 2, later)
    assert [(c.from_status, c.to_status, c.changed_by, c.changed_at) for c in order.status_changes] == [
        ("pending", "processing", "admin-1", later)]
    assert order.events == [("order_status_changed", changed),
                            ("order_processing", {**changed, "previous_status": "pending", "reason": None})]
    assert changed["version"] == 2


@pytest.mark.parametrize("path", [["processing"], ["processing", "shipped"], ["processing", "shipped", "delivered"],
                                  ["cancelled"], ["processing", "cancelled"]])
def test_each_status_has_its_own_event_with_the_previous_status_and_the_reason(path):
    order = _order()
    order.carrier, order.tracking_number = "DHL", "JD1"
    for to in path:
        previous = order.status
        order.events.clear()
        changed = order.change_status(to, ADMIN, NOW, reason=f"because {to}")
        assert order.events == [("order_status_changed", changed),
                                (f"order_{to}", {**changed, "previous_status": previous, "reason": f"because {to}"})]
    assert [c.reason for c in order.status_changes] == [f"because {to}" for to in path]


def test_a_refused_change_leaves_the_order_as_it_was():
    order = _order("processing")
    with pytest.raises(InvalidTransition) as no_carrier:
        order.change_status("shipped", ADMIN, NOW)
    assert no_carrier.value.details["missing"] == ["carrier", "tracking_number"]
    with pytest.raises(Forbidden):
        order.change_status("shipped", CUSTOMER, NOW)  # customers may only cancel
    with pytest.raises(VersionConflict):
        order.change_status("cancelled", ADMIN, NOW, expected_version=7)
    with pytest.raises(InvalidTransition):
        order.change_status("delivered", ADMIN, NOW)
    with pytest.raises(InvalidTransition):
        order.check_editable(None)  # items change only while pending
    assert (order.status, order.version, order.events, list(order.status_changes)) == ("processing", 1, [], [])


def test_shipping_details_deletes_and_edits_are_the_orders_to_check():
    order = _order()
    with pytest.raises(Forbidden):
        order.update_shipping({"carrier": "DHL"}, CUSTOMER, NOW)
    order.update_shipping({"carrier": "DHL", "tracking_number": "JD1"}, ADMIN, NOW)
    edited = order.edit(NOW, [{"sku": "B", "quantity": 2}], _reservation(("B", "0.10", "EUR")),
                        shipping_address={"line1": "y"})
    assert (edited["total_amount"], edited["version"], edited["shipping_address"]) == ("0.20", 3, {"line1": "y"})
    assert order.lines() == [{"sku": "B", "quantity": 2}]
    with pytest.raises(Forbidden):
        order.delete(CUSTOMER)
    assert order.delete(ADMIN)["id"] == ORDER_ID
    assert [event_type for event_type, _ in order.events] == ["order_updated", "order_updated", "order_deleted"]
    with pytest.raises(InvalidTransition):
        _order("shipped").delete(ADMIN)
