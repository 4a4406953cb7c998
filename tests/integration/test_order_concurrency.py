"""Listing, idempotency and concurrency: many clients at once, through the gateway."""
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.support import bearer, query

LEGAL = {("pending", "processing"), ("pending", "cancelled"), ("processing", "shipped"),
         ("processing", "cancelled"), ("shipped", "delivered"), (None, "pending")}


def _post(url, headers=None, **kwargs):
    # One connection per call: these run from many threads at once.
    return requests.post(url, timeout=60, headers={**bearer("admin"), **(headers or {})}, **kwargs)


def test_100_concurrent_orders_for_30_units(api, db_name):
    customer = api.create_customer()
    product = api.create_product(stock=30)
    url = api.base_url + "/api/v1/orders"
    body = {"customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 1}]}

    lowest_available = []
    done = threading.Event()

    def watch_stock():
        while not done.is_set():
            [(available,)] = query(db_name, "SELECT stock - reserved FROM inventory.products WHERE sku = %s",
                                   product["sku"])
            lowest_available.append(available)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch_stock)
    watcher.start()
    with ThreadPoolExecutor(max_workers=100) as pool:
        statuses = list(pool.map(lambda _: _post(url, json=body).status_code, range(100)))
    done.set()
    watcher.join()

    assert statuses.count(201) == 30, statuses
    assert statuses.count(409) == 70
    final = api.product(product["sku"])
    assert (final["reserved"], final["available"]) == (30, 0)
    assert min(lowest_available) >= 0
    assert query(db_name, "SELECT count(*) FROM orders.orders WHERE customer_id = %s", customer["id"]) == [(30,)]


def test_concurrent_orders_over_shared_skus_in_any_order_neither_deadlock_nor_oversell(api, db_name):
    # Each order takes two of three products, listed in random order: the
    # reservation must lock in one order (sku) whatever the request's order.
    customer = api.create_customer()
    skus = [api.create_product(stock=20)["sku"] for _ in range(3)]
    rng = random.Random(7)
    bodies = [{"customer_id": customer["id"],
               "items": [{"sku": sku, "quantity": 1} for sku in rng.sample(skus, 2)]} for _ in range(60)]
    url = api.base_url + "/api/v1/orders"
    with ThreadPoolExecutor(max_workers=30) as pool:
        responses = list(pool.map(lambda body: _post(url, json=body), bodies))

    assert {response.status_code for response in responses} <= {201, 409}, \
        [(response.status_code, response.text[:200]) for response in responses if response.status_code not in (201, 409)]
    made = [body for body, response in zip(bodies, responses) if response.status_code == 201]
    for sku in skus:
        ordered = sum(1 for body in made for item in body["items"] if item["sku"] == sku)
        product = api.product(sku)
        assert product["reserved"] == ordered <= 20
    assert query(db_name, "SELECT count(*) FROM orders.orders WHERE customer_id = %s", customer["id"]) == [(len(made),)]


def test_20_concurrent_status_changes_leave_a_legal_state_and_chain(api):
    customer = api.create_customer()
    product = api.create_product(stock=5)
    order = api.create_order(customer, (product, 1))
    api.ship_details(order)
    url = f"{api.base_url}/api/v1/orders/{order['id']}/status"
    targets = [random.choice(["processing", "shipped", "delivered", "cancelled"]) for _ in range(20)]

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(lambda status: requests.put(url, json={"status": status}, headers=api.auth_headers, timeout=60).status_code,
                                 targets))

    assert set(statuses) <= {200, 409}
    history = api.get(f"/api/v1/orders/{order['id']}/history").json()["items"]
    chain = [(entry["from"], entry["to"]) for entry in history]
    assert all(step in LEGAL for step in chain), chain
    assert all(chain[i][1] == chain[i + 1][0] for i in range(len(chain) - 1)), chain
    final = api.get(f"/api/v1/orders/{order['id']}").json()
    assert final["status"] == chain[-1][1]
    assert final["version"] == 1 + 1 + statuses.count(200)  # created, shipping details, each change
    expected_stock = {"cancelled": (5, 0), "shipped": (4, 0), "delivered": (4, 0)}.get(final["status"], (5, 1))
    after = api.product(product["sku"])
    assert (after["stock"], after["reserved"]) == expected_stock


def test_idempotency_key_ten_at_once_make_one_order(api, db_name):
    customer = api.create_customer()
    product = api.create_product(stock=100)
    key = f"checkout-{uuid.uuid4()}"
    body = {"customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 2}]}
    url = api.base_url + "/api/v1/orders"

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(lambda _: _post(url, json=body, headers={"Idempotency-Key": key}), range(10)))

    assert [r.status_code for r in responses] == [201] * 10, [r.text for r in responses]
    assert len({r.text for r in responses}) == 1
    assert len({r.headers["Location"] for r in responses}) == 1
    assert query(db_name, "SELECT count(*) FROM orders.orders WHERE customer_id = %s", customer["id"]) == [(1,)]
    assert api.product(product["sku"])["reserved"] == 2

    # The same body in another key order is the same request.
    reordered = {"items": body["items"], "customer_id": customer["id"]}
    assert api.post("/api/v1/orders", json=reordered, headers={"Idempotency-Key": key}).text == responses[0].text

    different = api.post("/api/v1/orders", headers={"Idempotency-Key": key},
                         json={**body, "items": [{"sku": product["sku"], "quantity": 3}]})
    assert different.status_code == 422
    assert different.json()["error"]["code"] == "idempotency_key_reused"
    assert api.product(product["sku"])["reserved"] == 2


