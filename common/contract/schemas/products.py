"""Products: what POST and PATCH take and what a product looks like."""
from marshmallow import fields, validate

from common.contract.schemas.base import AtLeastOneField, Money, Schema, text_field

MAX_STOCK = 1_000_000_000
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"  # \Z: "$" would let a trailing newline in


class ProductInput(Schema):
    sku = fields.String(required=True, validate=validate.Regexp(
        SKU_PATTERN, error="Letters, digits, '.', '_' or '-', at most 64."))
    name = text_field(200, required=True)
    description = fields.String(load_default="", validate=validate.Length(max=2000))
    unit_price = Money(required=True)
    currency = fields.String(load_default="USD", validate=validate.Regexp(
        r"^[A-Z]{3}\Z", error="An ISO 4217 code such as USD."))
    stock = fields.Integer(strict=True, load_default=0,
                           validate=validate.Range(min=0, max=MAX_STOCK))
    low_stock_threshold = fields.Integer(strict=True, load_default=0,
                                         validate=validate.Range(min=0, max=MAX_STOCK))


class ProductPatch(AtLeastOneField):
    name = text_field(200)
    description = fields.String(validate=validate.Length(max=2000))
    unit_price = Money()
    stock = fields.Integer(strict=True, validate=validate.Range(min=0, max=MAX_STOCK))
    low_stock_threshold = fields.Integer(strict=True, validate=validate.Range(min=0, max=MAX_STOCK))


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
