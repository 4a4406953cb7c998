"""Domain errors that cross RPC as themselves.

Nameko serializes an exception raised in a worker as its dotted path and
args; `deserialize_to_instance` registers each class so the caller gets the
same class back (not a bare RemoteError). The gateway maps `http_status` and
`code` straight into the contract's error shape.
"""
import json

from nameko.exceptions import deserialize_to_instance


class DomainError(Exception):
    http_status = 500
    code = "internal_error"

    def __init__(self, message, details=None):
        if isinstance(details, str):  # coming back over RPC, see below
            details = json.loads(details)
        details = details or {}
        # Nameko stringifies every non-string scalar in exception args, so the
        # details travel as JSON text and numbers stay numbers.
        super().__init__(message, json.dumps(details, default=str))
        self.message = message
        self.details = details

    def __str__(self):
        return self.message

    def to_dict(self):
        return {"code": self.code, "message": self.message, "details": self.details}


def error_body(code, message, details=None):
    """The body of every error answer: {"error": {"code", "message", "details"}}."""
    return {"error": {"code": code, "message": message, "details": details or {}}}


@deserialize_to_instance
class ValidationFailed(DomainError):
    """Bad input; details map each bad field to its messages."""
    http_status = 400
    code = "validation_failed"


@deserialize_to_instance
class NotFound(DomainError):
    http_status = 404
    code = "not_found"


@deserialize_to_instance
class InvoiceNotIssued(DomainError):
    """The order has no invoice (yet): it has not shipped, it is not the
    caller's, or there is no such order; one answer for all three, so order
    ids cannot be probed."""
    http_status = 404
    code = "invoice_not_issued"


@deserialize_to_instance
class AlreadyExists(DomainError):
    """A unique field (customer email, product sku) is taken."""
    http_status = 409
    code = "already_exists"


@deserialize_to_instance
class InsufficientStock(DomainError):
    http_status = 409
    code = "insufficient_stock"


@deserialize_to_instance
class UnknownCustomer(DomainError):
    http_status = 422
    code = "unknown_customer"


@deserialize_to_instance
class UnknownSku(DomainError):
    http_status = 422
    code = "unknown_sku"


@deserialize_to_instance
class Unprocessable(DomainError):
    """Well-formed input the domain cannot act on (e.g. mixed currencies)."""
    http_status = 422
    code = "unprocessable"


@deserialize_to_instance
class ServiceUnavailable(DomainError):
    """The broker, a service or the database cannot be reached."""
    http_status = 503
    code = "service_unavailable"


@deserialize_to_instance
class Overloaded(ServiceUnavailable):
    """The gateway process holds GATEWAY_MAX_IN_FLIGHT requests already: this
    one was answered at once, nothing done. Details: `retry_after_seconds`."""
    code = "overloaded"


@deserialize_to_instance
class RateLimited(DomainError):
    """The caller used up RATE_LIMIT: nothing done, and this answer not counted.
    Details: `limit` and `retry_after_seconds`."""
    http_status = 429
    code = "rate_limited"


@deserialize_to_instance
class UpstreamTimeout(DomainError):
    http_status = 504
    code = "upstream_timeout"


@deserialize_to_instance
class OutcomeUnknown(DomainError):
    """A write may or may not have happened, and nobody could learn which in
    time (the reply was lost, the commit's connection dropped). Details name
    the resource; from RPC_TIMEOUT seconds after this answer on, reading it
    gives an answer that no longer changes."""
    http_status = 504
    code = "outcome_unknown"


@deserialize_to_instance
class FailureNotRecorded(OutcomeUnknown):
    """An attempt's run (a create, a change to an order) failed and could not
    record that for the attempt (its database was unreachable), so another run
    of it may still make the resource or the change. The attempt is idempotent: the gateway sends it again until it
    is answered or the deadline comes (then 504 outcome_unknown)."""


@deserialize_to_instance
class DeadlineExceeded(DomainError):
    """The caller's deadline passed: the work was not started, or rolled back
    before COMMIT. Details: `deadline` (epoch seconds)."""
    http_status = 504
    code = "deadline_exceeded"


@deserialize_to_instance
class InvalidTransition(DomainError):
    """The resource's current state does not allow this change."""
    http_status = 409
    code = "invalid_transition"


@deserialize_to_instance
class VersionConflict(DomainError):
    """If-Match named a version the resource no longer has."""
    http_status = 412
    code = "version_conflict"


@deserialize_to_instance
class IdempotencyKeyReused(DomainError):
    """The Idempotency-Key was first used with a different request body."""
    http_status = 422
    code = "idempotency_key_reused"


@deserialize_to_instance
class StockBelowReserved(DomainError):
    """A stock change would leave fewer units than orders have reserved."""
    http_status = 409
    code = "stock_below_reserved"


@deserialize_to_instance
class Unauthenticated(DomainError):
    """No valid bearer token (HTTP), or no caller in the RPC context data."""
    http_status = 401
    code = "unauthenticated"


@deserialize_to_instance
class Forbidden(DomainError):
    """The caller is known but may not do this."""
    http_status = 403
    code = "forbidden"


# Raised by entrypoints on purpose: nameko logs these as expected, not as crashes.
EXPECTED_ERRORS = (DomainError,)


def error_from_dict(error):
    """The DomainError that `to_dict()` gave `error` ({code, message, details}),
    for an answer kept in a database and given again; an unknown code is a
    plain DomainError (500)."""
    by_code = {cls.code: cls for cls in DomainError.__subclasses__()}
    return by_code.get(error["code"], DomainError)(error["message"], error["details"])


def _by_name(cls=DomainError):
    """Every DomainError class by its name, subclasses of subclasses too."""
    found = {cls.__name__: cls}
    for subclass in cls.__subclasses__():
        found.update(_by_name(subclass))
    return found


def to_outcome(error):
    """One entry's failure in a batch answer (JSON): the error, and its class, which the
    code alone does not tell (FailureNotRecorded and OutcomeUnknown share one)."""
    if not isinstance(error, DomainError):
        error = DomainError("Something went wrong on our side.")
    return {"error": json.loads(json.dumps(error.to_dict(), default=str)), "kind": type(error).__name__}


def from_outcome(outcome):
    """The DomainError `to_outcome` described (a plain DomainError for an unknown kind)."""
    error = outcome["error"]
    return _by_name().get(outcome.get("kind"), DomainError)(error["message"], error["details"])
