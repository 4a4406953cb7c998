"""The floor: the same order API done the shortest honest way, to measure ours against.

One Flask app, one Postgres transaction per order, no broker, no services:
  POST /api/v1/orders       validate the body with the same OrderInput schema, then in one
                            transaction: check the customer (and take its default address),
                            reserve every sku with the same conditional UPDATE of
                            inventory.products (in sku order), insert orders.orders and
                            orders.order_items with totals computed from the reserved prices;
                            201 with the order dumped by the same OrderSchema.
  GET  /api/v1/orders/{id}  the order with its items (one query).
  GET  /api/v1/orders       ?customer_id=&limit=: newest first, with items (two queries).
  GET  /health

What it does not do (and ours does): the RPC hops, the reservation rows, the
status-history row, the outbox event, idempotency keys, auth. That gap is the
price of the architecture, which is what the ratios measure.

Served like the gateway: `gunicorn -c gateway/gunicorn_conf.py bench.floor_app:app`
(gthread, GATEWAY_WORKERS x GATEWAY_THREADS), with a psycopg2 pool of
GATEWAY_THREADS connections per worker process. DATABASE_URL names the database.
"""
import queue
import threading
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal

import psycopg2
from flask import Flask, current_app, jsonify, request
from psycopg2.extensions import TRANSACTION_STATUS_UNKNOWN
from psycopg2.extras import Json, execute_values
from werkzeug.exceptions import UnsupportedMediaType

from common.contract.errors import (
    InsufficientStock,
    NotFound,
    UnknownCustomer,
    UnknownSku,
    Unprocessable,
    ValidationFailed,
)
from common.contract.schemas.orders import OrderInput, OrderListQuery, OrderSchema
from common.contract.settings import load_settings
from gateway.errors import register_error_handlers

API = "/api/v1"
MAX_BODY_BYTES = 64 * 1024
order_schema = OrderSchema()

ORDER_COLUMNS = ("o.id, o.customer_id, o.status, o.currency, o.total_amount, o.shipping_address, o.carrier, "
                 "o.tracking_number, o.version, o.created_at, o.updated_at")
ITEM_COLUMNS = "i.sku, i.quantity, i.unit_price, i.line_total"


def libpq_dsn(database_url):
    """A SQLAlchemy URL (postgresql+psycopg2://...) as a libpq one."""
    scheme, sep, rest = database_url.partition("://")
    return "postgresql://" + rest if sep else database_url


class LazyPool:
    """Up to `size` psycopg2 connections, opened on first need and kept (LIFO) for good.

    (psycopg2's own ThreadedConnectionPool closes every connection above
    `minconn` when it is returned, which would make the floor reconnect on
    almost every concurrent request.) Made per gunicorn worker, after the fork.
    """

    def __init__(self, dsn, size):
        self._dsn = dsn
        self._idle = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)

    @contextmanager
    def transaction(self):
        with self._slots:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = psycopg2.connect(self._dsn)
            try:
                with conn:  # commit on success, roll back on any error
                    with conn.cursor() as cur:
                        yield cur
            finally:
                if conn.closed or conn.info.transaction_status == TRANSACTION_STATUS_UNKNOWN:
                    conn.close()
                else:
                    self._idle.put(conn)


def create_app(database_url=None, pool_size=None):
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    settings = load_settings()
    app.extensions["floor_pool"] = LazyPool(libpq_dsn(database_url or settings.database_url),
                                            pool_size or settings.gateway_threads)
    register_error_handlers(app)
    _register_routes(app)
    return app


def db():
    return current_app.extensions["floor_pool"].transaction()


def _json_body():
    if not request.is_json:
        raise UnsupportedMediaType("Send JSON with Content-Type: application/json.")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object.", {"body": ["Not an object."]})
    return body


def _order_from_rows(rows):
    """An order dict (for OrderSchema) from rows of ORDER_COLUMNS + ITEM_COLUMNS."""
    first = rows[0]
    order = dict(zip(("id", "customer_id", "status", "currency", "total_amount", "shipping_address", "carrier",
                      "tracking_number", "version", "created_at", "updated_at"), first[:11]))
    order["items"] = [{"sku": r[11], "quantity": r[12], "unit_price": r[13], "line_total": r[14]}
                      for r in rows if r[11] is not None]
    return order


def _register_routes(app):
    app.add_url_rule("/health", view_func=health, methods=["GET"])
    app.add_url_rule(f"{API}/orders", view_func=create_order, methods=["POST"])
    app.add_url_rule(f"{API}/orders/<order_id>", view_func=get_order, methods=["GET"])
    app.add_url_rule(f"{API}/orders", view_func=list_orders, methods=["GET"])


def health():
    with db() as cur:
        cur.execute("SELECT 1")
    return jsonify({"status": "ok"})


