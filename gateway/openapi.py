"""The OpenAPI 3 document (GET /api/v1/openapi.json) and Swagger UI (GET /docs).

The document is generated with apispec's marshmallow plugin from the very
schemas in `common/schemas.py` that validate requests (the *Input / *Patch /
*Query classes) and shape responses (the resource schemas), so a field or a
limit changed there changes the document too. What the marshmallow classes
cannot say (which routes exist, their status codes and headers, that every
resource field is always present, which strings are enums) is written here in
`OPERATIONS`; tests/integration/test_openapi.py checks that table against the
gateway's url_map, and tests/integration/test_schemathesis.py checks the
running gateway against the document.

Swagger UI's files come from the `swagger-ui-bundle` package and are served
by the gateway itself: /docs needs no CDN.
"""
import json

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Response, abort, send_from_directory
from marshmallow import Schema, fields, validate
from swagger_ui_bundle import swagger_ui_path

from common.schemas import (ORDER_STATUSES, AddressSchema, AtLeastOneField, CustomerInput, CustomerPatch,
                            CustomerSchema, ListQuery, Money, OrderInput, OrderItemInput, OrderItemSchema,
                            OrderListQuery, OrderSchema, OrderUpdateInput, ProductInput, ProductPatch, ProductSchema,
                            ShippingInput, StatusChangeSchema, StatusInput)

API = "/api/v1"
SPEC_PATH = f"{API}/openapi.json"
DOCS_PATH = "/docs"
OPENAPI_VERSION = "3.0.3"  # what the bundled Swagger UI (4.x) renders
MAX_IDEMPOTENCY_KEY = 200  # = order_service.domain.MAX_IDEMPOTENCY_KEY (the test checks)
MONEY_PATTERN = r"^[0-9]+(\.[0-9]{1,2})?$"  # in requests (numbers are accepted too, but undocumented)
MONEY_OUT_PATTERN = r"^[0-9]+\.[0-9]{2}$"  # in responses: always two places
# The files of swagger-ui-bundle that /docs loads; nothing else is served from there.
SWAGGER_UI_FILES = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
                    "favicon-32x32.png", "favicon-16x16.png")


# ---- shapes that exist only in responses ------------------------------------
# (Requests never load these: they document the gateway's envelopes.)

class ErrorBody(Schema):
    code = fields.String(required=True, metadata={"description": "Stable, machine-readable reason.",
                                                  "example": "validation_failed"})
    message = fields.String(required=True, metadata={"description": "For people; may change."})
    details = fields.Dict(required=True, metadata={
        "description": "What the error is about; the keys depend on `code` and the values may be "
                       "of any JSON type (e.g. each bad field mapped to its messages for "
                       "`validation_failed`, `current_version` for `version_conflict`)."})


class ErrorSchema(Schema):
    error = fields.Nested(ErrorBody, required=True)


def _page_of(item_schema, name):
    return type(name, (Schema,), {
        "items": fields.List(fields.Nested(item_schema), required=True),
        "next_cursor": fields.String(required=True, allow_none=True, metadata={
            "description": "Pass as `cursor` for the next page; null on the last page."}),
    })


CustomerPage = _page_of(CustomerSchema, "CustomerPage")
ProductPage = _page_of(ProductSchema, "ProductPage")
OrderPage = _page_of(OrderSchema, "OrderPage")


class OrderHistorySchema(Schema):
    order_id = fields.UUID(required=True)
    items = fields.List(fields.Nested(StatusChangeSchema), required=True,
                        metadata={"description": "Oldest first; the first is the creation (`from: null`)."})


class HealthSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok", "unavailable"]))
    checks = fields.Dict(keys=fields.String(), values=fields.String(), required=True, metadata={
        "description": "`broker`, each service and `database`: `ok` or what is wrong.",
        "example": {"broker": "ok", "customer_service": "ok", "inventory_service": "ok",
                    "order_service": "ok", "database": "ok"}})
    error = fields.Nested(ErrorBody, metadata={"description": "Only when something is down (503)."})


