"""The whole order lifecycle through the gateway: update, shipping, status, history, delete, ETags."""
import uuid

import pytest

from tests.support import query

TRANSITIONS = {
    "pending": {"processing", "cancelled"},
    "processing": {"shipped", "cancelled"},
    "shipped": {"delivered"},
    "delivered": set(),
    "cancelled": set(),
}
PATH_TO = {  # the legal moves that bring a fresh order to each status
    "pending": [],
    "processing": ["processing"],
    "shipped": ["processing", "shipped"],
    "delivered": ["processing", "shipped", "delivered"],
    "cancelled": ["cancelled"],
}


@pytest.fixture
def customer(api):
    return api.create_customer()


def _order_in(api, customer, status, product=None, quantity=1):
    product = product or api.create_product(stock=10)
    order = api.create_order(customer, (product, quantity))
    order = api.ship_details(order)
    for step in PATH_TO[status]:
        response = api.set_status(order, step)
        assert response.status_code == 200, response.text
        order = response.json()
    return order


def test_put_replaces_items_and_adjusts_the_reservation(api, customer):
    a = api.create_product(unit_price="10.00", stock=5)
    b = api.create_product(unit_price="2.50", stock=5)
    order = api.create_order(customer, (a, 2))

    response = api.put(f"/api/v1/orders/{order['id']}", json={
        "items": [{"sku": a["sku"], "quantity": 1}, {"sku": b["sku"], "quantity": 4}],
        "shipping_address": {"line1": "1 New St", "city": "Paris", "postal_code": "75001", "country": "FR"}})
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["total_amount"] == "20.00"
    assert updated["version"] == 2
    assert response.headers["ETag"] == '"2"'
    assert updated["shipping_address"]["city"] == "Paris"
    assert (api.product(a["sku"])["reserved"], api.product(b["sku"])["reserved"]) == (1, 4)


def test_put_that_cannot_be_reserved_keeps_the_old_reservation(api, customer):
    a = api.create_product(stock=3)
    b = api.create_product(stock=1)
    order = api.create_order(customer, (a, 2))
    response = api.put(f"/api/v1/orders/{order['id']}", json={
        "items": [{"sku": a["sku"], "quantity": 3}, {"sku": b["sku"], "quantity": 2}]})
    assert response.status_code == 409
    details = response.json()["error"]["details"]
    assert details["sku"] == b["sku"] and details["available"] == 1
    assert api.get(f"/api/v1/orders/{order['id']}").json() == order
    assert (api.product(a["sku"])["reserved"], api.product(b["sku"])["reserved"]) == (2, 0)

    # All of an order's own units count as available to it when it changes.
    grown = api.put(f"/api/v1/orders/{order['id']}", json={"items": [{"sku": a["sku"], "quantity": 3}]})
    assert grown.status_code == 200, grown.text
    assert api.product(a["sku"])["available"] == 0


def test_only_pending_orders_take_new_items(api, customer):
    order = _order_in(api, customer, "processing")
    response = api.put(f"/api/v1/orders/{order['id']}", json={"shipping_address": None})
    assert response.status_code == 409
    assert response.json()["error"]["details"]["status"] == "processing"


def test_shipping_commits_stock_and_cancelling_releases_it(api, customer):
    product = api.create_product(stock=10)
    shipped = api.create_order(customer, (product, 3))
    cancelled = api.create_order(customer, (product, 2))
    assert api.product(product["sku"])["reserved"] == 5

    no_carrier = api.set_status(api.set_status(shipped, "processing").json(), "shipped")
    assert no_carrier.status_code == 409
    assert no_carrier.json()["error"]["details"]["missing"] == ["carrier", "tracking_number"]

    api.ship_details(shipped)
    response = api.set_status(shipped, "shipped")
    assert response.status_code == 200, response.text
    assert response.json()["carrier"] == "DHL"
    after_ship = api.product(product["sku"])
    assert (after_ship["stock"], after_ship["reserved"], after_ship["available"]) == (7, 2, 5)

    assert api.set_status(cancelled, "cancelled").status_code == 200
    after_cancel = api.product(product["sku"])
    assert (after_cancel["stock"], after_cancel["reserved"], after_cancel["available"]) == (7, 0, 7)

    assert api.set_status(shipped, "delivered").json()["status"] == "delivered"


def test_every_illegal_transition_is_409_and_changes_nothing(api, customer, db_name):
    product = api.create_product(stock=50)
    for status, legal in TRANSITIONS.items():
        order = _order_in(api, customer, status, product)
        for target in set(TRANSITIONS) - legal:
            response = api.set_status(order, target)
            assert response.status_code == 409, (status, target, response.text)
            error = response.json()["error"]
            assert error["code"] == "invalid_transition"
            assert error["details"]["status"] == status
            assert set(error["details"]["allowed"]) == legal
            assert api.get(f"/api/v1/orders/{order['id']}").json() == order
    # Stock moved only for legal moves: 2 shipped+delivered units committed, 1 cancelled released.
    final = api.product(product["sku"])
    assert (final["stock"], final["reserved"]) == (48, 2)


