"""The HTTP gateway: validates, then forwards each call over RPC.

It owns no database; every route is one or two RPC calls through the
process's pool of started proxies. Each route is declared once, on its
handler, with what the OpenAPI document says about it (gateway/routes.py).
"""
import logging
import logging.config
import re
import time
import uuid

from flask import Flask, Response, current_app, g, jsonify, request

from common.contract.caller import verify_token
from common.contract.errors import (
    AlreadyExists,
    DomainError,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidTransition,
    InvoiceNotIssued,
    NotFound,
    ServiceUnavailable,
    StockBelowReserved,
    Unauthenticated,
    UnknownCustomer,
    UnknownSku,
    Unprocessable,
    UpstreamTimeout,
    VersionConflict,
    error_body,
)
from common.contract.schemas.base import ListQuery
from common.contract.schemas.customers import CustomerInput, CustomerPatch
from common.contract.schemas.invoices import InvoiceListQuery
from common.contract.schemas.notifications import NotificationListQuery
from common.contract.schemas.orders import OrderInput, OrderListQuery, OrderUpdateInput, ShippingInput, StatusInput
from common.contract.schemas.products import ProductInput, ProductPatch
from common.contract.services import SERVICE_NAMES
from common.contract.settings import load_settings
from common.observability import tracing
from common.observability.log import logging_config, set_request_id, set_service
from gateway import metrics, server_span
from gateway.calls import read, write
from gateway.errors import register_error_handlers
from gateway.http import created, expected_version, order_response, page_args
from gateway.invoice_pdf import render_invoice
from gateway.openapi import SPEC_PATH, register_openapi
from gateway.routes import API, Routes
from gateway.rpc_pool import RpcProxyPool

access_log = logging.getLogger("gateway.access")

MAX_BODY_BYTES = 64 * 1024
DATABASE_DOWN = "database unreachable"
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

routes = Routes()  # declared below, each on its handler


def create_app(settings=None, rpc_pool=None):
    """The gateway app; `settings` default to the process's (common.contract.settings.load_settings)."""
    settings = settings or load_settings()
    logging.config.dictConfig(logging_config(settings.log_level))
    set_service("gateway")
    app = Flask(__name__)
    app.config["JWT_SECRET"] = settings.jwt_secret
    app.config["RPC_TIMEOUT"] = settings.rpc_timeout
    metrics.configure(settings.metrics_port != 0)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["PUBLIC_PATHS"] = routes.public_paths()
    app.json.sort_keys = False
    app.extensions["rpc_pool"] = rpc_pool or RpcProxyPool(
        settings.nameko_config(), timeout=settings.rpc_timeout, max_size=settings.rpc_pool_size)

    if tracing.configure_tracing("gateway", settings):
        server_span.instrument(app)  # first: the span holds every hook below
    register_error_handlers(app)
    app.before_request(_assign_request_id)
    app.before_request(_authenticate)
    app.after_request(_echo_request_id)
    app.after_request(_log_request)
    routes.register(app)
    register_openapi(app, routes)  # the document GET /api/v1/openapi.json serves, and /docs
    return app


def _assign_request_id():
    g.started = time.perf_counter()
    # When this request will have been answered: every RPC it makes carries it,
    # and no service commits its work after it (common/contract/context.py).
    g.deadline = time.time() + current_app.config["RPC_TIMEOUT"]
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
    set_request_id(g.request_id)


def _authenticate():
    """Every /api/v1 route not declared public needs `Authorization: Bearer <JWT>`; g.caller is who it names."""
    g.caller = None
    if not request.path.startswith(API + "/") or request.path in current_app.config["PUBLIC_PATHS"]:
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Send Authorization: Bearer <token>.", {"authorization": "missing"})
    g.caller = verify_token(token.strip(), current_app.config["JWT_SECRET"])


def _echo_request_id(response):
    response.headers["X-Request-ID"] = g.get("request_id") or uuid.uuid4().hex
    return response


def _log_request(response):
    """One access line per request, in the same JSON shape as every other line, and its metrics."""
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    metrics.record_request(request.method, request.url_rule, response.status_code, seconds)
    duration_ms = round(seconds * 1000, 2)
    access_log.info("%s %s %s", request.method, request.path, response.status_code, extra={
        "method": request.method, "path": request.path, "status": response.status_code,
        "duration_ms": duration_ms})
    return response


