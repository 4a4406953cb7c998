"""A change answered 503 is never applied later, not even by a redelivery of its request.

The broker redelivers a request whose first run's ack was lost with a node,
possibly after that run answered. Here the first run meets a database that
goes away under it (a trigger raising the SQLSTATE of a server shutting
down, which the service reads as a lost connection: 503), and the
redelivery is the same RPC, with the attempt id the gateway gave it, sent
again by hand once the database is back.
"""
import uuid
from datetime import datetime, timezone

import pytest

from common.contract.errors import ServiceUnavailable
from tests import support


@pytest.fixture
def database_gone_for(db_name):
    """`gone(order_id)`: every write to that order fails as if the database went away, until the test ends."""
    def gone(order_id):
        support.query(db_name, f"""
            CREATE FUNCTION orders.test_database_gone() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'the database goes away (test)' USING ERRCODE = '57P01';
            END $$;
            CREATE TRIGGER test_database_gone BEFORE UPDATE OR DELETE ON orders.orders
                FOR EACH ROW WHEN (OLD.id = '{order_id}') EXECUTE FUNCTION orders.test_database_gone();""")
    yield gone
    back(db_name)


def back(db_name):
    support.query(db_name, "DROP TRIGGER IF EXISTS test_database_gone ON orders.orders; "
                           "DROP FUNCTION IF EXISTS orders.test_database_gone()")


def attempts_failed_since(db_name, since):
    return [attempt_id for (attempt_id,) in support.query(
        db_name, "SELECT attempt_id::text FROM orders.failed_attempts WHERE failed_at >= %s "
                 "AND error->>'code' = 'service_unavailable'", since)]


def test_a_status_change_answered_503_is_not_applied_by_its_redelivery(api, rpc, db_name, database_gone_for):
    customer, product = api.create_customer(), api.create_product(stock=5)
    order = api.create_order(customer, (product, 2))
    since = datetime.now(timezone.utc)
    database_gone_for(order["id"])
    refused = api.set_status(order, "cancelled")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["details"] == {"database": "unreachable"}
    [attempt] = attempts_failed_since(db_name, since)  # the attempt id the gateway gave that request
    back(db_name)

    with pytest.raises(ServiceUnavailable):  # the redelivery: the database is back, the answer stays
        rpc.order_service.update_status(order["id"], {"status": "cancelled"}, attempt_id=attempt)
    after = api.get(f"/api/v1/orders/{order['id']}").json()
    assert (after["status"], after["version"]) == ("pending", 1)
    assert api.product(product["sku"])["reserved"] == 2
    assert [change["to"] for change in api.get(f"/api/v1/orders/{order['id']}/history").json()["items"]] \
        == ["pending"]

    cancelled = api.set_status(order, "cancelled")  # a fresh attempt: done
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert api.product(product["sku"])["reserved"] == 0


def test_every_change_answered_503_stays_undone_and_a_done_one_is_not_done_twice(api, rpc, db_name,
                                                                                 database_gone_for):
    customer, product = api.create_customer(), api.create_product(stock=5)
    order = api.create_order(customer, (product, 1))
    path = f"/api/v1/orders/{order['id']}"
    changes = {  # RPC method: (HTTP request, the same call's arguments)
        "update_shipping": (("put", f"{path}/shipping", {"carrier": "DHL"}), ({"carrier": "DHL"}, None)),
        "update_order": (("put", path, {"items": [{"sku": product["sku"], "quantity": 3}]}),
                         ({"items": [{"sku": product["sku"], "quantity": 3}]}, None)),
        "delete_order": (("delete", path, None), (None,)),
    }
    since = datetime.now(timezone.utc)
    database_gone_for(order["id"])
    for method, ((verb, url, body), _) in changes.items():
        answer = api.request(verb, url, json=body)
        assert answer.status_code == 503, (method, answer.text)
    attempts = attempts_failed_since(db_name, since)
    assert len(attempts) == len(changes)
    back(db_name)

    # Each refused request delivered again: every method with every refused attempt id, so which was whose
    # does not matter.
    for method, (_, args) in changes.items():
        for attempt in attempts:
            with pytest.raises(ServiceUnavailable):
                getattr(rpc.order_service, method)(order["id"], *args, attempt_id=attempt)
    after = api.get(path).json()
    assert (after["version"], after["carrier"], after["items"][0]["quantity"]) == (1, None, 1)
    assert api.product(product["sku"])["reserved"] == 1

    # A change that was done, delivered again, answers the same and changes nothing more.
    attempt = str(uuid.uuid4())
    shipped = rpc.order_service.update_shipping(order["id"], {"carrier": "UPS"}, None, attempt_id=attempt)
    assert api.put(f"{path}/shipping", json={"carrier": "DHL"}).status_code == 200
    assert rpc.order_service.update_shipping(order["id"], {"carrier": "UPS"}, None, attempt_id=attempt) == shipped
    after = api.get(path).json()
    assert (after["version"], after["carrier"]) == (3, "DHL")
