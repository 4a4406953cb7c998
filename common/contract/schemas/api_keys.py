"""API keys: what POST takes and what a key looks like (its secret only in the create answer)."""
from marshmallow import ValidationError, fields, validate, validates_schema

from common.contract.caller import ADMIN, CUSTOMER, TOKEN_ROLES
from common.contract.schemas.base import Schema, text_field


class ApiKeyInput(Schema):
    name = text_field(200, required=True, metadata={"description": "Which client holds it, for people."})
    role = fields.String(required=True, validate=validate.OneOf(TOKEN_ROLES))
    customer_id = fields.UUID(allow_none=True, metadata={"description": "The customer a `customer` key acts for "
                                                                        "(required for it, refused for `admin`)."})

    @validates_schema
    def _customer_for_customer_keys(self, data, **kwargs):
        if data.get("role") == CUSTOMER and data.get("customer_id") is None:
            raise ValidationError("A customer key needs the customer it acts for.", "customer_id")
        if data.get("role") == ADMIN and data.get("customer_id") is not None:
            raise ValidationError("An admin key acts for no customer.", "customer_id")


class ApiKeySchema(Schema):
    id = fields.UUID()
    name = fields.String()
    role = fields.String()
    customer_id = fields.UUID(allow_none=True)
    prefix = fields.String(metadata={"description": "The key's first 8 characters, to tell keys apart."})
    created_at = fields.AwareDateTime()
    last_used_at = fields.AwareDateTime(allow_none=True, metadata={
        "description": "When a gateway last verified it (at most API_KEY_CACHE_SECONDS behind its last use)."})
    revoked_at = fields.AwareDateTime(allow_none=True)


class ApiKeyCreatedSchema(ApiKeySchema):
    key = fields.String(metadata={"description": "The key itself, for `X-API-Key`: shown in this answer only."})