# ---- the routes -------------------------------------------------------------------------
# Each handler gets its path variables, and `body` / `query` when it declares a schema for them
# (already validated). The examples in the document are in gateway/openapi_examples.yaml.

@routes.get("/health", "Is everything up?", tag="health", response="Health", public=True,
            other_responses={503: ("Something is down; `checks` and `error.details` say what.", "Health")},
            description="Broker, every service and the database. 503 names what is down "
                        "(`unreachable`, `not running`, `timeout`, `unknown`).")
def health():
    checks = {"broker": "ok"}
    for service in SERVICE_NAMES:
        try:
            checks[service] = _service_health(service)
        except ServiceUnavailable:
            checks["broker"] = "unreachable"
            break
        except UpstreamTimeout:
            break
    for service in SERVICE_NAMES:
        checks.setdefault(service, "unknown" if checks["broker"] != "ok" else "timeout")
    states = {checks[service] for service in SERVICE_NAMES}
    checks["database"] = ("unreachable" if DATABASE_DOWN in states
                          else "ok" if "ok" in states else "unknown")
    down = sorted(name for name, state in checks.items() if state != "ok")
    if not down:
        return jsonify({"status": "ok", "checks": checks})
    body = {"status": "unavailable", "checks": checks,
            **error_body(ServiceUnavailable.code, "Down: " + ", ".join(down), checks)}
    return jsonify(body), 503


@routes.get("/metrics", "Prometheus metrics of the gateway", tag="meta", public=True, errors=(NotFound,),
            other_media_types={"text/plain; version=0.0.4": {"type": "string"}},
            description="Prometheus text format (no token, like `/health`): `http_requests_total{method,route,"
                        "status}`, `http_request_duration_seconds`, `rpc_client_calls_total{service,method,"
                        "outcome}`, `rpc_client_duration_seconds`, `rpc_pool_proxies{state}`. 404 when metrics are off "
                        "(METRICS_PORT=0). In production, serve it only to an internal network.")
def metrics_text():
    if not metrics.enabled():
        raise NotFound("Metrics are off (METRICS_PORT=0).", {"path": "/metrics"})
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)


@routes.get(SPEC_PATH, "This OpenAPI document", tag="meta", response={"type": "object"}, public=True)
def openapi():
    return Response(current_app.extensions["openapi"], mimetype="application/json")


@routes.post(f"{API}/customers", "Create a customer", tag="customers", status=201, response="Customer",
             body=CustomerInput, errors=(Forbidden, AlreadyExists), location=True,
             description="Admins only. The email is unique (409 if taken).")
def create_customer(body):
    customer_id = str(uuid.uuid4())  # fixed before the call, so a 504 can name it
    customer = write({"customer_id": customer_id}, "customer_service", "create_customer", body,
                     attempt_id=customer_id)
    return created(customer, f"{API}/customers/{customer['id']}")


@routes.get(f"{API}/customers/<customer_id>", "Read a customer", tag="customers", response="Customer",
            errors=(NotFound,))
def get_customer(customer_id):
    return jsonify(read("customer_service", "get_customer", customer_id))


@routes.get(f"{API}/customers", "List customers, oldest first", tag="customers", response="CustomerPage",
            query=ListQuery, description="A customer sees only their own record.")
def list_customers(query):
    limit, cursor = page_args(query)
    return jsonify(read("customer_service", "list_customers", limit, cursor))


@routes.patch(f"{API}/customers/<customer_id>", "Change a customer", tag="customers", response="Customer",
              body=CustomerPatch, errors=(NotFound, AlreadyExists),
              description="Any of name, email, shipping_address (null clears it).")
def update_customer(customer_id, body):
    return jsonify(write({"customer_id": customer_id}, "customer_service", "update_customer", customer_id, body))


@routes.post(f"{API}/products", "Create a product", tag="products", status=201, response="Product",
             body=ProductInput, errors=(Forbidden, AlreadyExists), location=True,
             description="Admins only. The sku is unique (409 if taken).")
def create_product(body):
    product = write({"sku": body["sku"]}, "inventory_service", "create_product", body)
    return created(product, f"{API}/products/{product['sku']}")


@routes.get(f"{API}/products/<sku>", "Read a product", tag="products", response="Product", errors=(NotFound,),
            description="`available = stock - reserved`.")
