"""Orders: statuses, what each order route takes, and what an order and its history look like."""
from datetime import timezone

from marshmallow import fields, post_load, validate

from common.contract.schemas.base import AddressSchema, AtLeastOneField, ListQuery, Money, Schema, UtcDateTime
from common.contract.schemas.products import SKU_PATTERN

MAX_ORDER_QUANTITY = 100_000
MAX_ORDER_LINES = 100
MAX_IDEMPOTENCY_KEY = 200  # characters of an Idempotency-Key header
MAX_STATUS_REASON = 500  # characters of a status change's reason
# The contract's statuses, in the order an order moves through them (order_service.domain: the transitions).
ORDER_STATUSES = ("pending", "processing", "shipped", "delivered", "cancelled")


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
    reason = fields.String(allow_none=True, validate=validate.Length(max=MAX_STATUS_REASON), metadata={
        "description": "Why (optional, any transition): kept in the history and the events, and told to the "
                       "customer in a cancellation's message."})


class OrderListQuery(ListQuery):
    status = fields.String(validate=validate.OneOf(ORDER_STATUSES))
    customer_id = fields.UUID()
    # ISO-8601; a time without an offset is taken as UTC.
    created_after = UtcDateTime(default_timezone=timezone.utc)
    created_before = UtcDateTime(default_timezone=timezone.utc)


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


class StatusChangeSchema(Schema):
    from_status = fields.String(data_key="from", allow_none=True)
    to_status = fields.String(data_key="to")
    changed_at = fields.AwareDateTime(data_key="at")
    changed_by = fields.String(data_key="by")
    reason = fields.String(allow_none=True)
