"""Inputs only inventory_service takes (shared ones live in common.schemas)."""
from marshmallow import Schema, fields, validate

from common.contract.schemas.orders import MAX_ORDER_LINES, OrderItemInput


class ReserveInput(Schema):
    order_id = fields.UUID(required=True)
    items = fields.List(fields.Nested(OrderItemInput), required=True,
                        validate=validate.Length(min=1, max=MAX_ORDER_LINES))
