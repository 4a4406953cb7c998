"""The vertical slice, end to end through the real gateway, services, broker and database."""
import uuid

from tests.support import query


def test_order_reserves_stock_prices_from_inventory_and_emits_order_created(api, db_name, order_events):
    customer = api.create_customer()
    product = api.create_product(unit_price="29.99", stock=5)
    sku = product["sku"]

    created = api.post("/api/v1/orders", json={
        "customer_id": customer["id"],
        # A client-sent price is ignored: the price comes from inventory.
        "items": [{"sku": sku, "quantity": 2, "unit_price": "0.01"}],
    })
    assert created.status_code == 201, created.text
    order = created.json()
    assert created.headers["Location"] == f"/api/v1/orders/{order['id']}"
    assert order["status"] == "pending"
    assert order["total_amount"] == "59.98"
    assert order["currency"] == "EUR"
    assert order["items"] == [{"sku": sku, "quantity": 2, "unit_price": "29.99", "line_total": "59.98"}]
    assert order["shipping_address"] == customer["shipping_address"]
    assert order["version"] == 1

    fetched = api.get(f"/api/v1/orders/{order['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == order
    assert fetched.headers["ETag"] == '"1"'

    stocked = api.get(f"/api/v1/products/{sku}").json()
    assert (stocked["stock"], stocked["reserved"], stocked["available"]) == (5, 2, 3)

    event = order_events.wait_for(lambda e: e["data"]["id"] == order["id"])
    assert event["type"] == "order_created"
    assert uuid.UUID(event["event_id"])
    assert event["occurred_at"].endswith("+00:00")
    assert event["request_id"] == created.headers["X-Request-ID"]
    assert event["data"] == order

    too_many = api.post("/api/v1/orders", json={"customer_id": customer["id"],
                                                "items": [{"sku": sku, "quantity": 4}]})
    assert too_many.status_code == 409, too_many.text
    error = too_many.json()["error"]
    assert error["code"] == "insufficient_stock"
    assert error["details"]["sku"] == sku
    assert error["details"]["available"] == 3
    assert error["details"]["requested"] == 4

    # Nothing was written for the refused order, in any schema.
    assert query(db_name, "SELECT count(*) FROM orders.orders WHERE customer_id = %s",
                 customer["id"]) == [(1,)]
    assert query(db_name, "SELECT stock, reserved FROM inventory.products WHERE sku = %s", sku) == [(5, 2)]
    assert query(db_name, "SELECT count(*) FROM inventory.reservation_items WHERE sku = %s", sku) == [(1,)]
    after = api.get(f"/api/v1/products/{sku}").json()
    assert (after["reserved"], after["available"]) == (2, 3)


def test_request_id_is_echoed_or_created(api):
    echoed = api.get("/health", headers={"X-Request-ID": "trace-abc-123"})
    assert echoed.headers["X-Request-ID"] == "trace-abc-123"
    created = api.get("/health")
    assert len(created.headers["X-Request-ID"]) >= 16