# ---- component names ----------------------------------------------------------

REQUEST_SCHEMAS = {
    "Address": AddressSchema,
    "CustomerInput": CustomerInput,
    "CustomerPatch": CustomerPatch,
    "ProductInput": ProductInput,
    "ProductPatch": ProductPatch,
    "OrderItemInput": OrderItemInput,
    "OrderInput": OrderInput,
    "OrderUpdateInput": OrderUpdateInput,
    "ShippingInput": ShippingInput,
    "StatusInput": StatusInput,
}
# Every field of these is in every response (null where allow_none says so).
RESOURCE_SCHEMAS = {
    "Customer": CustomerSchema,
    "Product": ProductSchema,
    "OrderItem": OrderItemSchema,
    "Order": OrderSchema,
    "StatusChange": StatusChangeSchema,
}
ENVELOPE_SCHEMAS = {
    "ErrorBody": ErrorBody,
    "Error": ErrorSchema,
    "CustomerPage": CustomerPage,
    "ProductPage": ProductPage,
    "OrderPage": OrderPage,
    "OrderHistory": OrderHistorySchema,
    "Health": HealthSchema,
}
# Facts about response strings the resource schemas leave open.
RESOURCE_ENUMS = {
    ("Order", "status"): list(ORDER_STATUSES),
    ("StatusChange", "to"): list(ORDER_STATUSES),
    ("StatusChange", "from"): [*ORDER_STATUSES, None],
}


# ---- examples ---------------------------------------------------------------------

CUSTOMER_ID = "3f2b6c1e-8a4d-4e37-9a51-6b0f8d2c7e10"
ORDER_ID = "9b1d4f3a-2c6e-4d8b-a7f0-5e3c1b2a9d84"
ADDRESS = {"line1": "12 Analytical Way", "line2": None, "city": "London", "postal_code": "N1 9GU",
           "country": "GB"}
CUSTOMER = {"id": CUSTOMER_ID, "name": "Ada Lovelace", "email": "ada@example.com", "shipping_address": ADDRESS,
            "orders_count": 1, "created_at": "2026-11-02T10:15:00.123456+00:00",
            "updated_at": "2026-11-02T10:15:00.123456+00:00"}
PRODUCT = {"sku": "WIDGET-1", "name": "Widget", "description": "A very good widget", "unit_price": "29.99",
           "currency": "EUR", "stock": 5, "reserved": 2, "available": 3, "low_stock_threshold": 2,
           "created_at": "2026-11-02T10:16:00.000000+00:00", "updated_at": "2026-11-02T10:20:00.000000+00:00"}
ORDER = {"id": ORDER_ID, "customer_id": CUSTOMER_ID, "status": "pending",
         "items": [{"sku": "WIDGET-1", "quantity": 2, "unit_price": "29.99", "line_total": "59.98"}],
         "total_amount": "59.98", "currency": "EUR", "shipping_address": ADDRESS, "carrier": None,
         "tracking_number": None, "version": 1, "created_at": "2026-11-02T10:20:00.000000+00:00",
         "updated_at": "2026-11-02T10:20:00.000000+00:00"}
SHIPPED_ORDER = {**ORDER, "status": "shipped", "carrier": "DHL", "tracking_number": "JD014600000001", "version": 4,
                 "updated_at": "2026-11-03T08:00:00.000000+00:00"}
HISTORY = {"order_id": ORDER_ID, "items": [
    {"from": None, "to": "pending", "at": "2026-11-02T10:20:00.000000+00:00", "by": "admin-1"},
    {"from": "pending", "to": "processing", "at": "2026-11-02T11:00:00.000000+00:00", "by": "admin-1"}]}


def _error(code, message, details=None):
    return {"error": {"code": code, "message": message, "details": details or {}}}