def get_product(sku):
    return jsonify(read("inventory_service", "get_product", sku))


@routes.get(f"{API}/products", "List products by sku", tag="products", response="ProductPage", query=ListQuery)
def list_products(query):
    limit, cursor = page_args(query)
    return jsonify(read("inventory_service", "list_products", limit, cursor))


@routes.patch(f"{API}/products/<sku>", "Change price, stock, name, description or threshold", tag="products",
              response="Product", body=ProductPatch, errors=(Forbidden, NotFound, StockBelowReserved),
              description="Admins only. Stock below what orders have reserved is 409.")
def update_product(sku, body):
    return jsonify(write({"sku": sku}, "inventory_service", "update_product", sku, body))


@routes.post(f"{API}/orders", "Place an order", tag="orders", status=201, response="Order", body=OrderInput,
             headers=("Idempotency-Key",), etag=True, location=True,
             errors=(Forbidden, InsufficientStock, UnknownCustomer, UnknownSku, Unprocessable,
                     IdempotencyKeyReused),
             description="Reserves stock for every item or none (409 `insufficient_stock`), at the prices in force "
                         "now; a client-sent `unit_price` / `total_amount` is ignored. Without `shipping_address` "
                         "the customer's default is copied. A customer may order only for themself (403).")
def create_order(body):
    key = request.headers.get("Idempotency-Key")
    # The attempt id becomes the order's id: fixed before the call, so a 504 can name it, and a
    # second run of this call (a redelivery, or a re-drive after a lost reply) finds the first order.
    order_id = str(uuid.uuid4())
    order = write({"order_id": order_id}, "order_service", "create_order", body, idempotency_key=key,
                  attempt_id=order_id, redrive=True)
    response = order_response(order, 201)
    response.headers["Location"] = f"{API}/orders/{order['id']}"
    return response


@routes.get(f"{API}/orders", "List orders, newest first", tag="orders", response="OrderPage", query=OrderListQuery,
            description="`created_after` / `created_before` are exclusive; a time without an offset is UTC. "
                        "A customer lists only their own orders.")
def list_orders(query):
    limit, cursor = query.pop("limit", 20), query.pop("cursor", None)
    # What is left of the query are the filters.
    return jsonify(read("order_service", "list_orders", query, int(limit), cursor))


@routes.get(f"{API}/orders/<order_id>", "Read an order", tag="orders", response="Order", errors=(NotFound,),
            etag=True, description="The ETag is the order's `version`; send it back in `If-Match`.")
def get_order(order_id):
    return order_response(read("order_service", "get_order", order_id))


@routes.put(f"{API}/orders/<order_id>", "Replace the items and/or shipping address of a pending order",
            tag="orders", response="Order", body=OrderUpdateInput, headers=("If-Match",), etag=True,
            errors=(NotFound, InvalidTransition, InsufficientStock, VersionConflict, UnknownSku, Unprocessable),
            description="New items are re-reserved all-or-nothing and the whole order is re-priced at current "
                        "prices; if they cannot be reserved (409) the old items stand. Only while `pending`.")
def update_order(order_id, body):
    version = expected_version()
    return order_response(write({"order_id": order_id}, "order_service", "update_order", order_id, body, version))


@routes.put(f"{API}/orders/<order_id>/shipping", "Set shipping address, carrier and/or tracking number",
            tag="orders", response="Order", body=ShippingInput, headers=("If-Match",), etag=True,
            errors=(Forbidden, NotFound, InvalidTransition, VersionConflict),
            description="Admins only; while `pending` or `processing`. Fields not sent are kept.")
def update_shipping(order_id, body):
    version = expected_version()
    return order_response(write({"order_id": order_id}, "order_service", "update_shipping", order_id, body,
                                version))


@routes.put(f"{API}/orders/<order_id>/status", "Move an order along its status machine", tag="orders",
            response="Order", body=StatusInput, headers=("If-Match",), etag=True,
            errors=(Forbidden, NotFound, InvalidTransition, VersionConflict),
            description="Only `pending -> processing -> shipped -> delivered` and `pending|processing -> "
                        "cancelled` (409 otherwise, naming the allowed next ones). `shipped` needs a carrier and "
                        "tracking number and turns the reservation into a stock decrement; `cancelled` releases "
                        "it. Customers may only cancel (403).")
