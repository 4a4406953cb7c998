"""Who is calling: bearer tokens (PyJWT) and the caller identity sent over RPC.

The gateway turns a verified token into a `Caller` and sends it in Nameko
context data under "caller"; every service reads it back with
`common.kit.providers.CallerProvider` and enforces its own rules, so RPC callers (nameko shell,
other services) meet the same checks as HTTP clients. A service calling
another through `ServiceRpcProxy` is the caller itself (role "service"):
it has already checked the end user.

Machine clients may send `X-API-Key` instead of a token: a key made by
customer_service (`new_api_key`), shown once and stored only as its SHA-256
digest; the gateway digests what a client sends (`api_key_digest`) and asks
customer_service which key, if any, has that digest. A key acts as the
Caller `api_key_caller` makes of it.

The caller in the context data is signed by whoever puts it there (the
gateway, `make shell`, a service calling another): `sign_caller`, an
HMAC-SHA256 with CALLER_SIGNING_KEY over the caller, the method called
("service.method"), a digest of the call's arguments and the time of
signing. Every service checks it with `verify_caller` before an entrypoint
runs (common/kit/rpc.py), so a process that can reach the broker but has not
the key cannot speak as anyone, and a signed context copied from one call
is worth nothing for another call, other arguments or, past
CALLER_SIGNATURE_MAX_AGE_SECONDS, at all.
"""
import functools
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import asdict, dataclass

import jwt

from common.contract.errors import Forbidden, Unauthenticated

ADMIN, CUSTOMER, SERVICE = "admin", "customer", "service"
TOKEN_ROLES = (ADMIN, CUSTOMER)  # "service" never comes from a token
CALLER_KEY = "caller"
# Added to the caller's context by sign_caller: when (Unix milliseconds) and the HMAC, hex.
SIGNED_AT, SIGNATURE = "signed_at", "signature"
# What a batch entry's caller is signed for: the entry is one create_order (order_service.create_orders).
ENTRY_METHOD = "order_service.create_order"
ALGORITHM = "HS256"
API_KEY_PREFIX = "oms_"  # says what a leaked string is (secret scanners match on it)
API_KEY_PREFIX_LENGTH = 8  # the `prefix` shown in lists: enough to tell keys apart, too little to use
API_KEY_BYTES = 32


@dataclass(frozen=True)
class Caller:
    sub: str
    role: str
    customer_id: str | None = None

    @property
    def is_customer(self):
        return self.role == CUSTOMER

    def owns(self, customer_id):
        """Whether this caller may see the records of `customer_id`."""
        return not self.is_customer or str(customer_id) == self.customer_id

    def narrow_to_own(self, filters):
        """Narrow list `filters` (with an optional `customer_id`) to what this caller may
        see; False when they asked for someone else's records, so nothing can match."""
        if not self.is_customer:
            return True
        own = uuid.UUID(self.customer_id)
        if filters.get("customer_id", own) != own:
            return False
        filters["customer_id"] = own
        return True

    def require(self, *roles):
        if self.role not in roles:
            raise Forbidden("You may not do this.", {"role": self.role, "allowed_roles": list(roles)})

    def to_context(self):
        return asdict(self)

    @classmethod
    def from_context(cls, data):
        if not isinstance(data, dict) or data.get("role") not in (*TOKEN_ROLES, SERVICE):
            return None
        return cls(sub=str(data.get("sub") or data["role"]), role=data["role"],
                   customer_id=data.get("customer_id"))


def issue_token(secret, sub, role, customer_id=None, ttl_seconds=3600):
    now = int(time.time())
    claims = {"sub": sub, "role": role, "iat": now, "exp": now + ttl_seconds}
    if customer_id is not None:
        claims["customer_id"] = str(customer_id)
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(token, secret):
    """The Caller a token names; Unauthenticated saying why if it is not valid."""
    try:
        caller, expires_at = _verified(token, secret)
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("The token has expired.", {"token": "expired"}) from None
    except jwt.InvalidSignatureError:
        raise Unauthenticated("The token's signature is not valid.", {"token": "bad signature"}) from None
    except jwt.InvalidTokenError as exc:
        raise Unauthenticated("The token is not valid.", {"token": str(exc)}) from None
    if expires_at <= time.time():  # a token verified earlier, expired since
        raise Unauthenticated("The token has expired.", {"token": "expired"})
    return caller


