"""Notifications: statuses, kinds, the list query and what a notification looks like."""
from marshmallow import fields, validate

from common.contract.schemas.base import ListQuery, Schema

NOTIFICATION_STATUSES = ("queued", "sent", "failed")
NOTIFICATION_CHANNELS = ("email", "sms", "push")
# What a notification tells the customer, or the staff (stock_low); notification_service.domain
# decides which event makes which.
CUSTOMER_KINDS = ("order_confirmation", "order_shipped", "order_delivered", "order_cancelled")
NOTIFICATION_KINDS = (*CUSTOMER_KINDS, "stock_low")


class NotificationListQuery(ListQuery):
    order_id = fields.UUID()
    status = fields.String(validate=validate.OneOf(NOTIFICATION_STATUSES))


class NotificationSchema(Schema):
    id = fields.UUID()
    order_id = fields.UUID(allow_none=True)
    customer_id = fields.UUID(allow_none=True, metadata={"description": "Whom it is for; null for a staff alert."})
    event_id = fields.UUID(metadata={"description": "The event that caused it: one notification per "
                                                    "(event, recipient, channel)."})
    channel = fields.String(metadata={"description": "`email`, `sms` or `push`."})
    event_type = fields.String(metadata={"description": "That event's type, e.g. `order_status_changed`."})
    kind = fields.String(metadata={"description": "What the email says."})
    recipient = fields.String(metadata={"description": "The email address, the phone number (E.164) or the "
                                                       "push subscription's endpoint it is sent to."})
    subject = fields.String()
    message_id = fields.String(allow_none=True, metadata={"description": "The email's Message-ID: the same on "
                                                                         "every attempt (null for SMS and push)."})
    status = fields.String(metadata={"description": "`queued` (waiting for its next attempt), `sent` (the mail "
                                                    "server, SMS provider or push service took it) or `failed` "
                                                    "(refused, or out of attempts)."})
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True, metadata={"description": "What the mail server (or the "
                                                                         "connection) said on the last failed "
                                                                         "attempt."})
    next_attempt_at = fields.AwareDateTime(allow_none=True, metadata={"description": "When it is tried next "
                                                                                     "(`queued` only)."})
    created_at = fields.AwareDateTime()
    updated_at = fields.AwareDateTime()
    sent_at = fields.AwareDateTime(allow_none=True)