def update_status(order_id, body):
    version = expected_version()
    return order_response(write({"order_id": order_id}, "order_service", "update_status", order_id, body,
                                version))


@routes.delete(f"{API}/orders/<order_id>", "Delete a pending or cancelled order", tag="orders", status=204,
               headers=("If-Match",), errors=(Forbidden, NotFound, InvalidTransition, VersionConflict),
               description="Admins only. Releases the reservation and removes the order with its history.")
def delete_order(order_id):
    version = expected_version()
    write({"order_id": order_id}, "order_service", "delete_order", order_id, version)
    return "", 204


@routes.get(f"{API}/orders/<order_id>/history", "Every status change of an order", tag="orders",
            response="OrderHistory", errors=(NotFound,))
def order_history(order_id):
    return jsonify(read("order_service", "order_history", order_id))


PDF = "application/pdf"


@routes.get(f"{API}/orders/<order_id>/invoice", "The order's invoice, as JSON or as a PDF", tag="invoices",
            response="Invoice", other_media_types={PDF: {"type": "string", "format": "binary"}},
            errors=(InvoiceNotIssued,),
            description="Issued when the order becomes `shipped` (within seconds); before that, and for another "
                        "customer's order, 404 `invoice_not_issued`. With `Accept: application/pdf` the answer is "
                        "the invoice as an A4 PDF (seller, bill-to, number, date, lines, totals).")
def get_order_invoice(order_id):
    invoice = read("invoice_service", "get_invoice_for_order", order_id)
    if request.accept_mimetypes.best_match(["application/json", PDF], default="application/json") == PDF:
        response = Response(render_invoice(invoice), mimetype=PDF)
        response.headers["Content-Disposition"] = f'inline; filename="{invoice["number"]}.pdf"'
    else:
        response = jsonify(invoice)
    response.vary.add("Accept")
    return response


@routes.get(f"{API}/invoices", "List invoices, newest first", tag="invoices", response="InvoicePage",
            query=InvoiceListQuery,
            description="Newest (highest number) first. `issued_after` / `issued_before` are exclusive; a time "
                        "without an offset is UTC. A customer lists only their own invoices.")
def list_invoices(query):
    limit, cursor = query.pop("limit", 20), query.pop("cursor", None)
    return jsonify(read("invoice_service", "list_invoices", query, int(limit), cursor))


@routes.get(f"{API}/invoices/<number>", "Read an invoice", tag="invoices", response="Invoice",
            errors=(NotFound,), description="By number, e.g. `INV-2026-000042`.")
def get_invoice(number):
    return jsonify(read("invoice_service", "get_invoice", number))


@routes.get(f"{API}/notifications", "List notifications, newest first", tag="notifications",
            response="NotificationPage", query=NotificationListQuery,
            description="The emails sent (or to be sent) to customers about their orders. A customer lists only "
                        "their own.")
def list_notifications(query):
    limit, cursor = query.pop("limit", 20), query.pop("cursor", None)
    # What is left of the query are the filters.
    return jsonify(read("notification_service", "list_notifications", query, int(limit), cursor))


@routes.get(f"{API}/notifications/<notification_id>", "Read a notification", tag="notifications",
            response="Notification", errors=(NotFound,))
def get_notification(notification_id):
    return jsonify(read("notification_service", "get_notification", notification_id))


@routes.post(f"{API}/notifications/<notification_id>/retry", "Send a failed notification again",
             tag="notifications", status=202, response="Notification",
             errors=(Forbidden, NotFound, InvalidTransition),
             description="Admins only. A `failed` notification goes back to `queued` with `attempts` from 0 and is "
                         "sent as soon as the sender gets to it (202: accepted, not yet sent); any other status "
                         "is 409.")
def retry_notification(notification_id):
    return jsonify(write({"notification_id": notification_id}, "notification_service", "retry_notification",
                         notification_id)), 202


def _service_health(service):
    """'ok', or what is wrong with `service`; ServiceUnavailable when the broker is not
    there, UpstreamTimeout when the service does not answer."""
    try:
        read(service, "health")
    except UpstreamTimeout:
        raise
    except ServiceUnavailable as exc:
        if "broker" in exc.details:
            raise
        if exc.details.get("service") == service:
            return "not running"
        return DATABASE_DOWN if "database" in exc.details else exc.code
    except DomainError as exc:
        return DATABASE_DOWN if "database" in exc.details else exc.code
    return "ok"
