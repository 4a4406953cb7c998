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
"""
import functools
import hashlib
import secrets
import time
import uuid
from dataclasses import asdict, dataclass

import jwt

from common.contract.errors import Forbidden, Unauthenticated

ADMIN, CUSTOMER, SERVICE = "admin", "customer", "service"
TOKEN_ROLES = (ADMIN, CUSTOMER)  # "service" never comes from a token
CALLER_KEY = "caller"
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