# status -> (component name, description, {example name: example})
ERRORS = {
    400: ("BadRequest", "Malformed JSON, or fields / query parameters / headers that are not valid; "
                        "`details` names each bad one.", {
        "validation_failed": _error("validation_failed", "Some fields are invalid.",
                                    {"email": ["Not a valid email address."],
                                     "items": {"0": {"quantity": ["Must be greater than or equal to 1 and "
                                                                  "less than or equal to 100000."]}}}),
        "malformed_json": _error("validation_failed", "The body is not valid JSON.", {"body": ["Malformed JSON."]}),
    }),
    401: ("Unauthenticated", "No bearer token, or one that is expired, badly signed or malformed.", {
        "missing": _error("unauthenticated", "Send Authorization: Bearer <token>.", {"authorization": "missing"}),
        "expired": _error("unauthenticated", "The token has expired.", {"token": "expired"}),
    }),
    403: ("Forbidden", "The token is valid but its role may not do this (e.g. a customer changing stock, "
                       "or moving an order past `pending` except to `cancelled`).", {
        "role": _error("forbidden", "You may not do this.", {"role": "customer", "allowed_roles": ["admin"]}),
    }),
    404: ("NotFound", "No such resource, or one the caller may not see (another customer's).", {
        "not_found": _error("not_found", "No such order.", {"id": ORDER_ID}),
    }),
    409: ("Conflict", "The resource's state does not allow this: an illegal status transition, not enough "
                      "stock, a unique field taken, or stock below what orders reserved.", {
        "insufficient_stock": _error("insufficient_stock", "Not enough stock for WIDGET-1: 3 available.",
                                     {"sku": "WIDGET-1", "requested": 4, "available": 3}),
        "invalid_transition": _error("invalid_transition", "An order cannot go from pending to delivered.",
                                     {"status": "pending", "requested": "delivered",
                                      "allowed": ["processing", "cancelled"]}),
        "already_exists": _error("already_exists", "A customer with this email exists.",
                                 {"email": "ada@example.com"}),
    }),
    412: ("PreconditionFailed", "`If-Match` names a version the order no longer has; nothing was changed.", {
        "version_conflict": _error("version_conflict", "The order changed since you read it.",
                                   {"expected_version": 1, "current_version": 2}),
    }),
    413: ("PayloadTooLarge", "The body is larger than 64 KiB.", {
        "too_large": _error("request_entity_too_large", "The data value transmitted exceeds the capacity limit."),
    }),
    415: ("UnsupportedMediaType", "The body is not sent as `Content-Type: application/json`.", {
        "not_json": _error("unsupported_media_type", "Send JSON with Content-Type: application/json."),
    }),
    422: ("Unprocessable", "Well-formed, but names an unknown customer or sku, mixes currencies, or reuses an "
                           "Idempotency-Key with a different body.", {
        "unknown_sku": _error("unknown_sku", "Unknown sku: NOPE-1", {"skus": ["NOPE-1"]}),
        "unknown_customer": _error("unknown_customer", "No such customer.", {"customer_id": CUSTOMER_ID}),
        "idempotency_key_reused": _error("idempotency_key_reused",
                                         "This Idempotency-Key was used with a different request.",
                                         {"order_id": ORDER_ID}),
    }),
    503: ("ServiceUnavailable", "A service or the message broker cannot be reached.", {
        "broker": _error("service_unavailable", "The message broker is unreachable.", {"broker": "unreachable"}),
        "service": _error("service_unavailable", "order_service is not running.", {"service": "order_service"}),
    }),
    504: ("GatewayTimeout", "A service did not answer within RPC_TIMEOUT, or a service it called did not "
                            "answer within SERVICE_RPC_TIMEOUT (details name that service).", {
        "timeout": _error("upstream_timeout", "A service did not answer in time.", {"timeout_seconds": 10}),
        "service_timeout": _error("upstream_timeout", "inventory_service did not answer in time.",
                                  {"service": "inventory_service", "timeout_seconds": 8}),
    }),
}