# A client sends the same token with every request: checking its signature
# and claims once per token, not per request, was 5% of the gateway's CPU.
# Only valid tokens are kept (a failed check raises); expiry is checked on every use.
@functools.lru_cache(maxsize=4096)
def _verified(token, secret):
    claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub", "role"]})
    role = claims["role"]
    if role not in TOKEN_ROLES:
        raise Unauthenticated("The token's role is not one of admin, customer.", {"role": str(role)})
    customer_id = claims.get("customer_id")
    if role == CUSTOMER:
        try:
            customer_id = str(uuid.UUID(str(customer_id)))
        except ValueError:
            raise Unauthenticated("A customer token needs a customer_id claim.", {"customer_id": "missing"}) from None
    return Caller(sub=str(claims["sub"]), role=role, customer_id=customer_id), int(claims["exp"])


def new_api_key():
    """A fresh key: the prefix and 256 random bits, URL-safe."""
    return API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_BYTES)


def api_key_prefix(key):
    return key[:API_KEY_PREFIX_LENGTH]


def api_key_digest(key):
    """What is stored of a key, and compared: its SHA-256, hex. A key has 256 random bits,
    so a fast hash is enough (a slow one, as for passwords, guards guessable secrets)."""
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_caller(key_id, role, customer_id=None):
    """Who a key acts as: its role (and customer), named by the key's id."""
    return Caller(sub=f"api-key:{key_id}", role=role, customer_id=customer_id)


def required(caller):
    """The caller, or Unauthenticated: every data RPC needs one."""
    if caller is None:
        raise Unauthenticated(
            "This RPC needs a caller in the context data (see docs/operations.md: nameko shell).",
            {"context_data": CALLER_KEY})
    return caller


# ---- the signed caller context ---------------------------------------------------

def arguments_digest(body):
    """What a signature covers of a call's arguments: the SHA-256 (hex) of the request's
    body as it is sent (bytes), so neither side serialises the arguments a second time."""
    return hashlib.sha256(body).hexdigest()


def entry_digest(data, idempotency_key, attempt_id):
    """The digest of one batch entry's own arguments: canonical JSON of what makes the entry
    (one order body, small), since the entry is not a message body of its own."""
    canonical = json.dumps([data, idempotency_key, attempt_id], sort_keys=True, separators=(",", ":"),
                           default=str)
    return arguments_digest(canonical.encode())


def sign_caller(key, context, method, digest, now=None):
    """`context` (a caller's context data) signed with `key` (bytes) for a call of `method`
    ("service.method") whose arguments have `digest`; unchanged when it names no caller
    (the callee then refuses it, as any unsigned one)."""
    caller = Caller.from_context(context)
    if caller is None:
        return context
    signed_at = int((time.time() if now is None else now) * 1000)
    return {**caller.to_context(), SIGNED_AT: signed_at, SIGNATURE: _mac(key, caller, method, digest, signed_at)}


def verify_caller(keys, context, method, digest, max_age_seconds, now=None):
    """The Caller `context` names if one of `keys` signed it for `method` with these
    arguments less than `max_age_seconds` ago (or ahead: clocks differ a little);
    Unauthenticated saying which rule failed otherwise. The key list rotates a key:
    the first one signs, every one is accepted."""
    caller = Caller.from_context(context)
    if caller is None:
        raise _refused("The RPC carries no caller (who is calling) in its context data.", "missing")
    signed_at, signature = context.get(SIGNED_AT), context.get(SIGNATURE)
    if signed_at is None or signature is None:
        raise _refused("The RPC's caller is not signed.", "missing")
    if not isinstance(signed_at, int) or isinstance(signed_at, bool) or not isinstance(signature, str):
        raise _refused("The RPC's caller signature is malformed.", "bad")
    age = (time.time() if now is None else now) - signed_at / 1000
    if abs(age) > max_age_seconds:
        raise _refused(f"The RPC's caller was signed {age:.0f} s ago; at most {max_age_seconds:g} s are "
                       "accepted (are the hosts' clocks in sync?).", "stale")
    if not any(hmac.compare_digest(_mac(key, caller, method, digest, signed_at), signature) for key in keys):
        raise _refused("The RPC's caller signature does not match this call (another key, method, arguments "
                       "or caller).", "bad")
    return caller


def _mac(key, caller, method, digest, signed_at):
    # JSON of a list: unambiguous whatever the strings hold (a `sub` may contain any character).
    message = json.dumps([caller.sub, caller.role, caller.customer_id, method, digest, signed_at])
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _refused(message, why):
    return Unauthenticated(message, {"caller_signature": why})
