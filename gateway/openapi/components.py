"""The document's components: schema names, parameters, response headers and error responses.

The request and resource schemas are the marshmallow classes of
common/contract/schemas/ that validate requests and shape responses; the
envelopes below exist only in responses. Each component's words come from
prose.yaml and its examples from examples.yaml (gateway/openapi/data.py).
"""
from marshmallow import Schema, fields, validate

from common.contract.caller import TOKEN_ROLES
from common.contract.errors import RateLimited, ServiceUnavailable, Unauthenticated
from common.contract.schemas.api_keys import ApiKeyCreatedSchema, ApiKeyInput, ApiKeySchema
from common.contract.schemas.base import AddressSchema
from common.contract.schemas.customers import (
    CustomerInput,
    CustomerPatch,
    CustomerSchema,
    PreferencesPatch,
    PreferencesSchema,
    PushKeys,
    PushSubscriptionInput,
    PushSubscriptionSchema,
)
from common.contract.schemas.invoices import (
    INVOICE_NUMBER_PATTERN,
    BillToSchema,
    InvoiceLineSchema,
    InvoiceSchema,
    SellerSchema,
)
from common.contract.schemas.notifications import (
    NOTIFICATION_CHANNELS,
    NOTIFICATION_KINDS,
    NOTIFICATION_STATUSES,
    NotificationSchema,
)
from common.contract.schemas.orders import (
    MAX_IDEMPOTENCY_KEY,
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
from common.contract.schemas.webhooks import (
    DELIVERY_STATUSES,
    CreatedWebhookSchema,
    DeliverySchema,
    WebhookInput,
    WebhookPatch,
    WebhookSchema,
)
from common.contract.services import SERVICE_NAMES
from gateway.openapi.data import EXAMPLES, PROSE
from gateway.routes.declare import API

MONEY_PATTERN = r"^[0-9]+(\.[0-9]{1,2})?$"  # in requests (numbers are accepted too, but undocumented)
MONEY_OUT_PATTERN = r"^[0-9]+\.[0-9]{2}$"  # in responses: always two places
TAX_RATE_PATTERN = r"^0(\.[0-9]{1,4})?$"  # 0 <= TAX_RATE < 1, at most four places


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
ApiKeyPage = _page_of(ApiKeySchema, "ApiKeyPage")
WebhookPage = _page_of(WebhookSchema, "WebhookPage")
DeliveryPage = _page_of(DeliverySchema, "DeliveryPage")


class OrderHistorySchema(Schema):
    order_id = fields.UUID(required=True)
    items = fields.List(fields.Nested(StatusChangeSchema), required=True,
                        metadata={"description": "Oldest first; the first is the creation (`from: null`)."})


class HealthSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok", "unavailable"]))
    checks = fields.Dict(keys=fields.String(), values=fields.String(), required=True, metadata={
        "description": "`broker`, each service and `database`: `ok` or what is wrong.",
        "example": {"broker": "ok", **dict.fromkeys(SERVICE_NAMES, "ok"), "database": "ok"}})
    error = fields.Nested(ErrorBody, metadata={"description": "Only when something is down (503)."})


# ---- component names ----------------------------------------------------------

REQUEST_SCHEMAS = {
    "Address": AddressSchema,
    "PreferencesPatch": PreferencesPatch,  # (nested schemas before the schemas they are in)
    "CustomerInput": CustomerInput,
    "CustomerPatch": CustomerPatch,
    "PushKeys": PushKeys,
    "PushSubscriptionInput": PushSubscriptionInput,
    "ProductInput": ProductInput,
    "ProductPatch": ProductPatch,
    "OrderItemInput": OrderItemInput,
    "OrderInput": OrderInput,
    "OrderUpdateInput": OrderUpdateInput,
    "ShippingInput": ShippingInput,
    "StatusInput": StatusInput,
    "ApiKeyInput": ApiKeyInput,
    "WebhookInput": WebhookInput,
    "WebhookPatch": WebhookPatch,
}
# Every field of these is in every response (null where allow_none says so).
RESOURCE_SCHEMAS = {
    "NotificationPreferences": PreferencesSchema,
    "PushSubscription": PushSubscriptionSchema,
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
    "ApiKey": ApiKeySchema,
    "ApiKeyCreated": ApiKeyCreatedSchema,
    "Webhook": WebhookSchema,
    "CreatedWebhook": CreatedWebhookSchema,
    "Delivery": DeliverySchema,
}
ENVELOPE_SCHEMAS = {
    "ErrorBody": ErrorBody,
    "Error": ErrorSchema,
    "CustomerPage": CustomerPage,
    "ProductPage": ProductPage,
    "OrderPage": OrderPage,
    "InvoicePage": InvoicePage,
    "NotificationPage": NotificationPage,
    "ApiKeyPage": ApiKeyPage,
    "WebhookPage": WebhookPage,
    "DeliveryPage": DeliveryPage,
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
    ("ApiKey", "role"): list(TOKEN_ROLES),
    ("ApiKeyCreated", "role"): list(TOKEN_ROLES),
    ("Delivery", "status"): list(DELIVERY_STATUSES),
    ("Notification", "channel"): list(NOTIFICATION_CHANNELS),
}


# ---- responses, parameters and headers ---------------------------------------------

# One response per error status, whichever error class answers with it: status -> component name.
ERROR_RESPONSES = {
    400: "BadRequest",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    412: "PreconditionFailed",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "Unprocessable",
    429: "TooManyRequests",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
# Not the API's answer: gunicorn refuses a request line over 4094 bytes (its limit_request_line)
# before the gateway sees the request (as JSON: common/kit/patches.py). Query strings and path parameters
# with long non-ASCII text reach it well inside the documented lengths (each character is up
# to 12 bytes percent-encoded), so the operations that take them can answer this.
URI_TOO_LONG = (414, "URITooLong")

# The routes' path variables and the request headers they read, by component name: (in, schema).
PARAMETERS = {
    "customer_id": ("path", {"type": "string", "format": "uuid"}),
    "subscription_id": ("path", {"type": "string", "format": "uuid"}),
    "order_id": ("path", {"type": "string", "format": "uuid"}),
    "number": ("path", {"type": "string", "pattern": INVOICE_NUMBER_PATTERN.removesuffix(r"\Z") + "$"}),
    "notification_id": ("path", {"type": "string", "format": "uuid"}),
    "key_id": ("path", {"type": "string", "format": "uuid"}),
    "webhook_id": ("path", {"type": "string", "format": "uuid"}),
    "delivery_id": ("path", {"type": "string", "format": "uuid"}),
    "sku": ("path", {"type": "string"}),  # its pattern is ProductInput.sku's (gateway/openapi/fixes.py)
    "Idempotency-Key": ("header", {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY}),
    "If-Match": ("header", {"type": "string"}),
}
RESPONSE_HEADERS = {
    "X-Request-ID": {"schema": {"type": "string"}},
    "ETag": {"schema": {"type": "string"}, "example": '"1"'},
    "Location": {"schema": {"type": "string"}, "example": f"{API}/orders/{EXAMPLES['parameters']['order_id']}"},
    "WWW-Authenticate": {"schema": {"type": "string"}, "example": 'Bearer realm="api"'},
    "Retry-After": {"schema": {"type": "integer", "minimum": 1}, "example": 3},
    "RateLimit-Limit": {"schema": {"type": "integer", "minimum": 1}, "example": 600},
    "RateLimit-Remaining": {"schema": {"type": "integer", "minimum": 0}, "example": 599},
    "RateLimit-Reset": {"schema": {"type": "integer", "minimum": 0}, "example": 42},
}
# On every answer of a rate-limited route while RATE_LIMIT is set (see PROSE["headers"]).
RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
# The headers each error status carries besides X-Request-ID.
ERROR_HEADERS = {
    Unauthenticated.http_status: ("WWW-Authenticate",),
    RateLimited.http_status: ("Retry-After", *RATE_LIMIT_HEADERS),
    ServiceUnavailable.http_status: ("Retry-After",),
}


def ref(kind, name):
    return {"$ref": f"#/components/{kind}/{name}"}


def response_headers(*names):
    """X-Request-ID, which every response carries, and `names`."""
    return {name: ref("headers", name) for name in ("X-Request-ID", *names)}


def register_components(spec):
    """Every component into `spec` (an apispec APISpec), with its words and examples."""
    spec.components.security_scheme("bearerAuth", {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": PROSE["security"]})
    spec.components.security_scheme("apiKeyAuth", {
        "type": "apiKey", "in": "header", "name": "X-API-Key", "description": PROSE["api_key_security"]})
    for name, schema in {**REQUEST_SCHEMAS, **RESOURCE_SCHEMAS, **ENVELOPE_SCHEMAS}.items():
        spec.components.schema(name, schema=schema)
    for name, (location, schema) in PARAMETERS.items():
        spec.components.parameter(name, location, {
            "name": name, "required": location == "path", "description": PROSE["parameters"][name],
            "schema": schema, "example": EXAMPLES["parameters"][name]})
    for name, header in RESPONSE_HEADERS.items():
        spec.components.header(name, {"description": PROSE["headers"][name], **header})
    for status, name in ERROR_RESPONSES.items():
        headers = response_headers(*ERROR_HEADERS.get(status, ()))
        spec.components.response(name, _error_response(status, headers))
    status, name = URI_TOO_LONG
    spec.components.response(name, _error_response(status))


def _error_response(status, headers=None):
    """The response in the one error shape for `status`, with its examples (examples.yaml, by name)."""
    response = {"description": PROSE["errors"][status]}
    if headers is not None:
        response["headers"] = headers
    response["content"] = {"application/json": {
        "schema": ref("schemas", "Error"),
        "examples": {name: {"value": value} for name, value in EXAMPLES["errors"][status].items()}}}
    return response