# ---- the routes -------------------------------------------------------------------------
# Each: (method, path, operation). Operation keys beyond OpenAPI's own:
#   body: request schema name; ok: (status, schema name | None, example);
#   errors: the error statuses the route can answer besides 401/503/504 (every /api/v1 route);
#   headers: request header parameter names; etag / location: response headers on success.

def _op(operation_id, summary, tag, ok, errors=(), body=None, body_example=None, params=(), headers=(),
        etag=False, location=False, description=None, public=False):
    return {"operation_id": operation_id, "summary": summary, "tag": tag, "ok": ok, "errors": tuple(errors),
            "body": body, "body_example": body_example, "params": tuple(params), "headers": tuple(headers),
            "etag": etag, "location": location, "description": description, "public": public}


BODY_ERRORS = (400, 413, 415)

OPERATIONS = [
    ("get", "/health", _op(
        "health", "Is everything up?", "health", (200, "Health", {
            "status": "ok", "checks": {"broker": "ok", "customer_service": "ok", "inventory_service": "ok",
                                       "order_service": "ok", "database": "ok"}}),
        public=True, description="Broker, every service and the database. 503 names what is down "
                                 "(`unreachable`, `not running`, `timeout`, `unknown`).")),
    ("get", SPEC_PATH, _op(
        "openapi", "This OpenAPI document", "meta", (200, None, None), public=True)),

    ("post", f"{API}/customers", _op(
        "createCustomer", "Create a customer", "customers", (201, "Customer", CUSTOMER),
        errors=(*BODY_ERRORS, 403, 409), body="CustomerInput", location=True,
        body_example={"name": "Ada Lovelace", "email": "ada@example.com",
                      "shipping_address": {"line1": "12 Analytical Way", "city": "London",
                                           "postal_code": "N1 9GU", "country": "GB"}},
        description="Admins only. The email is unique (409 if taken).")),
    ("get", f"{API}/customers", _op(
        "listCustomers", "List customers, oldest first", "customers",
        (200, "CustomerPage", {"items": [CUSTOMER], "next_cursor": None}),
        errors=(400,), params=("ListQuery",), description="A customer sees only their own record.")),
    ("get", f"{API}/customers/{{customer_id}}", _op(
        "getCustomer", "Read a customer", "customers", (200, "Customer", CUSTOMER), errors=(404,),
        params=("customer_id",))),
    ("patch", f"{API}/customers/{{customer_id}}", _op(
        "updateCustomer", "Change a customer", "customers", (200, "Customer", CUSTOMER),
        errors=(*BODY_ERRORS, 404, 409), body="CustomerPatch", params=("customer_id",),
        body_example={"email": "ada@new.example"},
        description="Any of name, email, shipping_address (null clears it).")),

    ("post", f"{API}/products", _op(
        "createProduct", "Create a product", "products", (201, "Product", {**PRODUCT, "reserved": 0, "available": 5}),
        errors=(*BODY_ERRORS, 403, 409), body="ProductInput", location=True,
        body_example={"sku": "WIDGET-1", "name": "Widget", "description": "A very good widget",
                      "unit_price": "29.99", "currency": "EUR", "stock": 5, "low_stock_threshold": 2},
        description="Admins only. The sku is unique (409 if taken).")),
    ("get", f"{API}/products", _op(
        "listProducts", "List products by sku", "products",
        (200, "ProductPage", {"items": [PRODUCT], "next_cursor": None}), errors=(400,), params=("ListQuery",))),
    ("get", f"{API}/products/{{sku}}", _op(
        "getProduct", "Read a product", "products", (200, "Product", PRODUCT), errors=(404,), params=("sku",),
        description="`available = stock - reserved`.")),
    ("patch", f"{API}/products/{{sku}}", _op(
        "updateProduct", "Change price, stock, name, description or threshold", "products",
        (200, "Product", {**PRODUCT, "unit_price": "24.99", "stock": 40, "available": 38}),
        errors=(*BODY_ERRORS, 403, 404, 409), body="ProductPatch", params=("sku",),
        body_example={"unit_price": "24.99", "stock": 40},
        description="Admins only. Stock below what orders have reserved is 409.")),

    ("post", f"{API}/orders", _op(
        "createOrder", "Place an order", "orders", (201, "Order", ORDER),
        errors=(*BODY_ERRORS, 403, 409, 422), body="OrderInput", headers=("Idempotency-Key",),
        etag=True, location=True,
        body_example={"customer_id": CUSTOMER_ID, "items": [{"sku": "WIDGET-1", "quantity": 2}]},
        description="Reserves stock for every item or none (409 `insufficient_stock`), at the prices in force "
                    "now; a client-sent `unit_price` / `total_amount` is ignored. Without `shipping_address` "
                    "the customer's default is copied. A customer may order only for themself (403).")),
    ("get", f"{API}/orders", _op(
        "listOrders", "List orders, newest first", "orders",
        (200, "OrderPage", {"items": [ORDER], "next_cursor": None}), errors=(400,), params=("OrderListQuery",),
        description="`created_after` / `created_before` are exclusive; a time without an offset is UTC. "
                    "A customer lists only their own orders.")),
    ("get", f"{API}/orders/{{order_id}}", _op(
        "getOrder", "Read an order", "orders", (200, "Order", ORDER), errors=(404,), params=("order_id",),
        etag=True, description="The ETag is the order's `version`; send it back in `If-Match`.")),
    ("put", f"{API}/orders/{{order_id}}", _op(
        "updateOrder", "Replace the items and/or shipping address of a pending order", "orders",
        (200, "Order", {**ORDER, "version": 2}),
        errors=(*BODY_ERRORS, 404, 409, 412, 422), body="OrderUpdateInput", params=("order_id",),
        headers=("If-Match",), etag=True, body_example={"items": [{"sku": "WIDGET-1", "quantity": 1}]},
        description="New items are re-reserved all-or-nothing and the whole order is re-priced at current "
                    "prices; if they cannot be reserved (409) the old items stand. Only while `pending`.")),
    ("put", f"{API}/orders/{{order_id}}/shipping", _op(
        "updateShipping", "Set shipping address, carrier and/or tracking number", "orders",
        (200, "Order", {**ORDER, "carrier": "DHL", "tracking_number": "JD014600000001", "version": 2}),
        errors=(*BODY_ERRORS, 403, 404, 409, 412), body="ShippingInput", params=("order_id",),
        headers=("If-Match",), etag=True, body_example={"carrier": "DHL", "tracking_number": "JD014600000001"},
        description="Admins only; while `pending` or `processing`. Fields not sent are kept.")),
    ("put", f"{API}/orders/{{order_id}}/status", _op(
        "updateStatus", "Move an order along its status machine", "orders", (200, "Order", SHIPPED_ORDER),
        errors=(*BODY_ERRORS, 403, 404, 409, 412), body="StatusInput", params=("order_id",),
        headers=("If-Match",), etag=True, body_example={"status": "processing"},
        description="Only `pending -> processing -> shipped -> delivered` and `pending|processing -> "
                    "cancelled` (409 otherwise, naming the allowed next ones). `shipped` needs a carrier and "
                    "tracking number and turns the reservation into a stock decrement; `cancelled` releases "
                    "it. Customers may only cancel (403).")),
    ("delete", f"{API}/orders/{{order_id}}", _op(
        "deleteOrder", "Delete a pending or cancelled order", "orders", (204, None, None),
        errors=(403, 404, 409, 412), params=("order_id",), headers=("If-Match",),
        description="Admins only. Releases the reservation and removes the order with its history.")),
    ("get", f"{API}/orders/{{order_id}}/history", _op(
        "orderHistory", "Every status change of an order", "orders", (200, "OrderHistory", HISTORY),
        errors=(404,), params=("order_id",))),
]