def test_history_records_every_change(api, customer):
    order = _order_in(api, customer, "delivered")
    history = api.get(f"/api/v1/orders/{order['id']}/history")
    assert history.status_code == 200
    moves = [(entry["from"], entry["to"], entry["by"]) for entry in history.json()["items"]]
    assert moves == [(None, "pending", "admin-tester"), ("pending", "processing", "admin-tester"),
                     ("processing", "shipped", "admin-tester"), ("shipped", "delivered", "admin-tester")]
    assert all(entry["at"].endswith("+00:00") for entry in history.json()["items"])
    assert api.get(f"/api/v1/orders/{uuid.uuid4()}/history").status_code == 404


def test_delete_only_pending_or_cancelled_and_it_releases_stock(api, customer, db_name):
    product = api.create_product(stock=5)
    pending = api.create_order(customer, (product, 2))
    processing = _order_in(api, customer, "processing", product, 1)
    cancelled = _order_in(api, customer, "cancelled", product, 1)

    refused = api.delete(f"/api/v1/orders/{processing['id']}")
    assert refused.status_code == 409
    assert api.get(f"/api/v1/orders/{processing['id']}").status_code == 200

    for order in (pending, cancelled):
        response = api.delete(f"/api/v1/orders/{order['id']}")
        assert response.status_code == 204 and response.content == b""
        assert api.get(f"/api/v1/orders/{order['id']}").status_code == 404
        assert api.delete(f"/api/v1/orders/{order['id']}").status_code == 404
    assert api.product(product["sku"])["reserved"] == 1
    assert query(db_name, "SELECT count(*) FROM orders.order_items WHERE order_id = %s", pending["id"]) == [(0,)]


def test_stale_if_match_is_412_and_changes_nothing(api, customer):
    product = api.create_product(stock=5)
    order = api.create_order(customer, (product, 1))
    etag = api.get(f"/api/v1/orders/{order['id']}").headers["ETag"]
    moved = api.set_status(order, "processing", **{"If-Match": etag})
    assert moved.status_code == 200
    assert moved.headers["ETag"] == '"2"'

    for method, path, body in [
        ("put", f"/api/v1/orders/{order['id']}/status", {"status": "cancelled"}),
        ("put", f"/api/v1/orders/{order['id']}/shipping", {"carrier": "UPS"}),
        ("put", f"/api/v1/orders/{order['id']}", {"shipping_address": None}),
        ("delete", f"/api/v1/orders/{order['id']}", None),
    ]:
        stale = api.request(method, path, json=body, headers={"If-Match": etag})
        assert stale.status_code == 412, (method, path, stale.text)
        assert stale.json()["error"]["details"]["current_version"] == 2
    assert api.get(f"/api/v1/orders/{order['id']}").json() == moved.json()
    assert api.product(product["sku"])["reserved"] == 1

    # A current If-Match (strong, weak or *) goes through; no If-Match is last-write-wins.
    assert api.set_status(order, "cancelled", **{"If-Match": 'W/"2"'}).status_code == 200
    assert api.delete(f"/api/v1/orders/{order['id']}", headers={"If-Match": "*"}).status_code == 204


def test_customers_and_products_can_be_changed(api):
    customer = api.create_customer()
    patched = api.patch(f"/api/v1/customers/{customer['id']}", json={"name": "Ada King", "email": "ADA.KING@example.com"})
    assert patched.status_code == 200, patched.text
    assert (patched.json()["name"], patched.json()["email"]) == ("Ada King", "ada.king@example.com")
    assert patched.json()["updated_at"] > customer["updated_at"]
    assert api.patch(f"/api/v1/customers/{customer['id']}", json={}).status_code == 400
    assert api.patch(f"/api/v1/customers/{uuid.uuid4()}", json={"name": "X"}).status_code == 404

    product = api.create_product(stock=5, unit_price="1.00")
    api.create_order(customer, (product, 3))
    price = api.patch(f"/api/v1/products/{product['sku']}", json={"unit_price": "2.00", "stock": 4})
    assert price.status_code == 200, price.text
    assert (price.json()["unit_price"], price.json()["stock"], price.json()["available"]) == ("2.00", 4, 1)
    below = api.patch(f"/api/v1/products/{product['sku']}", json={"stock": 2})
    assert below.status_code == 409
    assert below.json()["error"]["details"] == {"sku": product["sku"], "stock": 2, "reserved": 3}
    assert api.product(product["sku"])["stock"] == 4