def test_a_failed_keyed_request_can_be_retried(api):
    customer = api.create_customer()
    product = api.create_product(stock=1)
    key = str(uuid.uuid4())
    body = {"customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 2}]}
    assert api.post("/api/v1/orders", json=body, headers={"Idempotency-Key": key}).status_code == 409
    api.patch(f"/api/v1/products/{product['sku']}", json={"stock": 2})
    assert api.post("/api/v1/orders", json=body, headers={"Idempotency-Key": key}).status_code == 201


def test_list_filters_and_pages(api):
    customer = api.create_customer()
    product = api.create_product(stock=100)
    orders = [api.create_order(customer, (product, 1)) for _ in range(5)]
    api.set_status(orders[1], "cancelled")

    page = api.get("/api/v1/orders", params={"customer_id": customer["id"], "limit": 2}).json()
    assert [o["id"] for o in page["items"]] == [orders[4]["id"], orders[3]["id"]]
    rest = api.get("/api/v1/orders", params={"customer_id": customer["id"], "limit": 10,
                                             "cursor": page["next_cursor"]}).json()
    assert [o["id"] for o in rest["items"]] == [o["id"] for o in reversed(orders[:3])]
    assert rest["next_cursor"] is None

    cancelled = api.get("/api/v1/orders", params={"customer_id": customer["id"], "status": "cancelled"}).json()
    assert [o["id"] for o in cancelled["items"]] == [orders[1]["id"]]

    window = api.get("/api/v1/orders", params={"customer_id": customer["id"],
                                               "created_after": orders[0]["created_at"],
                                               "created_before": orders[4]["created_at"]}).json()
    assert [o["id"] for o in window["items"]] == [o["id"] for o in reversed(orders[1:4])]

    bad = api.get("/api/v1/orders", params={"status": "lost", "customer_id": "x", "created_after": "yesterday"})
    assert bad.status_code == 400
    assert set(bad.json()["error"]["details"]) == {"status", "customer_id", "created_after"}


def test_paging_1000_orders_while_new_ones_arrive_sees_each_old_one_once(api, db_name):
    customer = api.create_customer()
    product = api.create_product(stock=1000)
    # The old orders are written straight to the orders schema (fast), one per millisecond.
    query(db_name, """
        WITH new AS (
            INSERT INTO orders.orders (id, customer_id, status, currency, total_amount, version, created_at, updated_at)
            SELECT gen_random_uuid(), %s, 'pending', 'EUR', 1.00, 1,
                   now() - interval '1 hour' + n * interval '1 millisecond', now()
            FROM generate_series(1, 1000) AS n
            RETURNING id)
        SELECT count(*) FROM new""", customer["id"])
    old_ids = {row[0] for row in query(db_name, "SELECT id::text FROM orders.orders WHERE customer_id = %s",
                                       customer["id"])}

    stop = threading.Event()

    def keep_ordering():
        while not stop.is_set():
            api_post = _post(api.base_url + "/api/v1/orders", json={
                "customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 1}]})
            assert api_post.status_code == 201

    writers = [threading.Thread(target=keep_ordering) for _ in range(3)]
    for writer in writers:
        writer.start()
    seen, cursor = [], None
    try:
        while True:
            params = {"customer_id": customer["id"], "limit": 37, **({"cursor": cursor} if cursor else {})}
            page = api.get("/api/v1/orders", params=params).json()
            seen += [order["id"] for order in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    finally:
        stop.set()
        for writer in writers:
            writer.join()

    seen_old = [order_id for order_id in seen if order_id in old_ids]
    assert len(seen_old) == 1000
    assert set(seen_old) == old_ids
    assert len(seen) == len(set(seen))


def test_list_queries_use_an_index(db_name):
    """EXPLAIN the very statements order_service runs, for each filter."""
    from sqlalchemy.dialects import postgresql

    from order_service import storage

    # Enough rows that a sequential scan would lose (the planner prefers one on tiny tables).
    query(db_name, """INSERT INTO orders.orders (id, customer_id, status, currency, total_amount, version,
                                                 created_at, updated_at)
                      SELECT gen_random_uuid(), gen_random_uuid(), 'pending', 'EUR', 1.00, 1,
                             now() - n * interval '1 second', now()
                      FROM generate_series(1, 5000) AS n""")
    query(db_name, "ANALYZE orders.orders")
    for filters in ({}, {"customer_id": uuid.uuid4()}, {"status": "cancelled"}):
        captured = []
        storage.OrderStore(_Capture(captured)).list_orders(filters, 21)
        sql = str(captured[0].compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
        plan = "\n".join(row[0] for row in query(db_name, "EXPLAIN " + sql))
        # The page comes off an index in order; only the (already sorted, LIMITed)
        # page is re-sorted by the outer ORDER BY, never the table.
        page_plan = plan.split("Subquery Scan on page")[-1]
        assert "Index Scan" in page_plan and "Sort " not in page_plan.replace("Sort Key", ""), plan


class _Capture:
    """Stands in for a session: records the statement instead of running it."""

    def __init__(self, captured):
        self.captured = captured

    def connection(self):
        return self

    def execute(self, statement):
        self.captured.append(statement)
        return []