PATH_PARAMETERS = {
    "customer_id": {"in": "path", "name": "customer_id", "required": True, "description": "A customer's id.",
                    "schema": {"type": "string", "format": "uuid"}, "example": CUSTOMER_ID},
    "order_id": {"in": "path", "name": "order_id", "required": True, "description": "An order's id.",
                 "schema": {"type": "string", "format": "uuid"}, "example": ORDER_ID},
    # The pattern is filled in from ProductInput.sku's validator below.
    "sku": {"in": "path", "name": "sku", "required": True, "description": "A product's sku.",
            "schema": {"type": "string"}, "example": "WIDGET-1"},
}
HEADER_PARAMETERS = {
    "Idempotency-Key": {
        "in": "header", "name": "Idempotency-Key", "required": False,
        "description": "Retry-safe creation: the same key with the same body (in any key order) returns the "
                       "first 201 response again and creates nothing; with a different body it is 422 "
                       "`idempotency_key_reused`. A request that failed stored nothing.",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY}, "example": "checkout-42"},
    "If-Match": {
        "in": "header", "name": "If-Match", "required": False,
        "description": "The ETag of the order as read (strong or weak form), or `*`. A stale one is 412 and "
                       "changes nothing; without it the last write wins.",
        "schema": {"type": "string"}, "example": '"1"'},
}
RESPONSE_HEADERS = {
    "X-Request-ID": {"description": "The request's X-Request-ID if it was a valid one, else a new id; "
                                    "the same id is in every log line and event the request caused.",
                     "schema": {"type": "string"}},
    "ETag": {"description": "The order's version, quoted: send it back in If-Match.",
             "schema": {"type": "string"}, "example": '"1"'},
    "Location": {"description": "Where the new resource is.", "schema": {"type": "string"},
                 "example": f"{API}/orders/{ORDER_ID}"},
    "WWW-Authenticate": {"description": "The scheme to use.", "schema": {"type": "string"},
                         "example": 'Bearer realm="api"'},
}

