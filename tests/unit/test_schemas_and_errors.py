from decimal import Decimal

import pytest
from nameko.exceptions import deserialize, serialize

from common.contract.errors import InsufficientStock, ValidationFailed
from common.contract.schemas.base import load_or_raise
from common.contract.schemas.orders import OrderInput
from common.contract.schemas.products import ProductInput
from common.kit.paging import decode_cursor, encode_cursor, split_page

CUSTOMER_ID = "0b8f1c1e-8d2a-4c1e-9a53-000000000001"


def test_money_keeps_two_places_and_refuses_more():
    assert ProductInput().load({"sku": "A", "name": "a", "unit_price": 19.99})["unit_price"] == Decimal("19.99")
    assert ProductInput().load({"sku": "A", "name": "a", "unit_price": "5"})["unit_price"] == Decimal("5.00")
    for bad in ("1.999", "-1", "NaN", True, "abc"):
        with pytest.raises(ValidationFailed) as error:
            load_or_raise(ProductInput, {"sku": "A", "name": "a", "unit_price": bad})
        assert "unit_price" in error.value.details


def test_client_prices_and_totals_are_dropped():
    loaded = OrderInput().load({"customer_id": CUSTOMER_ID, "total_amount": "0.01",
                                "items": [{"sku": "A", "quantity": 2, "unit_price": "0.01"}]})
    assert loaded["items"] == [{"sku": "A", "quantity": 2}]
    assert "total_amount" not in loaded


def test_unknown_fields_and_bad_items_are_named():
    with pytest.raises(ValidationFailed) as error:
        load_or_raise(OrderInput, {"customer_id": "x", "colour": 1,
                                     "items": [{"sku": "A", "quantity": 0}, {"sku": "B", "quantity": 1.5}]})
    assert set(error.value.details) == {"customer_id", "colour", "items"}
    with pytest.raises(ValidationFailed):
        load_or_raise(OrderInput, [1, 2])


def test_domain_errors_cross_rpc_as_themselves_with_numbers_intact():
    original = InsufficientStock("short", {"sku": "A", "available": 3, "items": [{"requested": 4}]})
    restored = deserialize(serialize(original))
    assert type(restored) is InsufficientStock
    assert restored.details == {"sku": "A", "available": 3, "items": [{"requested": 4}]}
    assert restored.message == "short"
    assert restored.http_status == 409


def test_cursor_round_trip_and_garbage():
    assert decode_cursor(encode_cursor(["2026-01-01", "x"])) == ["2026-01-01", "x"]
    assert decode_cursor(None) is None
    for garbage in ("%%%", "bm90IGpzb24", encode_cursor(5)):
        with pytest.raises(ValidationFailed):
            decode_cursor(garbage, lambda key: key[0])
    page, cursor = split_page([1, 2, 3], 2, str)
    assert page == [1, 2] and decode_cursor(cursor) == "2"
    assert split_page([1, 2], 2, str) == ([1, 2], None)
