"""Marshmallow schemas: the one definition of every request and resource.

The gateway validates requests with the *Input schemas, services validate
again with the same classes (so `nameko shell` callers get the same rules),
and services dump resources with the resource schemas. Unknown fields are
rejected (marshmallow's default RAISE) so typos surface as 400s.
"""
import decimal
import functools
import uuid

from datetime import timezone

from marshmallow import Schema as BaseSchema
from marshmallow import ValidationError, fields, post_load, pre_load, validate, validates_schema

MONEY_PLACES = decimal.Decimal("0.01")
MAX_MONEY = decimal.Decimal("1000000000")
MAX_STOCK = 1_000_000_000
MAX_ORDER_QUANTITY = 100_000
MAX_ORDER_LINES = 100
INVOICE_NUMBER_PATTERN = r"^INV-[0-9]{4}-[0-9]{6}\Z"
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"  # \Z: "$" would let a trailing newline in


def uuid_or_none(value):
    """A UUID, or None when `value` cannot be one (then it names no resource)."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def id_of_attempt(attempt_id):
    """The id of the resource a create makes: its attempt id, or a new one.

    The gateway sends a fresh attempt id with every HTTP create and it becomes
    the new resource's id, so the id is known before the call (a 504 can name
    it) and a second run of the same call (a redelivery after a crash, the
    gateway re-driving a lost reply) finds what the first made instead of
    making another.
    """
    if attempt_id is None:
        return uuid.uuid4()
    parsed = uuid_or_none(attempt_id)
    if parsed is None:
        from common.errors import ValidationFailed

        raise ValidationFailed("Invalid attempt id.", {"attempt_id": ["Not a valid UUID."]})
    return parsed


def _has_nul(value):
    """NUL or an unpaired surrogate: text Postgres (or UTF-8) cannot store."""
    if isinstance(value, str):
        return "\x00" in value or any("\ud800" <= char <= "\udfff" for char in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(map(_has_nul, value))
    return False


class Schema(BaseSchema):
    """Every schema here refuses NUL characters and unpaired surrogates, which Postgres cannot store."""

    @pre_load
    def _refuse_nul(self, data, **kwargs):
        if isinstance(data, dict):
            bad = {key: ["Must not contain NUL characters or unpaired surrogates."]
                   for key, value in data.items() if _has_nul(value)}
            if bad:
                raise ValidationError(bad)
        return data


class Money(fields.Decimal):
    """A decimal with at most two places, carried as a string ("59.98").

    Unlike a plain Decimal(places=2) it rejects "1.999" instead of rounding it.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("validate", validate.Range(min=0, max=MAX_MONEY))
        super().__init__(places=None, as_string=True, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            raise self.make_error("invalid")
        number = super()._deserialize(value, attr, data, **kwargs)
        if number.as_tuple().exponent < -2:
            raise ValidationError("Must have at most two decimal places.")
        if abs(number) > MAX_MONEY:  # before quantize, which fails on huge exponents
            raise ValidationError(f"Must be at most {MAX_MONEY}.")
        return number.quantize(MONEY_PLACES)

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        return str(decimal.Decimal(value).quantize(MONEY_PLACES))


def _text(max_length, **kwargs):
    return fields.String(validate=validate.Length(min=1, max=max_length), **kwargs)


class AddressSchema(Schema):
    line1 = _text(200, required=True)
    line2 = fields.String(validate=validate.Length(max=200), allow_none=True)
    city = _text(100, required=True)
    postal_code = _text(20, required=True)
    country = _text(100, required=True)


# ---- requests -------------------------------------------------------------

class CustomerInput(Schema):
    name = _text(200, required=True)
    email = fields.Email(required=True, validate=validate.Length(max=254))
    shipping_address = fields.Nested(AddressSchema, allow_none=True)


class ProductInput(Schema):
    sku = fields.String(required=True, validate=validate.Regexp(
        SKU_PATTERN, error="Letters, digits, '.', '_' or '-', at most 64."))
    name = _text(200, required=True)
    description = fields.String(load_default="", validate=validate.Length(max=2000))
    unit_price = Money(required=True)
    currency = fields.String(load_default="USD", validate=validate.Regexp(
        r"^[A-Z]{3}\Z", error="An ISO 4217 code such as USD."))
    stock = fields.Integer(strict=True, load_default=0,
                           validate=validate.Range(min=0, max=MAX_STOCK))
    low_stock_threshold = fields.Integer(strict=True, load_default=0,
                                         validate=validate.Range(min=0, max=MAX_STOCK))


class OrderItemInput(Schema):
    sku = fields.String(required=True, validate=validate.Regexp(SKU_PATTERN))
    quantity = fields.Integer(strict=True, required=True,
                              validate=validate.Range(min=1, max=MAX_ORDER_QUANTITY))
    # Prices come from inventory at order time; a client-sent price is ignored.
    unit_price = fields.Raw(load_only=True)

    @post_load
    def _drop_client_price(self, data, **kwargs):
        data.pop("unit_price", None)
        return data


class OrderInput(Schema):
    customer_id = fields.UUID(required=True)
    items = fields.List(fields.Nested(OrderItemInput), required=True,
                        validate=validate.Length(min=1, max=MAX_ORDER_LINES))
    shipping_address = fields.Nested(AddressSchema, allow_none=True)
    # Computed by the server; a client-sent total is ignored.
    total_amount = fields.Raw(load_only=True)

    @post_load
    def _drop_client_total(self, data, **kwargs):
        data.pop("total_amount", None)
        return data


ORDER_STATUSES = ("pending", "processing", "shipped", "delivered", "cancelled")


class AtLeastOneField(Schema):
    """A partial update: any of the fields, but not none of them."""

    @validates_schema
    def _not_empty(self, data, **kwargs):
        if not data:
            raise ValidationError("Send at least one field to change.", "_schema")


class CustomerPatch(AtLeastOneField):
    name = _text(200)
    email = fields.Email(validate=validate.Length(max=254))
    shipping_address = fields.Nested(AddressSchema, allow_none=True)


class ProductPatch(AtLeastOneField):
    name = _text(200)
    description = fields.String(validate=validate.Length(max=2000))
    unit_price = Money()
    stock = fields.Integer(strict=True, validate=validate.Range(min=0, max=MAX_STOCK))
    low_stock_threshold = fields.Integer(strict=True, validate=validate.Range(min=0, max=MAX_STOCK))


class OrderUpdateInput(AtLeastOneField):
    """PUT /orders/{id}: new items and/or shipping address, while pending."""
    items = fields.List(fields.Nested(OrderItemInput),
                        validate=validate.Length(min=1, max=MAX_ORDER_LINES))
    shipping_address = fields.Nested(AddressSchema, allow_none=True)


class ShippingInput(AtLeastOneField):
    shipping_address = fields.Nested(AddressSchema, allow_none=True)
    carrier = fields.String(validate=validate.Length(min=1, max=100), allow_none=True)
    tracking_number = fields.String(validate=validate.Length(min=1, max=100), allow_none=True)


class StatusInput(Schema):
    status = fields.String(required=True, validate=validate.OneOf(ORDER_STATUSES))


class ListQuery(Schema):
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None, validate=validate.Length(max=500))