# Not the API's answer: gunicorn refuses a request line over 4094 bytes (its limit_request_line)
# before the gateway sees the request, in its own HTML. Query strings and path parameters
# with long non-ASCII text reach it well inside the documented lengths (each character is up
# to 12 bytes percent-encoded), so the operations that take them can answer this.
URI_TOO_LONG = {
    "description": "The request line (method, path and query string, percent-encoded) is longer than "
                   "4094 bytes. The HTTP server answers this itself, before the API sees the request.",
    "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"},
        "examples": {"uri_too_long": {"value": {"error": {
            "code": "uri_too_long", "message": "Request Line is too large (5000 > 4094)", "details": {}}}}}}},
}

DESCRIPTION = """\
Order management: customers, products with stock, and orders that reserve that stock.

**Auth.** Every `/api/v1` route except this document needs `Authorization: Bearer <JWT>`
(HS256; claims `sub`, `role` = `admin` or `customer`, and `customer_id` for customers).
`make token ROLE=admin` prints one; in Swagger UI press **Authorize** and paste it.
A customer sees and changes only their own records.

**X-Request-ID**: send one (1-128 of `A-Z a-z 0-9 . _ : -`) to trace a request through every service's logs
and the events it causes; every response carries it (a new one if yours was missing or not valid).

**Errors** always have one shape, `{"error": {"code", "message", "details"}}`; never a stack trace.

**Money** is a string with two decimal places (`"59.98"`); input with more places is 400, never rounded.
**Paging**: `limit` 1-100 (default 20) and the opaque `next_cursor` as `cursor`; `next_cursor` is null
on the last page. **Unknown fields** in a body are 400. Bodies over 64 KiB are 413.
"""


def _ref(kind, name):
    return {"$ref": f"#/components/{kind}/{name}"}


def _headers(*names):
    return {name: _ref("headers", name) for name in ("X-Request-ID", *names)}


