"""The HTTP gateway: validates, then forwards each call over RPC.

It owns no database; every route is one or two RPC calls through the
process's pool of started proxies.
"""
import logging
import logging.config
import re
import time
import uuid

from flask import Flask, current_app, g, jsonify, request
from nameko.exceptions import UnknownService
from werkzeug.exceptions import UnsupportedMediaType

from common.auth import CALLER_KEY, verify_token
from common.config import DEVELOPMENT_JWT_SECRET, Settings
from common.context import REQUEST_ID_KEY
from common.log import logging_config, set_request_id, set_service
from common.errors import (DomainError, ServiceUnavailable, Unauthenticated, UpstreamTimeout, ValidationFailed,
                           VersionConflict)
from common.rpc_pool import RpcProxyPool
from common.schemas import (CustomerInput, CustomerPatch, ListQuery, OrderInput, OrderListQuery,
                            OrderUpdateInput, ProductInput, ProductPatch, ShippingInput, StatusInput,
                            schema_instance)
from gateway.errors import register_error_handlers
from gateway.openapi import register_openapi

access_log = logging.getLogger("gateway.access")

API = "/api/v1"
SERVICES = ("customer_service", "inventory_service", "order_service")
MAX_BODY_BYTES = 64 * 1024
DATABASE_DOWN = "database unreachable"
PUBLIC_PATHS = {f"{API}/openapi.json"}
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def create_app(settings=None, rpc_pool=None):
    settings = settings or Settings.from_env()
    if settings.environment == "production" and settings.jwt_secret == DEVELOPMENT_JWT_SECRET:
        raise RuntimeError("Refusing to start: ENV=production with the development JWT_SECRET. "
                           "Set JWT_SECRET to a secret of your own.")
    logging.config.dictConfig(logging_config(settings.log_level))
    set_service("gateway")
    app = Flask(__name__)
    app.config["JWT_SECRET"] = settings.jwt_secret
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    app.extensions["rpc_pool"] = rpc_pool or RpcProxyPool(
        settings.nameko_config(), timeout=settings.rpc_timeout, max_size=settings.rpc_pool_size)

    register_error_handlers(app)
    app.before_request(_assign_request_id)
    app.before_request(_authenticate)
    app.after_request(_echo_request_id)
    app.after_request(_log_request)
    _register_routes(app)
    register_openapi(app)  # GET /api/v1/openapi.json and /docs
    return app


def _assign_request_id():
    g.started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
    set_request_id(g.request_id)


def _authenticate():
    """Every /api/v1 route needs `Authorization: Bearer <JWT>`; g.caller is who it names."""
    g.caller = None
    if not request.path.startswith(API + "/") or request.path in PUBLIC_PATHS:
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Send Authorization: Bearer <token>.", {"authorization": "missing"})
    g.caller = verify_token(token.strip(), current_app.config["JWT_SECRET"])


def _echo_request_id(response):
    response.headers["X-Request-ID"] = g.get("request_id") or uuid.uuid4().hex
    return response


def _log_request(response):
    """One access line per request, in the same JSON shape as every other line."""
    duration_ms = round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2)
    access_log.info("%s %s %s", request.method, request.path, response.status_code, extra={
        "method": request.method, "path": request.path, "status": response.status_code,
        "duration_ms": duration_ms})
    return response


def rpc():
    """A pooled cluster proxy carrying this request's context."""
    context = {REQUEST_ID_KEY: g.request_id}
    if g.get("caller") is not None:
        context[CALLER_KEY] = g.caller.to_context()
    return current_app.extensions["rpc_pool"].cluster(context)


def json_body(schema_class):
    """The request's JSON object, checked against `schema_class` (400 naming bad fields)."""
    if not request.is_json:
        raise UnsupportedMediaType("Send JSON with Content-Type: application/json.")
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        raise ValidationFailed("The body is nested too deeply.", {"body": ["Nested too deeply."]}) from None
    if body is None and request.get_data():
        raise ValidationFailed("The body is not valid JSON.", {"body": ["Malformed JSON."]})
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object.", {"body": ["Not an object."]})
    errors = schema_instance(schema_class).validate(body)
    if errors:
        raise ValidationFailed("Some fields are invalid.", errors)
    return body


def query_args(schema_class):
    """The query string checked against `schema_class`, as strings (services parse them again)."""
    args = request.args.to_dict()
    errors = schema_instance(schema_class).validate(args)
    if errors:
        raise ValidationFailed("Some query parameters are invalid.", errors)
    return args


def page_args():
    query = schema_instance(ListQuery).load(query_args(ListQuery))
    return query["limit"], query["cursor"]


def expected_version():
    """The order version named by If-Match, or None (no header, or `*`): last write wins."""
    if "If-Match" not in request.headers:
        return None
    tags = request.if_match
    if tags.star_tag:
        return None
    versions = [int(tag) for tag in tags.as_set(include_weak=True) if tag and tag.isascii() and tag.isdigit()]
    if not versions:
        raise VersionConflict("If-Match names no version of this order.",
                              {"if_match": request.headers["If-Match"]})
    return versions[0]


def order_response(order, status=200):
    response = jsonify(order)
    response.status_code = status
    response.set_etag(str(order["version"]))
    return response