class UtcDateTime(fields.AwareDateTime):
    """ISO-8601, loaded as UTC (no offset = UTC): Postgres refuses offsets beyond ±15:59 (a 500 before)."""

    def _deserialize(self, value, attr, data, **kwargs):
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(timezone.utc)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise ValidationError("Out of range.") from None


NOTIFICATION_STATUSES = ("queued", "sent", "failed")
# What a notification tells the customer (notification_service.domain decides which event makes which).
NOTIFICATION_KINDS = ("order_confirmation", "order_shipped", "order_delivered", "order_cancelled")


class NotificationListQuery(ListQuery):
    order_id = fields.UUID()
    status = fields.String(validate=validate.OneOf(NOTIFICATION_STATUSES))


class OrderListQuery(ListQuery):
    status = fields.String(validate=validate.OneOf(ORDER_STATUSES))
    customer_id = fields.UUID()
    # ISO-8601; a time without an offset is taken as UTC.
    created_after = UtcDateTime(default_timezone=timezone.utc)
    created_before = UtcDateTime(default_timezone=timezone.utc)


class InvoiceListQuery(ListQuery):
    customer_id = fields.UUID()
    # ISO-8601; a time without an offset is taken as UTC. Both exclusive.
    issued_after = UtcDateTime(default_timezone=timezone.utc)
    issued_before = UtcDateTime(default_timezone=timezone.utc)


# ---- resources (responses and events) ------------------------------------

class CustomerSchema(Schema):
    id = fields.UUID()
    name = fields.String()
    email = fields.String()
    shipping_address = fields.Nested(AddressSchema, allow_none=True)
    orders_count = fields.Integer()
    created_at = fields.AwareDateTime()
    updated_at = fields.AwareDateTime()


class ProductSchema(Schema):
    sku = fields.String()
    name = fields.String()
    description = fields.String()
    unit_price = Money()
    currency = fields.String()
    stock = fields.Integer()
    reserved = fields.Integer()
    available = fields.Integer()
    low_stock_threshold = fields.Integer()
    created_at = fields.AwareDateTime()
    updated_at = fields.AwareDateTime()


