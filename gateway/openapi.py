"""The OpenAPI 3 document (GET /api/v1/openapi.json) and Swagger UI (GET /docs).

The document is generated with apispec's marshmallow plugin from the very
schemas in `common/contract/schemas/` that validate requests (the *Input / *Patch /
*Query classes) and shape responses (the resource schemas), so a field or a
limit changed there changes the document too. Which routes exist, with their
statuses, headers and the error classes they answer with, comes from their
declarations (gateway/routes.py, on the handlers in gateway/app.py); each
error status is the one its class carries (common/contract/errors.py). What is left
for this module: component names, one description per error status, the
parameters and headers, and facts the resource schemas leave open (that every
field is always present, which strings are enums). The examples are data, in
`openapi_examples.yaml`. tests/integration/test_openapi.py checks the document
against the gateway's url_map, and tests/integration/test_schemathesis.py the
running gateway against the document.

Swagger UI's files come from the `swagger-ui-bundle` package and are served
by the gateway itself: /docs needs no CDN.
"""
import json
from pathlib import Path

import yaml
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Response, abort, send_from_directory
from marshmallow import Schema, fields, validate
from swagger_ui_bundle import swagger_ui_path

from common.contract.errors import DomainError, Unauthenticated
from common.contract.schemas.base import AddressSchema, AtLeastOneField, Money
from common.contract.schemas.customers import CustomerInput, CustomerPatch, CustomerSchema
from common.contract.schemas.invoices import (
    INVOICE_NUMBER_PATTERN,
    BillToSchema,
    InvoiceLineSchema,
    InvoiceSchema,
    SellerSchema,
    TaxRate,
)
from common.contract.schemas.notifications import NOTIFICATION_KINDS, NOTIFICATION_STATUSES, NotificationSchema
from common.contract.schemas.orders import (
    ORDER_STATUSES,
    OrderInput,
    OrderItemInput,
    OrderItemSchema,
    OrderSchema,
    OrderUpdateInput,
    ShippingInput,
    StatusChangeSchema,
    StatusInput,
)
from common.contract.schemas.products import ProductInput, ProductPatch, ProductSchema
from gateway.routes.declare import API, PATH_VARIABLE, SPEC_PATH

DOCS_PATH = "/docs"
OPENAPI_VERSION = "3.0.3"  # what the bundled Swagger UI (4.x) renders
MAX_IDEMPOTENCY_KEY = 200  # = order_service.domain.MAX_IDEMPOTENCY_KEY (the test checks)
MONEY_PATTERN = r"^[0-9]+(\.[0-9]{1,2})?$"  # in requests (numbers are accepted too, but undocumented)
MONEY_OUT_PATTERN = r"^[0-9]+\.[0-9]{2}$"  # in responses: always two places
TAX_RATE_PATTERN = r"^0(\.[0-9]{1,4})?$"  # 0 <= TAX_RATE < 1, at most four places
# The files of swagger-ui-bundle that /docs loads; nothing else is served from there.
SWAGGER_UI_FILES = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
                    "favicon-32x32.png", "favicon-16x16.png")
EXAMPLES = yaml.safe_load(Path(__file__).with_name("openapi_examples.yaml").read_text(encoding="utf-8"))


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
InvoicePage = _page_of(InvoiceSchema, "InvoicePage")
NotificationPage = _page_of(NotificationSchema, "NotificationPage")


class OrderHistorySchema(Schema):
    order_id = fields.UUID(required=True)
    items = fields.List(fields.Nested(StatusChangeSchema), required=True,
                        metadata={"description": "Oldest first; the first is the creation (`from: null`)."})


class HealthSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok", "unavailable"]))
    checks = fields.Dict(keys=fields.String(), values=fields.String(), required=True, metadata={
        "description": "`broker`, each service and `database`: `ok` or what is wrong.",
        "example": {"broker": "ok", "customer_service": "ok", "inventory_service": "ok",
                    "order_service": "ok", "notification_service": "ok", "invoice_service": "ok",
                    "database": "ok"}})
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
    "Seller": SellerSchema,
    "BillTo": BillToSchema,
    "InvoiceLine": InvoiceLineSchema,
    "Invoice": InvoiceSchema,
    "Notification": NotificationSchema,
}
ENVELOPE_SCHEMAS = {
    "ErrorBody": ErrorBody,
    "Error": ErrorSchema,
    "CustomerPage": CustomerPage,
    "ProductPage": ProductPage,
    "OrderPage": OrderPage,
    "InvoicePage": InvoicePage,
    "NotificationPage": NotificationPage,
    "OrderHistory": OrderHistorySchema,
    "Health": HealthSchema,
}
# Facts about response strings the resource schemas leave open.
RESOURCE_ENUMS = {
    ("Order", "status"): list(ORDER_STATUSES),
    ("StatusChange", "to"): list(ORDER_STATUSES),
    ("StatusChange", "from"): [*ORDER_STATUSES, None],
    ("Notification", "status"): list(NOTIFICATION_STATUSES),
    ("Notification", "kind"): list(NOTIFICATION_KINDS),
}


# ---- responses and parameters -----------------------------------------------------

