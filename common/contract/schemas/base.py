"""What every resource's schemas share: the base Schema (no NUL), Money, addresses,
partial updates, list queries, times, and loading with errors that name each field.

The resources' own schemas are in the modules beside this one (customers, products,
orders, invoices, notifications): the one definition of each request and resource.
The gateway validates requests with the *Input schemas, services validate again with
the same classes (so `nameko shell` callers get the same rules), and services dump
resources with the resource schemas. Unknown fields are rejected (marshmallow's
default RAISE) so typos surface as 400s.
"""
import decimal
import functools
import uuid
from datetime import timezone

from marshmallow import Schema as BaseSchema
from marshmallow import ValidationError, fields, pre_load, validate, validates_schema

MONEY_PLACES = decimal.Decimal("0.01")
MAX_MONEY = decimal.Decimal("1000000000")


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
        from common.contract.errors import ValidationFailed

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


def text_field(max_length, **kwargs):
    return fields.String(validate=validate.Length(min=1, max=max_length), **kwargs)


class AddressSchema(Schema):
    line1 = text_field(200, required=True)
    line2 = fields.String(validate=validate.Length(max=200), allow_none=True)
    city = text_field(100, required=True)
    postal_code = text_field(20, required=True)
    country = text_field(100, required=True)


class AtLeastOneField(Schema):
    """A partial update: any of the fields, but not none of them."""

    @validates_schema
    def _not_empty(self, data, **kwargs):
        if not data:
            raise ValidationError("Send at least one field to change.", "_schema")


class ListQuery(Schema):
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None, validate=validate.Length(max=500))


class UtcDateTime(fields.AwareDateTime):
    """ISO-8601, loaded as UTC (no offset = UTC): Postgres refuses offsets beyond ±15:59."""

    def _deserialize(self, value, attr, data, **kwargs):
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(timezone.utc)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise ValidationError("Out of range.") from None


@functools.cache
def schema_instance(schema_class):
    """One instance per schema class, made once: building a marshmallow schema
    costs more than validating a small body with it. Loading and validating
    keep no state on the instance, so threads and greenthreads can share it."""
    return schema_class()


def load_or_raise(schema_class, data, **kwargs):
    """Validate `data` with `schema_class`; bad input becomes ValidationFailed naming each field."""
    from common.contract.errors import ValidationFailed

    schema = schema_instance(schema_class)
    if not isinstance(data, dict):
        raise ValidationFailed("The body must be a JSON object.", {"_schema": ["Not an object."]})
    try:
        return schema.load(data, **kwargs)
    except ValidationError as exc:
        raise ValidationFailed("Some fields are invalid.", exc.normalized_messages()) from None