def _responses(op, public):
    status, schema, example = op["ok"]
    success = {"description": {200: "OK", 201: "Created", 204: "No content"}[status],
               "headers": _headers(*(["ETag"] if op["etag"] else []), *(["Location"] if op["location"] else []))}
    if status != 204:
        media = {"schema": _ref("schemas", schema) if schema else {"type": "object"}}
        if example is not None:
            media["example"] = example
        success["content"] = {"application/json": media}
    responses = {str(status): success}
    if op["operation_id"] == "health":
        unavailable = {"status": "unavailable",
                       "checks": {"broker": "ok", "customer_service": "ok", "inventory_service": "not running",
                                  "order_service": "ok", "database": "ok"},
                       "error": {"code": "service_unavailable", "message": "Down: inventory_service",
                                 "details": {"inventory_service": "not running"}}}
        responses["503"] = {"description": "Something is down; `checks` and `error.details` say what.",
                            "headers": _headers(),
                            "content": {"application/json": {"schema": _ref("schemas", "Health"),
                                                             "example": unavailable}}}
        return responses
    codes = set(op["errors"]) if public else {*op["errors"], 401, 503, 504}
    for code in sorted(codes):
        responses[str(code)] = _ref("responses", ERRORS[code][0])
    if op["params"]:
        responses["414"] = _ref("responses", "URITooLong")
    return dict(sorted(responses.items()))


def _operation(op):
    parameters = []
    for name in op["params"]:
        if name in PATH_PARAMETERS:
            parameters.append(name)  # apispec makes a component name a $ref
        else:  # a query schema from common.schemas: expanded into one parameter per field
            parameters.append({"in": "query", "schema": {"ListQuery": ListQuery,
                                                         "OrderListQuery": OrderListQuery}[name]})
    parameters += list(op["headers"])
    operation = {"operationId": op["operation_id"], "summary": op["summary"], "tags": [op["tag"]],
                 "responses": _responses(op, op["public"])}
    if op["description"]:
        operation["description"] = op["description"]
    if parameters:
        operation["parameters"] = parameters
    if op["body"]:
        media = {"schema": _ref("schemas", op["body"])}
        if op["body_example"] is not None:
            media["example"] = op["body_example"]
        operation["requestBody"] = {"required": True, "content": {"application/json": media}}
    if op["public"]:
        operation["security"] = []
    return operation


def _money_properties(self, field, **kwargs):
    """Money is a decimal string with at most two places (responses: exactly two)."""
    if isinstance(field, Money):
        return {"pattern": MONEY_PATTERN, "example": "29.99"}
    return {}


def build_spec():
    """The OpenAPI document as a dict."""
    marshmallow_plugin = MarshmallowPlugin()
    spec = APISpec(title="Order management API", version="1.0.0", openapi_version=OPENAPI_VERSION,
                   plugins=[marshmallow_plugin], info={"description": DESCRIPTION},
                   security=[{"bearerAuth": []}],
                   tags=[{"name": "orders"}, {"name": "products"}, {"name": "customers"},
                         {"name": "health"}, {"name": "meta"}])
    marshmallow_plugin.map_to_openapi_type(Money, "string", "decimal")
    marshmallow_plugin.converter.add_attribute_function(_money_properties)

    spec.components.security_scheme("bearerAuth", {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "A JWT signed with the gateway's JWT_SECRET (`make token ROLE=admin`)."})
    for name, schema in {**REQUEST_SCHEMAS, **RESOURCE_SCHEMAS, **ENVELOPE_SCHEMAS}.items():
        spec.components.schema(name, schema=schema)
    for name, parameter in {**PATH_PARAMETERS, **HEADER_PARAMETERS}.items():
        spec.components.parameter(name, parameter["in"], {k: v for k, v in parameter.items() if k != "in"})
    for name, header in RESPONSE_HEADERS.items():
        spec.components.header(name, header)
    for code, (name, description, examples) in ERRORS.items():
        response = {"description": description,
                    "headers": _headers(*(["WWW-Authenticate"] if code == 401 else [])),
                    "content": {"application/json": {
                        "schema": _ref("schemas", "Error"),
                        "examples": {key: {"value": value} for key, value in examples.items()}}}}
        spec.components.response(name, response)
    spec.components.response("URITooLong", URI_TOO_LONG)

    paths = {}
    for method, path, op in OPERATIONS:
        paths.setdefault(path, {})[method] = _operation(op)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return _finish(spec.to_dict())