class OrderItemSchema(Schema):
    sku = fields.String()
    quantity = fields.Integer()
    unit_price = Money()
    line_total = Money()


class OrderSchema(Schema):
    id = fields.UUID()
    customer_id = fields.UUID()
    status = fields.String()
    items = fields.List(fields.Nested(OrderItemSchema))
    total_amount = Money()
    currency = fields.String()
    shipping_address = fields.Nested(AddressSchema, allow_none=True)
    carrier = fields.String(allow_none=True)
    tracking_number = fields.String(allow_none=True)
    version = fields.Integer()
    created_at = fields.AwareDateTime()
    updated_at = fields.AwareDateTime()


class SellerSchema(Schema):
    name = fields.String()
    address = fields.String()
    tax_id = fields.String()


class BillToSchema(Schema):
    name = fields.String()
    email = fields.String()
    address = fields.Nested(AddressSchema, allow_none=True, metadata={
        "description": "The order's shipping address (null if the order had none)."})


class InvoiceLineSchema(Schema):
    sku = fields.String()
    name = fields.String(metadata={"description": "The product's name when the invoice was issued."})
    quantity = fields.Integer()
    unit_price = Money()
    line_total = Money()


class TaxRate(fields.Decimal):
    """A rate as a plain decimal string ("0.19" for 19 %), never in exponent form."""

    def __init__(self, **kwargs):
        super().__init__(as_string=True, **kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        return format(decimal.Decimal(value).normalize(), "f")


class InvoiceSchema(Schema):
    number = fields.String(metadata={"description": "`INV-<year>-<6 digits>`, consecutive without gaps "
                                                    "within a year.", "example": "INV-2026-000042"})
    order_id = fields.UUID()
    customer_id = fields.UUID()
    issued_at = fields.AwareDateTime()
    seller = fields.Nested(SellerSchema)
    bill_to = fields.Nested(BillToSchema)
    lines = fields.List(fields.Nested(InvoiceLineSchema))
    currency = fields.String()
    subtotal = Money(metadata={"description": "`total_amount - tax_amount`."})
    tax_rate = TaxRate(metadata={"description": "The rate in force when the invoice was issued (prices "
                                                "include tax).", "example": "0.19"})
    tax_amount = Money(metadata={"description": "`total_amount - total_amount / (1 + tax_rate)`, rounded "
                                                "half-up to cents."})
    total_amount = Money(metadata={"description": "The order's total."})


class StatusChangeSchema(Schema):
    from_status = fields.String(data_key="from", allow_none=True)
    to_status = fields.String(data_key="to")
    changed_at = fields.AwareDateTime(data_key="at")
    changed_by = fields.String(data_key="by")


class NotificationSchema(Schema):
    id = fields.UUID()
    order_id = fields.UUID(allow_none=True)
    customer_id = fields.UUID()
    event_id = fields.UUID(metadata={"description": "The event that caused it: one notification per "
                                                    "(event, recipient)."})
    event_type = fields.String(metadata={"description": "That event's type, e.g. `order_status_changed`."})
    kind = fields.String(metadata={"description": "What the email says."})
    recipient = fields.String(metadata={"description": "The email address it is sent to."})
    subject = fields.String()
    message_id = fields.String(metadata={"description": "The email's Message-ID: the same on every attempt."})
    status = fields.String(metadata={"description": "`queued` (waiting for its next attempt), `sent` (the mail "
                                                    "server took it) or `failed` (refused, or out of attempts)."})
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True, metadata={"description": "What the mail server (or the "
                                                                         "connection) said on the last failed "
                                                                         "attempt."})
    next_attempt_at = fields.AwareDateTime(allow_none=True, metadata={"description": "When it is tried next "
                                                                                     "(`queued` only)."})
    created_at = fields.AwareDateTime()
    updated_at = fields.AwareDateTime()
    sent_at = fields.AwareDateTime(allow_none=True)


@functools.cache
def schema_instance(schema_class):
    """One instance per schema class, made once: building a marshmallow schema
    costs more than validating a small body with it. Loading and validating
    keep no state on the instance, so threads and greenthreads can share it."""
    return schema_class()


def load_or_raise(schema_class, data, **kwargs):
    """Validate `data` with `schema_class`; bad input becomes ValidationFailed naming each field."""
    from common.errors import ValidationFailed

    schema = schema_instance(schema_class)
    if not isinstance(data, dict):
        raise ValidationFailed("The body must be a JSON object.", {"_schema": ["Not an object."]})
    try:
        return schema.load(data, **kwargs)
    except ValidationError as exc:
        raise ValidationFailed("Some fields are invalid.", exc.normalized_messages()) from None
