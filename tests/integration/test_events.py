"""Every event type reaches a consumer on the broker, in the contract's envelope."""
import json
import threading
import time
import uuid
from datetime import datetime

from tests.support import query

ENVELOPE_KEYS = {"event_id", "type", "occurred_at", "request_id", "data"}


def _check_envelope(event, event_type, request_id=None):
    assert set(event) == ENVELOPE_KEYS
    assert event["type"] == event_type
    assert uuid.UUID(event["event_id"])
    assert datetime.fromisoformat(event["occurred_at"]).utcoffset().total_seconds() == 0
    if request_id is not None:
        assert event["request_id"] == request_id


def test_each_event_type_with_its_envelope_and_data(api, listen):
    customers = listen("customer_service", "customer_created", "customer_updated")
    stock = listen("inventory_service", "stock_reserved", "stock_released", "stock_committed", "stock_low")
    orders = listen("order_service", "order_created", "order_updated", "order_status_changed", "order_deleted")

    created = api.post("/api/v1/customers", json={"name": "Eve", "email": f"eve-{uuid.uuid4().hex}@example.com"},
                       headers={"X-Request-ID": "req-customer-1"})
    customer = created.json()
    event = customers.wait_for(lambda e: e["data"]["id"] == customer["id"])
    _check_envelope(event, "customer_created", "req-customer-1")
    assert event["data"] == customer

    updated = api.patch(f"/api/v1/customers/{customer['id']}", json={"name": "Eve Two"}).json()
    event = customers.wait_for(lambda e: e["type"] == "customer_updated" and e["data"]["id"] == customer["id"])
    _check_envelope(event, "customer_updated")
    assert event["data"] == updated

    product = api.create_product(stock=5, low_stock_threshold=3)
    placed = api.post("/api/v1/orders", headers={"X-Request-ID": "req-order-1"}, json={
        "customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 3}]})
    order = placed.json()
    event = orders.wait_for(lambda e: e["type"] == "order_created" and e["data"]["id"] == order["id"])
    _check_envelope(event, "order_created", "req-order-1")
    assert event["data"] == order

    event = stock.wait_for(lambda e: e["type"] == "stock_reserved" and e["data"]["order_id"] == order["id"])
    _check_envelope(event, "stock_reserved", "req-order-1")  # the request id crossed two RPC hops
    assert event["data"]["items"] == [{"sku": product["sku"], "quantity": 3, "unit_price": "29.99",
                                       "currency": "EUR"}]
    assert event["data"]["products"][0]["available"] == 2
    event = stock.wait_for(lambda e: e["type"] == "stock_low" and e["data"]["sku"] == product["sku"])
    _check_envelope(event, "stock_low")
    assert (event["data"]["available"], event["data"]["low_stock_threshold"]) == (2, 3)

    changed = api.put(f"/api/v1/orders/{order['id']}", json={"shipping_address": None}).json()
    event = orders.wait_for(lambda e: e["type"] == "order_updated" and e["data"]["id"] == order["id"])
    assert event["data"] == changed

    api.ship_details(order)
    api.set_status(order, "processing")
    shipped = api.set_status(order, "shipped").json()
    event = orders.wait_for(lambda e: e["type"] == "order_status_changed" and e["data"]["status"] == "shipped")
    _check_envelope(event, "order_status_changed")
    assert event["data"] == shipped
    event = stock.wait_for(lambda e: e["type"] == "stock_committed" and e["data"]["order_id"] == order["id"])
    assert event["data"]["status"] == "committed"
    assert event["data"]["products"][0]["stock"] == 2

    doomed = api.create_order(customer, (product, 1))
    api.set_status(doomed, "cancelled")
    event = stock.wait_for(lambda e: e["type"] == "stock_released" and e["data"]["order_id"] == doomed["id"])
    assert event["data"]["status"] == "released"
    final = api.get(f"/api/v1/orders/{doomed['id']}").json()
    api.delete(f"/api/v1/orders/{doomed['id']}")
    event = orders.wait_for(lambda e: e["type"] == "order_deleted")
    _check_envelope(event, "order_deleted")
    assert event["data"] == final


def test_an_outbox_row_nobody_woke_the_relay_for_is_sent_within_the_interval(api, listen, db_name):
    """As if the process died between commit and wake: the row is there, unsent."""
    orders = listen("order_service", "order_created")
    event_id = str(uuid.uuid4())
    envelope = ('{"event_id": "%s", "type": "order_created", "occurred_at": "2026-01-01T00:00:00+00:00", '
                '"request_id": null, "data": {"id": "missed"}}' % event_id)
    query(db_name, "INSERT INTO orders.outbox (event_id, event_type, payload, created_at, next_attempt_at, attempts)"
                   " VALUES (%s, 'order_created', %s, now(), now(), 0)", event_id, envelope)
    event = orders.wait_for(lambda e: e["event_id"] == event_id, timeout=15)
    assert event["data"] == {"id": "missed"}
    # The relay marks the row sent in the transaction it published from.
    deadline = time.monotonic() + 5
    while query(db_name, "SELECT sent_at FROM orders.outbox WHERE event_id = %s", event_id) == [(None,)]:
        assert time.monotonic() < deadline, "the relayed event was never marked sent"
        time.sleep(0.1)


def test_each_status_has_its_own_event_with_the_previous_status_and_the_reason(api, listen):
    orders = listen("order_service", "order_processing", "order_shipped", "order_delivered", "order_cancelled")
    customer = api.create_customer()
    product = api.create_product(stock=5)
    order = api.create_order(customer, (product, 1))
    api.ship_details(order)
    moves = [("processing", "pending", "Paid"), ("shipped", "processing", None),
             ("delivered", "shipped", "Signed for by A. L.")]
    for status, previous, reason in moves:
        response = api.put(f"/api/v1/orders/{order['id']}/status", json={"status": status, "reason": reason},
                           headers={"X-Request-ID": f"req-{status}"})
        assert response.status_code == 200, response.text
        event = orders.wait_for(lambda e: e["type"] == f"order_{status}" and e["data"]["id"] == order["id"])
        _check_envelope(event, f"order_{status}", f"req-{status}")
        assert event["data"] == {**response.json(), "previous_status": previous, "reason": reason}
    doomed = api.create_order(customer, (product, 1))
    cancelled = api.put(f"/api/v1/orders/{doomed['id']}/status", json={"status": "cancelled", "reason": "Twice"})
    event = orders.wait_for(lambda e: e["type"] == "order_cancelled" and e["data"]["id"] == doomed["id"])
    _check_envelope(event, "order_cancelled")
    assert event["data"] == {**cancelled.json(), "previous_status": "pending", "reason": "Twice"}
    history = api.get(f"/api/v1/orders/{order['id']}/history").json()["items"]
    assert [(entry["from"], entry["to"], entry["reason"]) for entry in history] == [
        (None, "pending", None), ("pending", "processing", "Paid"), ("processing", "shipped", None),
        ("shipped", "delivered", "Signed for by A. L.")]
    too_long = api.put(f"/api/v1/orders/{order['id']}/status", json={"status": "delivered", "reason": "x" * 501})
    assert too_long.status_code == 400 and "reason" in too_long.json()["error"]["details"]


def test_inventory_announces_new_and_changed_products_and_stock_coming_back(api, listen):
    products = listen("inventory_service", "product_created", "product_updated", "stock_back")
    created = api.create_product(stock=1)
    event = products.wait_for(lambda e: e["type"] == "product_created" and e["data"]["sku"] == created["sku"])
    _check_envelope(event, "product_created")
    assert event["data"] == created
    order = api.create_order(api.create_customer(), (created, 1))  # nothing left
    assert api.set_status(order, "cancelled").status_code == 200
    event = products.wait_for(lambda e: e["type"] == "stock_back" and e["data"]["sku"] == created["sku"])
    _check_envelope(event, "stock_back")
    assert (event["data"]["available"], event["data"]["reserved"]) == (1, 0)
    updated = api.patch(f"/api/v1/products/{created['sku']}", json={"name": "Widget Two"}).json()
    event = products.wait_for(lambda e: e["type"] == "product_updated" and e["data"]["sku"] == created["sku"])
    _check_envelope(event, "product_updated")
    assert event["data"] == updated


def _refusals_of(db_name, sku):
    return query(db_name, "SELECT payload->'data'->>'order_id', sent_at FROM inventory.outbox "
                          "WHERE event_type = 'stock_reservation_failed' AND payload->'data'->'items' @> %s::jsonb",
                 json.dumps([{"sku": sku}]))


def test_a_refused_create_emits_stock_reservation_failed_and_its_attempts_later_success_does_not(
        api, listen, db_name):
    """The refusal's event waits for its attempt's deadline (RPC_TIMEOUT here): a re-drive of the same
    attempt that succeeds meanwhile withdraws it. The re-drive is forced as in production: recording the
    first run's failure fails (a trigger the test adds), which the gateway answers by sending it again."""
    refusals = listen("inventory_service", "stock_reservation_failed")
    customer = api.create_customer()
    product = api.create_product(stock=1)
    refused = api.post("/api/v1/orders", json={"customer_id": customer["id"],
                                               "items": [{"sku": product["sku"], "quantity": 2}]},
                       headers={"X-Request-ID": "req-refused"})
    assert refused.status_code == 409
    event = refusals.wait_for(lambda e: e["data"]["items"][0]["sku"] == product["sku"], timeout=25)
    _check_envelope(event, "stock_reservation_failed", "req-refused")
    assert event["data"]["items"] == [{"sku": product["sku"], "quantity": 2}]
    assert event["data"]["short"] == [{"sku": product["sku"], "requested": 2, "available": 1}]
    assert uuid.UUID(event["data"]["order_id"])
    assert api.get(f"/api/v1/orders/{event['data']['order_id']}").status_code == 404

    later = api.create_product(stock=1)
    query(db_name, f"""
        CREATE SEQUENCE orders.test_refusal_runs;
        CREATE FUNCTION orders.test_fail_first_record() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- Both tries of the first run fail: in its batch's transaction, then alone.
            IF position('{later["sku"]}' in NEW.error::text) > 0 AND nextval('orders.test_refusal_runs') <= 2 THEN
                PERFORM pg_sleep(2);  -- time for the test to add the stock the second run takes
                RAISE EXCEPTION 'the failure of this run cannot be recorded (test)';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_fail_first_record BEFORE INSERT ON orders.failed_attempts
            FOR EACH ROW EXECUTE FUNCTION orders.test_fail_first_record();""")
    try:
        answer = {}
        thread = threading.Thread(target=lambda: answer.update(response=api.post("/api/v1/orders", json={
            "customer_id": customer["id"], "items": [{"sku": later["sku"], "quantity": 2}]})))
        thread.start()
        deadline = time.monotonic() + 10
        while not _refusals_of(db_name, later["sku"]):
            assert time.monotonic() < deadline, "the first run was not refused"
            time.sleep(0.05)
        assert api.patch(f"/api/v1/products/{later['sku']}", json={"stock": 2}).status_code == 200
        thread.join(30)
    finally:
        query(db_name, "DROP TRIGGER test_fail_first_record ON orders.failed_attempts; "
                       "DROP FUNCTION orders.test_fail_first_record(); DROP SEQUENCE orders.test_refusal_runs")
    response = answer["response"]
    assert response.status_code == 201, response.text
    order_id = response.json()["id"]
    assert _refusals_of(db_name, later["sku"]) == []  # withdrawn by the success, never sent
    time.sleep(12)  # past the attempt's deadline and a relay pass
    assert not [e for e in list(refusals.events.queue) if e["data"]["order_id"] == order_id]
    assert api.product(later["sku"])["reserved"] == 2