def _finish(document):
    """What the marshmallow schemas cannot say, and OpenAPI 3.0 spellings of what they do."""
    schemas = document["components"]["schemas"]
    for name in RESOURCE_SCHEMAS:
        schema = schemas[name]
        schema["required"] = list(schema["properties"])
        # Responses may carry more fields in future versions: only requests are closed.
        schema.pop("additionalProperties", None)
        for prop in schema["properties"].values():
            if prop.get("format") == "decimal":  # totals are not bounded like input prices
                prop.update(pattern=MONEY_OUT_PATTERN, example="59.98")
                prop.pop("x-minimum", None)
                prop.pop("x-maximum", None)
    for name in ENVELOPE_SCHEMAS:
        schemas[name].pop("additionalProperties", None)
    for name, schema_class in REQUEST_SCHEMAS.items():
        schema = schemas[name]
        if issubclass(schema_class, AtLeastOneField):  # its validates_schema: not none of them
            schema["minProperties"] = 1
        for prop in schema["properties"].values():
            if set(prop) == {"writeOnly"}:  # fields.Raw(load_only=True): any JSON value but null
                prop.update(anyOf=[{"type": kind} for kind in ("string", "number", "boolean", "object", "array")],
                            description="Accepted and ignored: prices and totals come from the server.")
    for (schema, field), values in RESOURCE_ENUMS.items():
        schemas[schema]["properties"][field]["enum"] = values
    _walk(document)
    sku = schemas["ProductInput"]["properties"]["sku"]["pattern"]
    document["components"]["parameters"]["sku"]["schema"]["pattern"] = sku
    _query_parameters_are_never_null(document)
    return document


def _walk(node):
    """Python's `\\Z` is ECMA-262's `$` (no trailing newline); `null` must be listed where it is allowed."""
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if isinstance(pattern, str) and pattern.endswith(r"\Z"):
            node["pattern"] = pattern[:-2] + "$"
        # apispec spells a nullable $ref as anyOf [{"type": "object", "nullable": true}, $ref]; that first
        # branch would accept any object, so narrow it to exactly null.
        for branch in node.get("anyOf", ()):
            if branch == {"type": "object", "nullable": True}:
                branch["enum"] = [None]
        for value in node.values():
            _walk(value)
    elif isinstance(node, list):
        for value in node:
            _walk(value)


def _query_parameters_are_never_null(document):
    """`cursor`'s load_default None means "first page": a query string has no null to send."""
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", ()):
                if parameter.get("in") == "query":
                    parameter["schema"].pop("nullable", None)
                    if parameter["schema"].get("default", "") is None:
                        del parameter["schema"]["default"]


# ---- serving ------------------------------------------------------------------------

DOCS_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Order management API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32">
  <style>body { margin: 0 } .swagger-ui .topbar { display: none }</style>
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "%(spec)s",
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      plugins: [SwaggerUIBundle.plugins.DownloadUrl],
      layout: "StandaloneLayout",
      validatorUrl: null,
      persistAuthorization: false,
      displayRequestDuration: true
    });
  </script>
</body>
</html>
""" % {"spec": SPEC_PATH}


def register_openapi(app):
    """GET /api/v1/openapi.json (public, like /health) and GET /docs (Swagger UI)."""
    document = json.dumps(build_spec(), separators=(",", ":"))
    app.extensions["openapi"] = document

    @app.get(SPEC_PATH)
    def openapi_document():
        return Response(document, mimetype="application/json")

    @app.get(DOCS_PATH)
    def swagger_ui():
        return Response(DOCS_HTML, mimetype="text/html")

    @app.get(f"{DOCS_PATH}/<filename>")
    def swagger_ui_file(filename):
        if filename not in SWAGGER_UI_FILES:
            abort(404)
        return send_from_directory(swagger_ui_path, filename, max_age=3600)
