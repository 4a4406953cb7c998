"""Customers: what POST and PATCH take, what a customer looks like, and their Web Push subscriptions."""
import phonenumbers
from marshmallow import ValidationError, fields, post_load, validate

from common.contract.schemas.base import AddressSchema, AtLeastOneField, Schema, text_field

CHANNELS = ("email", "sms", "push")
DEFAULT_PREFERENCES = {"email": True, "sms": False, "push": False}
MAX_ENDPOINT = 2048  # characters of a push endpoint URL
MAX_PUSH_KEY = 200  # characters of a base64url key (p256dh is 87, auth 22)
BASE64URL = r"^[A-Za-z0-9_-]+={0,2}\Z"


class Phone(fields.String):
    """A phone number in E.164 (+14155550123), checked with the phonenumbers library (Google's
    libphonenumber data); spaces, dashes and brackets are accepted and dropped."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        error = "A phone number in E.164 form, with its country code: +14155550123."
        if not text.strip().startswith("+") or len(text) > 40:
            raise ValidationError(error)
        try:
            number = phonenumbers.parse(text, None)
        except phonenumbers.NumberParseException:
            raise ValidationError(error) from None
        if not phonenumbers.is_valid_number(number):
            raise ValidationError(error)
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


class StrictBoolean(fields.Boolean):
    """JSON true or false; not "yes", not 1."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


def _strict_boolean():
    return StrictBoolean()


class PreferencesPatch(Schema):
    """Which channels the customer hears about their orders on; the ones left out stay as they were."""
    email = _strict_boolean()
    sms = _strict_boolean()
    push = _strict_boolean()


class PreferencesSchema(Schema):
    email = fields.Boolean()
    sms = fields.Boolean()
    push = fields.Boolean()


class CustomerInput(Schema):
    name = text_field(200, required=True)
    email = fields.Email(required=True, validate=validate.Length(max=254))
    shipping_address = fields.Nested(AddressSchema, allow_none=True)
    phone = Phone(allow_none=True)
    notification_preferences = fields.Nested(PreferencesPatch)


class CustomerPatch(AtLeastOneField):
    name = text_field(200)
    email = fields.Email(validate=validate.Length(max=254))
    shipping_address = fields.Nested(AddressSchema, allow_none=True)
    phone = Phone(allow_none=True)
    notification_preferences = fields.Nested(PreferencesPatch)


class PushKeys(Schema):
    p256dh = fields.String(required=True, validate=[validate.Length(min=1, max=MAX_PUSH_KEY),
                                                    validate.Regexp(BASE64URL, error="Base64url.")])
    auth = fields.String(required=True, validate=[validate.Length(min=1, max=MAX_PUSH_KEY),
                                                  validate.Regexp(BASE64URL, error="Base64url.")])


class PushSubscriptionInput(Schema):
    """The browser's PushSubscription as its toJSON() gives it (endpoint, expirationTime, keys)."""
    endpoint = fields.Url(required=True, schemes={"https", "http"}, require_tld=False,
                          validate=validate.Length(max=MAX_ENDPOINT))
    keys = fields.Nested(PushKeys, required=True)
    # Accepted and ignored: the push service says when a subscription has gone (404/410).
    expirationTime = fields.Raw(load_only=True, allow_none=True)  # noqa: N815 (the browser's name)

    @post_load
    def _drop_expiration(self, data, **kwargs):
        data.pop("expirationTime", None)
        return data


class PushSubscriptionSchema(Schema):
    id = fields.UUID()
    endpoint = fields.String()
    created_at = fields.AwareDateTime()


class PushSubscriptionWithKeys(PushSubscriptionSchema):
    """A subscription as customer events carry it: with the keys its pushes are encrypted for."""
    keys = fields.Method("_keys")

    def _keys(self, subscription):
        return {"p256dh": subscription.p256dh, "auth": subscription.auth}


class CustomerSchema(Schema):
    id = fields.UUID()
    name = fields.String()
    email = fields.String()
    shipping_address = fields.Nested(AddressSchema, allow_none=True)
    phone = fields.String(allow_none=True)
    notification_preferences = fields.Nested(PreferencesSchema)
    push_subscriptions = fields.List(fields.Nested(PushSubscriptionSchema))
    orders_count = fields.Integer()
    created_at = fields.AwareDateTime()
    updated_at = fields.AwareDateTime()


class CustomerEventSchema(CustomerSchema):
    """The data of customer_created / customer_updated: the customer, and each push subscription's keys."""
    push_subscriptions = fields.List(fields.Nested(PushSubscriptionWithKeys))