def create_order():
    data = OrderInput().load(_json_body_or_400())
    quantities = Counter()
    for item in data["items"]:
        quantities[item["sku"]] += item["quantity"]
    order_id = uuid.uuid4()
    now = datetime.now(timezone.utc)
    with db() as cur:
        cur.execute("SELECT shipping_address FROM customers.customers WHERE id = %s",
                    (str(data["customer_id"]),))
        customer = cur.fetchone()
        if customer is None:
            raise UnknownCustomer("Unknown customer.", {"customer_id": str(data["customer_id"])})
        items, currency = _reserve(cur, sorted(quantities.items()), now)
        total = sum((item["line_total"] for item in items), Decimal("0.00"))
        address = data.get("shipping_address")
        address = address if address is not None else customer[0]
        order = {"id": order_id, "customer_id": data["customer_id"], "status": "pending",
                 "currency": currency, "total_amount": total, "shipping_address": address,
                 "carrier": None, "tracking_number": None, "version": 1, "created_at": now,
                 "updated_at": now, "items": items}
        _insert(cur, order)
    response = jsonify(order_schema.dump(order))
    response.status_code = 201
    response.headers["Location"] = f"{API}/orders/{order_id}"
    response.set_etag("1")
    return response


def _reserve(cur, lines, now):
    """The conditional stock reservation of each (sku, quantity): (the order's items, its currency)."""
    items, currencies = [], set()
    for sku, quantity in lines:
        cur.execute("UPDATE inventory.products SET reserved = reserved + %s, updated_at = %s "
                    "WHERE sku = %s AND stock - reserved >= %s RETURNING unit_price, currency",
                    (quantity, now, sku, quantity))
        row = cur.fetchone()
        if row is None:
            cur.execute("SELECT stock - reserved FROM inventory.products WHERE sku = %s", (sku,))
            available = cur.fetchone()
            if available is None:
                raise UnknownSku(f"Unknown sku: {sku}", {"skus": [sku]})
            raise InsufficientStock(f"Not enough stock for {sku}: {available[0]} available.",
                                    {"sku": sku, "requested": quantity, "available": available[0]})
        unit_price, currency = row
        currencies.add(currency)
        items.append({"sku": sku, "quantity": quantity, "unit_price": unit_price,
                      "line_total": unit_price * quantity})
    if len(currencies) != 1:
        raise Unprocessable("All items of an order must share one currency.", {"currencies": sorted(currencies)})
    return items, currencies.pop()


def _insert(cur, order):
    address = order["shipping_address"]
    cur.execute(
        "INSERT INTO orders.orders (id, customer_id, status, currency, total_amount, shipping_address, "
        "version, created_at, updated_at) VALUES (%s, %s, 'pending', %s, %s, %s, 1, %s, %s)",
        (str(order["id"]), str(order["customer_id"]), order["currency"], order["total_amount"],
         Json(address) if address is not None else None, order["created_at"], order["updated_at"]))
    execute_values(cur, "INSERT INTO orders.order_items (order_id, sku, quantity, unit_price, line_total) "
                        "VALUES %s",
                   [(str(order["id"]), i["sku"], i["quantity"], i["unit_price"], i["line_total"])
                    for i in order["items"]])


def get_order(order_id):
    try:
        order_id = uuid.UUID(order_id)
    except ValueError:
        raise NotFound("No such order.", {"order_id": order_id}) from None
    with db() as cur:
        cur.execute(f"SELECT {ORDER_COLUMNS}, {ITEM_COLUMNS} FROM orders.orders o "
                    "LEFT JOIN orders.order_items i ON i.order_id = o.id WHERE o.id = %s ORDER BY i.sku",
                    (str(order_id),))
        rows = cur.fetchall()
    if not rows:
        raise NotFound("No such order.", {"order_id": str(order_id)})
    order = _order_from_rows(rows)
    response = jsonify(order_schema.dump(order))
    response.set_etag(str(order["version"]))
    return response


def list_orders():
    errors = OrderListQuery().validate(request.args.to_dict())
    if errors:
        raise ValidationFailed("Some query parameters are invalid.", errors)
    query = OrderListQuery().load(request.args.to_dict())
    limit = query["limit"]
    where, params = [], []
    if "customer_id" in query:
        where.append("customer_id = %s")
        params.append(str(query["customer_id"]))
    if "status" in query:
        where.append("status = %s")
        params.append(query["status"])
    sql = (f"SELECT id FROM orders.orders {'WHERE ' + ' AND '.join(where) if where else ''} "
           "ORDER BY created_at DESC, id DESC LIMIT %s")
    with db() as cur:
        cur.execute(sql, (*params, limit + 1))
        ids = [row[0] for row in cur.fetchall()]
        page = ids[:limit]
        by_id = {}
        if page:
            cur.execute(f"SELECT {ORDER_COLUMNS}, {ITEM_COLUMNS} FROM orders.orders o "
                        "LEFT JOIN orders.order_items i ON i.order_id = o.id "
                        "WHERE o.id = ANY(%s::uuid[]) ORDER BY o.created_at DESC, o.id DESC, i.sku",
                        (page,))
            for row in cur.fetchall():
                by_id.setdefault(row[0], []).append(row)
    orders = [_order_from_rows(by_id[order_id]) for order_id in page]
    # The floor does not page further; it says whether there is more like ours does.
    return jsonify({"items": order_schema.dump(orders, many=True),
                    "next_cursor": "more" if len(ids) > limit else None})


def _json_body_or_400():
    body = _json_body()
    errors = OrderInput().validate(body)
    if errors:
        raise ValidationFailed("Some fields are invalid.", errors)
    return body


app = create_app()
