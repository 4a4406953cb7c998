"""Customers: what POST and PATCH take and what a customer looks like."""
from marshmallow import fields, validate

from common.contract.schemas.base import AddressSchema, AtLeastOneField, Schema, text_field


class CustomerInput(Schema):
    name = text_field(200, required=True)
    email = fields.Email(required=True, validate=validate.Length(max=254))
    shipping_address = fields.Nested(AddressSchema, allow_none=True)


class CustomerPatch(AtLeastOneField):
    name = text_field(200)
    email = fields.Email(validate=validate.Length(max=254))
    shipping_address = fields.Nested(AddressSchema, allow_none=True)


class CustomerSchema(Schema):
    id = fields.UUID()
    name = fields.String()
    email = fields.String()
    shipping_address = fields.Nested(AddressSchema, allow_none=True)
    orders_count = fields.Integer()
    created_at = fields.AwareDateTime()
    updated_at = fields.AwareDateTime()