SUCCESS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No content"}
# One response per error status, whichever error class answers with it: status -> (component name, description).
ERROR_RESPONSES = {
    400: ("BadRequest", "Malformed JSON, or fields / query parameters / headers that are not valid; "
                        "`details` names each bad one."),
    401: ("Unauthenticated", "No bearer token, or one that is expired, badly signed or malformed."),
    403: ("Forbidden", "The token is valid but its role may not do this (e.g. a customer changing stock, "
                       "or moving an order past `pending` except to `cancelled`)."),
    404: ("NotFound", "No such resource, or one the caller may not see (another customer's); "
                      "`invoice_not_issued`: the order has no invoice (yet), or is not the caller's."),
    409: ("Conflict", "The resource's state does not allow this: an illegal status transition, not enough "
                      "stock, a unique field taken, stock below what orders reserved, or a retry of a "
                      "notification that is not `failed`."),
    412: ("PreconditionFailed", "`If-Match` names a version the order no longer has; nothing was changed."),
    413: ("PayloadTooLarge", "The body is larger than 64 KiB."),
    415: ("UnsupportedMediaType", "The body is not sent as `Content-Type: application/json`."),
    422: ("Unprocessable", "Well-formed, but names an unknown customer or sku, mixes currencies, or reuses an "
                           "Idempotency-Key with a different body."),
    503: ("ServiceUnavailable", "A service or the message broker cannot be reached. Nothing was changed, and "
                                "nothing will be: safe to send again."),
    504: ("GatewayTimeout", "`outcome_unknown` (writes): the gateway could not learn in time whether the change "
                            "was made; `details` name the resource (`order_id`, `customer_id`, `sku` or "
                            "`notification_id`). From "
                            "RPC_TIMEOUT seconds after this answer on, reading that resource tells, and keeps "
                            "telling the same. `upstream_timeout` (reads): a service did not answer within "
                            "RPC_TIMEOUT; or a service it called did not answer within SERVICE_RPC_TIMEOUT "
                            "(details name that service; nothing was changed)."),
}

# Path variables of the routes, by name.
PATH_PARAMETERS = {
    "customer_id": {"in": "path", "name": "customer_id", "required": True, "description": "A customer's id.",
                    "schema": {"type": "string", "format": "uuid"},
                    "example": EXAMPLES["parameters"]["customer_id"]},
    "order_id": {"in": "path", "name": "order_id", "required": True, "description": "An order's id.",
                 "schema": {"type": "string", "format": "uuid"},
                 "example": EXAMPLES["parameters"]["order_id"]},
    "number": {"in": "path", "name": "number", "required": True, "description": "An invoice's number.",
               "schema": {"type": "string", "pattern": INVOICE_NUMBER_PATTERN.removesuffix(r"\Z") + "$"},
               "example": EXAMPLES["parameters"]["number"]},
    "notification_id": {"in": "path", "name": "notification_id", "required": True,
                        "description": "A notification's id.", "schema": {"type": "string", "format": "uuid"},
                        "example": EXAMPLES["parameters"]["notification_id"]},
    # The pattern is filled in from ProductInput.sku's validator below.
    "sku": {"in": "path", "name": "sku", "required": True, "description": "A product's sku.",
            "schema": {"type": "string"}, "example": EXAMPLES["parameters"]["sku"]},
}
HEADER_PARAMETERS = {
    "Idempotency-Key": {
        "in": "header", "name": "Idempotency-Key", "required": False,
        "description": "Retry-safe creation: the same key with the same body (in any key order) returns the "
                       "first 201 response again and creates nothing; with a different body it is 422 "
                       "`idempotency_key_reused`. A request that failed stored nothing.",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
        "example": EXAMPLES["parameters"]["Idempotency-Key"]},
    "If-Match": {
        "in": "header", "name": "If-Match", "required": False,
        "description": "The ETag of the order as read (strong or weak form), or `*`. A stale one is 412 and "
                       "changes nothing; without it the last write wins.",
        "schema": {"type": "string"}, "example": EXAMPLES["parameters"]["If-Match"]},
}
RESPONSE_HEADERS = {
    "X-Request-ID": {"description": "The request's X-Request-ID if it was a valid one, else a new id; "
                                    "the same id is in every log line and event the request caused.",
                     "schema": {"type": "string"}},
    "ETag": {"description": "The order's version, quoted: send it back in If-Match.",
             "schema": {"type": "string"}, "example": '"1"'},
    "Location": {"description": "Where the new resource is.", "schema": {"type": "string"},
                 "example": f"{API}/orders/{EXAMPLES['parameters']['order_id']}"},
    "WWW-Authenticate": {"description": "The scheme to use.", "schema": {"type": "string"},
                         "example": 'Bearer realm="api"'},
}

# Not the API's answer: gunicorn refuses a request line over 4094 bytes (its limit_request_line)
# before the gateway sees the request (as JSON: common/kit/patches.py). Query strings and path parameters
# with long non-ASCII text reach it well inside the documented lengths (each character is up
# to 12 bytes percent-encoded), so the operations that take them can answer this.
URI_TOO_LONG_DESCRIPTION = ("The request line (method, path and query string, percent-encoded) is longer than "
                            "4094 bytes. The HTTP server answers this itself, before the API sees the request.")