def created(resource, location):
    response = jsonify(resource)
    response.status_code = 201
    response.headers["Location"] = location
    return response


def _register_routes(app):
    @app.get("/health")
    def health():
        checks = {"broker": "ok"}
        try:
            with rpc() as cluster:
                for service in SERVICES:
                    checks[service] = _service_health(cluster, service)
        except ServiceUnavailable:
            checks["broker"] = "unreachable"
        except UpstreamTimeout:
            pass
        for service in SERVICES:
            checks.setdefault(service, "unknown" if checks["broker"] != "ok" else "timeout")
        states = {checks[service] for service in SERVICES}
        checks["database"] = ("unreachable" if DATABASE_DOWN in states
                              else "ok" if "ok" in states else "unknown")
        down = sorted(name for name, state in checks.items() if state != "ok")
        if not down:
            return jsonify({"status": "ok", "checks": checks})
        body = {"status": "unavailable", "checks": checks,
                "error": {"code": "service_unavailable", "message": "Down: " + ", ".join(down),
                          "details": checks}}
        return jsonify(body), 503

    @app.post(f"{API}/customers")
    def create_customer():
        body = json_body(CustomerInput)
        with rpc() as cluster:
            customer = cluster.customer_service.create_customer(body)
        return created(customer, f"{API}/customers/{customer['id']}")

    @app.get(f"{API}/customers/<customer_id>")
    def get_customer(customer_id):
        with rpc() as cluster:
            return jsonify(cluster.customer_service.get_customer(customer_id))

    @app.get(f"{API}/customers")
    def list_customers():
        limit, cursor = page_args()
        with rpc() as cluster:
            return jsonify(cluster.customer_service.list_customers(limit, cursor))

    @app.patch(f"{API}/customers/<customer_id>")
    def update_customer(customer_id):
        body = json_body(CustomerPatch)
        with rpc() as cluster:
            return jsonify(cluster.customer_service.update_customer(customer_id, body))

    @app.post(f"{API}/products")
    def create_product():
        body = json_body(ProductInput)
        with rpc() as cluster:
            product = cluster.inventory_service.create_product(body)
        return created(product, f"{API}/products/{product['sku']}")

    @app.get(f"{API}/products/<sku>")
    def get_product(sku):
        with rpc() as cluster:
            return jsonify(cluster.inventory_service.get_product(sku))

    @app.get(f"{API}/products")
    def list_products():
        limit, cursor = page_args()
        with rpc() as cluster:
            return jsonify(cluster.inventory_service.list_products(limit, cursor))

    @app.patch(f"{API}/products/<sku>")
    def update_product(sku):
        body = json_body(ProductPatch)
        with rpc() as cluster:
            return jsonify(cluster.inventory_service.update_product(sku, body))

    @app.post(f"{API}/orders")
    def create_order():
        body = json_body(OrderInput)
        key = request.headers.get("Idempotency-Key")
        with rpc() as cluster:
            # attempt_id: a redelivery of this RPC message must not create a second order.
            order = cluster.order_service.create_order(body, idempotency_key=key, attempt_id=str(uuid.uuid4()))
        response = order_response(order, 201)
        response.headers["Location"] = f"{API}/orders/{order['id']}"
        return response

    @app.get(f"{API}/orders")
    def list_orders():
        filters = query_args(OrderListQuery)
        limit, cursor = filters.pop("limit", 20), filters.pop("cursor", None)
        with rpc() as cluster:
            return jsonify(cluster.order_service.list_orders(filters, int(limit), cursor))

    @app.get(f"{API}/orders/<order_id>")
    def get_order(order_id):
        with rpc() as cluster:
            return order_response(cluster.order_service.get_order(order_id))

    @app.put(f"{API}/orders/<order_id>")
    def update_order(order_id):
        body = json_body(OrderUpdateInput)
        version = expected_version()
        with rpc() as cluster:
            return order_response(cluster.order_service.update_order(order_id, body, version))

    @app.put(f"{API}/orders/<order_id>/shipping")
    def update_shipping(order_id):
        body = json_body(ShippingInput)
        version = expected_version()
        with rpc() as cluster:
            return order_response(cluster.order_service.update_shipping(order_id, body, version))

    @app.put(f"{API}/orders/<order_id>/status")
    def update_status(order_id):
        body = json_body(StatusInput)
        version = expected_version()
        with rpc() as cluster:
            return order_response(cluster.order_service.update_status(order_id, body, version))

    @app.delete(f"{API}/orders/<order_id>")
    def delete_order(order_id):
        version = expected_version()
        with rpc() as cluster:
            cluster.order_service.delete_order(order_id, version)
        return "", 204

    @app.get(f"{API}/orders/<order_id>/history")
    def order_history(order_id):
        with rpc() as cluster:
            return jsonify(cluster.order_service.order_history(order_id))


def _service_health(cluster, service):
    """'ok', or what is wrong with `service`."""
    try:
        getattr(cluster, service).health()
    except UnknownService:
        return "not running"
    except DomainError as exc:
        return DATABASE_DOWN if "database" in exc.details else exc.code
    return "ok"
