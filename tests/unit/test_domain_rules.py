import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from common.contract.errors import InsufficientStock, UnknownSku, Unprocessable, ValidationFailed
from inventory_service import domain as inventory
from order_service import domain as orders

ORDER_ID = str(uuid.uuid4())
NOW = datetime(2026, 11, 21, tzinfo=timezone.utc)


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


def test_the_first_sku_not_taken_is_named_in_sku_order():
    plan = [("A", 1), ("B", 1), ("C", 1)]
    assert inventory.first_not_taken(plan, {"A", "C"}) == "B"
    assert inventory.first_not_taken(plan, {"C"}) == "A"
    assert inventory.first_not_taken(plan, {"A", "B", "C"}) is None


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