DESCRIPTION = """\
Order management: customers, products with stock, orders that reserve that stock, and the emails
customers get about their orders (notifications).

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


def _media(schema, example=None):
    media = {"schema": schema}
    if example is not None:
        media["example"] = example
    return media


def _error_response(description, examples, headers=None):
    """A response in the one error shape, with its examples (openapi_examples.yaml, by name)."""
    response = {"description": description}
    if headers is not None:
        response["headers"] = headers
    response["content"] = {"application/json": {
        "schema": _ref("schemas", "Error"),
        "examples": {name: {"value": value} for name, value in examples.items()}}}
    return response


def _http_status(error):
    """What an error class answers with: a DomainError's http_status, a werkzeug HTTPException's code."""
    return error.http_status if issubclass(error, DomainError) else error.code


def _responses(route, examples):
    """Success first, then the other answers, the errors its classes answer with and 414; by status."""
    success = {"description": SUCCESS[route.status],
               "headers": _headers(*(["ETag"] if route.etag else []), *(["Location"] if route.location else []))}
    content = {}
    if route.response is not None:
        schema = _ref("schemas", route.response) if isinstance(route.response, str) else route.response
        content["application/json"] = _media(schema, examples.get(route.status))
    content.update((media_type, _media(schema)) for media_type, schema in route.other_media_types.items())
    if content:
        success["content"] = content
    responses = {route.status: success}
    for status, (description, schema) in route.other_responses.items():
        media = _media(_ref("schemas", schema), examples.get(status))
        responses[status] = {"description": description, "headers": _headers(),
                             "content": {"application/json": media}}
    for status in {_http_status(error) for error in route.answered_errors}:
        responses[status] = _ref("responses", ERROR_RESPONSES[status][0])
    if route.path_variables or route.query:
        responses[414] = _ref("responses", "URITooLong")
    return {str(status): responses[status] for status in sorted(responses)}


def _operation(route):
    examples = EXAMPLES["operations"].get(route.operation_id, {})
    parameters = [*route.path_variables]  # apispec makes a component name a $ref
    if route.query:  # expanded by apispec into one parameter per field
        parameters.append({"in": "query", "schema": route.query})
    parameters += route.headers
    operation = {"operationId": route.operation_id, "summary": route.summary, "tags": [route.tag],
                 "responses": _responses(route, examples)}
    if route.description:
        operation["description"] = route.description
    if parameters:
        operation["parameters"] = parameters
    if route.body:  # apispec makes a registered schema class a $ref
        operation["requestBody"] = {"required": True,
                                    "content": {"application/json": _media(route.body, examples.get("request"))}}
    if route.public:
        operation["security"] = []
    return operation


def _money_properties(self, field, **kwargs):
    """Money is a decimal string with at most two places (responses: exactly two); a tax rate a decimal string."""
    if isinstance(field, Money):
        return {"pattern": MONEY_PATTERN, "example": "29.99"}
    if isinstance(field, TaxRate):
        return {"pattern": TAX_RATE_PATTERN}
    return {}


def build_spec(routes):
    """The OpenAPI document of `routes` (gateway.routes.Routes) as a dict."""
    marshmallow_plugin = MarshmallowPlugin()
    spec = APISpec(title="Order management API", version="1.0.0", openapi_version=OPENAPI_VERSION,
                   plugins=[marshmallow_plugin], info={"description": DESCRIPTION},
                   security=[{"bearerAuth": []}],
                   tags=[{"name": "orders"}, {"name": "products"}, {"name": "customers"},
                         {"name": "notifications"}, {"name": "invoices"}, {"name": "health"}, {"name": "meta"}])
    marshmallow_plugin.map_to_openapi_type(Money, "string", "decimal")
    marshmallow_plugin.map_to_openapi_type(TaxRate, "string", None)
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
    for status, (name, description) in ERROR_RESPONSES.items():
        headers = _headers(*(["WWW-Authenticate"] if status == Unauthenticated.http_status else []))
        spec.components.response(name, _error_response(description, EXAMPLES["errors"][status], headers))
    spec.components.response("URITooLong", _error_response(URI_TOO_LONG_DESCRIPTION, EXAMPLES["errors"][414]))

    paths = {}
    for route in routes:
        path = PATH_VARIABLE.sub(r"{\1}", route.path)  # /orders/<order_id> -> /orders/{order_id}
        paths.setdefault(path, {})[route.method] = _operation(route)
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


def register_openapi(app, routes):
    """The document of `routes`, for the route that serves it (app.extensions["openapi"]), and GET /docs."""
    app.extensions["openapi"] = json.dumps(build_spec(routes), separators=(",", ":"))

    @app.get(DOCS_PATH)
    def swagger_ui():
        return Response(DOCS_HTML, mimetype="text/html")

    @app.get(f"{DOCS_PATH}/<filename>")
    def swagger_ui_file(filename):
        if filename not in SWAGGER_UI_FILES:
            abort(404)
        return send_from_directory(swagger_ui_path, filename, max_age=3600)
