"""Webhooks: what POST and PATCH take, what a webhook and a delivery look like, the list queries."""
from marshmallow import fields, validate

from common.contract.events import WEBHOOK_EVENT_TYPES
from common.contract.schemas.base import AtLeastOneField, ListQuery, Schema

DELIVERY_STATUSES = ("pending", "delivered", "failed")
MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 500

_URL = {"validate": validate.Length(min=1, max=MAX_URL_LENGTH),
        "metadata": {"description": "`https://...`, or `http://...` to a host in WEBHOOK_ALLOW_HOSTS; it must not "
                                    "resolve to a loopback, private, link-local or otherwise non-public address "
                                    "(checked now and before every delivery)."}}
_EVENT_TYPES = {"validate": validate.Length(min=1, max=len(WEBHOOK_EVENT_TYPES)),
                "metadata": {"description": "The event types delivered to it."}}
_EVENT_TYPE = {"validate": validate.OneOf(WEBHOOK_EVENT_TYPES)}
_DESCRIPTION = {"validate": validate.Length(max=MAX_DESCRIPTION_LENGTH), "allow_none": True}
_ENABLED = {"metadata": {"description": "A disabled webhook gets no delivery of the events emitted while it is "
                                        "disabled, not even later."}}


class WebhookInput(Schema):
    url = fields.String(required=True, **_URL)
    event_types = fields.List(fields.String(**_EVENT_TYPE), required=True, **_EVENT_TYPES)
    description = fields.String(load_default=None, **_DESCRIPTION)
    enabled = fields.Boolean(load_default=True, **_ENABLED)


class WebhookPatch(AtLeastOneField):
    url = fields.String(**_URL)
    event_types = fields.List(fields.String(**_EVENT_TYPE), **_EVENT_TYPES)
    description = fields.String(**_DESCRIPTION)
    enabled = fields.Boolean(**_ENABLED)


class WebhookSchema(Schema):
    id = fields.UUID()
    url = fields.String()
    event_types = fields.List(fields.String())
    description = fields.String(allow_none=True)
    enabled = fields.Boolean()
    disabled_reason = fields.String(allow_none=True, metadata={
        "description": "Why webhook_service disabled it (every delivery failed for WEBHOOK_DISABLE_AFTER_HOURS); "
                       "null when enabled or disabled by an admin."})
    created_at = fields.AwareDateTime()
    updated_at = fields.AwareDateTime()


class CreatedWebhookSchema(WebhookSchema):
    secret = fields.String(metadata={"description": "`whsec_` + base64: the key of every delivery's signature. "
                                                   "Shown in this answer only; keep it."})


class DeliverySchema(Schema):
    id = fields.UUID()
    webhook_id = fields.UUID()
    event_id = fields.UUID(metadata={"description": "The event delivered, also its `webhook-id` header."})
    event_type = fields.String()
    status = fields.String(metadata={"description": "`pending` (waiting for its next attempt), `delivered` (a "
                                                    "2xx answer) or `failed` (out of attempts)."})
    attempts = fields.Integer(metadata={"description": "Every attempt, re-sends included."})
    last_status_code = fields.Integer(allow_none=True, metadata={
        "description": "The HTTP status of the last attempt; null when it got none (refused, timed out)."})
    last_error = fields.String(allow_none=True)
    next_attempt_at = fields.AwareDateTime(allow_none=True)
    delivered_at = fields.AwareDateTime(allow_none=True)
    created_at = fields.AwareDateTime()
    updated_at = fields.AwareDateTime()


class DeliveryListQuery(ListQuery):
    status = fields.String(validate=validate.OneOf(DELIVERY_STATUSES))
