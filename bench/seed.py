"""The bench's own databases (their names must contain "bench") and what it seeds into them."""
import json
import time

from sqlalchemy.engine import make_url

from common.contract.schemas.products import MAX_STOCK as PRODUCT_STOCK  # never runs out during a run
from tests import harness

SKU_PREFIX = "BENCH-"
ADDRESS = json.dumps({"line1": "1 Bench Street", "city": "Benchton", "postal_code": "B3 NCH", "country": "GB"})


def _check_ours(name):
    if "bench" not in name:
        raise RuntimeError(f"refusing to touch database {name!r}: the bench only creates and drops "
                           "databases whose name contains 'bench'")


def create_database(server_url, name):
    """A new, empty database `name` on the server of `server_url`: its URL."""
    _check_ours(name)
    return harness.create_database(server_url, name)


def drop_database(url):
    _check_ours(make_url(url).database)
    harness.drop_database(url)


def transactions(database_url):
    """Transactions Postgres has ended in `database_url`'s database (xact_commit + xact_rollback),
    read from the server's postgres database so that reading them is not one of them. Backends
    report them when they go idle, at most once a second: a count lags by up to a second of load."""
    conn = harness.connect(database_url, dbname="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                        (make_url(database_url).database,))
            row = cur.fetchone()
    finally:
        conn.close()
    return int(row[0]) if row else None


# Work the event consumers have yet to do, by where it waits in the database: events not yet
# published (every service's outbox), deliveries and notifications due and not yet sent.
BACKLOG = {
    "webhook deliveries": "SELECT count(*) FROM webhooks.deliveries "
                          "WHERE status = 'pending' AND next_attempt_at <= now()",
    "notifications": "SELECT count(*) FROM notifications.notifications "
                     "WHERE status = 'queued' AND next_attempt_at <= now()",
}


def backlog(database_url):
    """{where: rows} of the work left in `database_url` (BACKLOG, and `<schema> outbox` for every
    outbox table with events not yet published)."""
    conn = harness.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_schema FROM information_schema.tables WHERE table_name = 'outbox'")
            queries = {f"{schema} outbox": f'SELECT count(*) FROM "{schema}".outbox WHERE sent_at IS NULL'
                       for (schema,) in cur.fetchall()}
            left = {}
            for where, sql in {**queries, **BACKLOG}.items():
                cur.execute(sql)
                left[where] = cur.fetchone()[0]
    finally:
        conn.close()
    return left


def server_version(database_url):
    return harness.query(database_url, "SHOW server_version")[0][0]


def seed(database_url, customers, products, orders, sample_ids=20000, run_tag="bench"):
    """Customers, products with huge stock, and `orders` orders (2 items each) straight in SQL.

    Returns {"customers": [ids], "skus": [skus], "order_ids": [a random sample of the seeded ids],
    "orders": count, "seconds": time taken}. Seeded orders are `pending` without a reservation
    row: they exist to be read.
    """
    if products < 2:
        raise ValueError("BENCH_PRODUCTS must be at least 2 (orders have two distinct skus)")
    started = time.monotonic()
    conn = harness.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            customer_ids = _customers(cur, customers, run_tag)
            skus = _products(cur, products)
            order_ids = _orders(cur, customer_ids, skus, orders, sample_ids)
            cur.execute("COMMIT")
            for table in ("customers.customers", "inventory.products", "orders.orders", "orders.order_items",
                          "orders.order_status_history"):
                cur.execute(f"ANALYZE {table}")
    finally:
        conn.close()
    return {"customers": customer_ids, "skus": skus, "order_ids": order_ids, "orders": orders,
            "seconds": round(time.monotonic() - started, 2)}


def _customers(cur, count, run_tag):
    cur.execute(
        "INSERT INTO customers.customers (id, name, email, shipping_address, created_at, updated_at) "
        "SELECT gen_random_uuid(), 'Bench Customer ' || g, "
        "       'bench-' || %(tag)s || '-' || g || '@example.com', %(address)s::jsonb, now(), now() "
        "FROM generate_series(1, %(n)s) g RETURNING id",
        {"tag": run_tag, "n": count, "address": ADDRESS})
    customer_ids = [str(row[0]) for row in cur.fetchall()]
    # What the customer_created events would have put in order_service's
    # customer directory (customers made through the API always get there).
    cur.execute(
        "INSERT INTO orders.known_customers (id, shipping_address, updated_at) "
        "SELECT id, shipping_address, updated_at FROM customers.customers WHERE id = ANY(%(ids)s::uuid[])",
        {"ids": customer_ids})
    # And into notification_service's (name and email: whom its emails go to).
    cur.execute(
        "INSERT INTO notifications.known_customers (id, name, email, updated_at) "
        "SELECT id, name, email, updated_at FROM customers.customers WHERE id = ANY(%(ids)s::uuid[])",
        {"ids": customer_ids})
    return customer_ids


def _products(cur, count):
    skus = [f"{SKU_PREFIX}{i:04d}" for i in range(1, count + 1)]
    cur.execute(
        "INSERT INTO inventory.products (sku, name, description, unit_price, currency, stock, reserved, "
        "                                low_stock_threshold, created_at, updated_at) "
        "SELECT sku, 'Bench product ' || sku, 'Seeded by make bench', "
        "       round((1 + (n * 137) %% 9900) / 100.0, 2), 'EUR', %(stock)s, 0, 0, now(), now() "
        "FROM unnest(%(skus)s::text[]) WITH ORDINALITY AS p(sku, n) "
        "ON CONFLICT (sku) DO UPDATE SET stock = GREATEST(inventory.products.stock, EXCLUDED.stock), "
        "                                currency = 'EUR'",
        {"stock": PRODUCT_STOCK, "skus": skus})
    return skus


def _orders(cur, customer_ids, skus, count, sample_ids):
    """`count` pending orders of two distinct skus each; a random sample of their ids."""
    cur.execute(
        "CREATE TEMP TABLE bench_seed ON COMMIT DROP AS "
        "SELECT gen_random_uuid() AS id, "
        "       (%(customers)s::uuid[])[1 + g %% %(nc)s] AS customer_id, "
        "       now() - make_interval(secs => g) AS at, "
        "       (%(skus)s::text[])[1 + g %% %(np)s] AS sku_a, "
        "       (%(skus)s::text[])[1 + (g %% %(np)s + 1 + (g / %(np)s) %% (%(np)s - 1)) %% %(np)s] AS sku_b, "
        "       1 + g %% 3 AS qty_a, 1 + g %% 2 AS qty_b "
        "FROM generate_series(1, %(n)s) g",
        {"customers": customer_ids, "nc": len(customer_ids), "skus": skus, "np": len(skus), "n": count})
    cur.execute(
        "INSERT INTO orders.orders (id, customer_id, status, currency, total_amount, shipping_address, "
        "                           version, created_at, updated_at) "
        "SELECT s.id, s.customer_id, 'pending', 'EUR', a.unit_price * s.qty_a + b.unit_price * s.qty_b, "
        "       %(address)s::jsonb, 1, s.at, s.at "
        "FROM bench_seed s JOIN inventory.products a ON a.sku = s.sku_a "
        "JOIN inventory.products b ON b.sku = s.sku_b",
        {"address": ADDRESS})
    cur.execute(
        "INSERT INTO orders.order_items (order_id, sku, quantity, unit_price, line_total) "
        "SELECT s.id, s.sku_a, s.qty_a, a.unit_price, a.unit_price * s.qty_a "
        "FROM bench_seed s JOIN inventory.products a ON a.sku = s.sku_a "
        "UNION ALL "
        "SELECT s.id, s.sku_b, s.qty_b, b.unit_price, b.unit_price * s.qty_b "
        "FROM bench_seed s JOIN inventory.products b ON b.sku = s.sku_b")
    cur.execute("INSERT INTO orders.order_status_history (order_id, from_status, to_status, changed_at, "
                "changed_by) SELECT id, NULL, 'pending', at, 'bench-seed' FROM bench_seed")
    cur.execute("SELECT id FROM bench_seed ORDER BY random() LIMIT %s", (sample_ids,))
    return [str(row[0]) for row in cur.fetchall()]
