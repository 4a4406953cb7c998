"""Webhook rules: plain Python, no I/O.

Which URLs a webhook may have and which addresses it may be sent to, what
its secret looks like, when a failed attempt is tried again, when a webhook
that only fails is disabled, and how a delivery's status may move:

    pending -> delivered   a 2xx answer within WEBHOOK_TIMEOUT_SECONDS
    pending -> failed      out of attempts (WEBHOOK_MAX_ATTEMPTS in this round)
    any     -> pending     an admin's re-send: a new round of attempts, the same record
"""
import base64
import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from common.contract.errors import InvalidTransition, ValidationFailed

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks asks for 24 to 64
MAX_ERROR_LENGTH = 500
MAX_HOST_LENGTH = 253  # DNS's limit
# The jitter spreads the retries of many deliveries that failed together (a subscriber's outage)
# over +-JITTER of each delay, so they do not all come back at once.
JITTER = 0.2
# Cloud metadata services: never a subscriber, whatever WEBHOOK_ALLOW_HOSTS says of their names.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254"))


def new_secret(random_bytes):
    """A webhook's signing secret from SECRET_BYTES random bytes: `whsec_` + base64, as Standard Webhooks write it."""
    if len(random_bytes) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} random bytes")
    return SECRET_PREFIX + base64.b64encode(random_bytes).decode()


def _url_error(message):
    return ValidationFailed("The webhook URL is not allowed.", {"url": [message]})


@dataclass(frozen=True)
class Target:
    """Where a URL points: its scheme, host (lower case, IPv6 without brackets) and port."""
    scheme: str
    host: str
    port: int

    def allowed(self, allow_hosts):
        return self.host in allow_hosts


def check_url(url, allow_hosts):
    """The Target of `url`, or ValidationFailed naming `url`: https, or http to a host in
    `allow_hosts` (WEBHOOK_ALLOW_HOSTS); a host, no user name or password (they would travel
    in every request and show in the webhook's URL)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _url_error(f"Not a URL: {exc}.") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").rstrip(".")
    if scheme not in ("http", "https"):
        raise _url_error("Must be an https URL (or http to a host in WEBHOOK_ALLOW_HOSTS).")
    if not host or len(host) > MAX_HOST_LENGTH:
        raise _url_error(f"Must name a host (of at most {MAX_HOST_LENGTH} characters).")
    if port == 0:
        raise _url_error("Port 0 is no port to deliver to.")
    if parts.username is not None or parts.password is not None:
        raise _url_error("Must not carry a user name or password: the signature authenticates deliveries.")
    target = Target(scheme, host, port or (443 if scheme == "https" else 80))
    if scheme == "http" and not target.allowed(allow_hosts):
        raise _url_error(f"http is allowed only to the hosts in WEBHOOK_ALLOW_HOSTS; {host} is not one: use https.")
    return target


def refused_address(address):
    """Why a subscriber may not be reached at `address` (a string), or None when it may:
    only public unicast addresses, never a metadata service's."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone index is no part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address"
    for kind in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return f"{ip} is a {kind.replace('_', '-')} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def check_addresses(target, addresses, allow_hosts):
    """The addresses of `target` that may be connected to (all of them), or ValidationFailed naming
    `url`: one that may not is enough to refuse the host, unless it is in `allow_hosts`."""
    if not addresses:
        raise _url_error(f"{target.host} does not resolve to any address (in time).")
    if target.allowed(allow_hosts):
        return addresses
    for address in addresses:
        reason = refused_address(address)
        if reason is not None:
            raise _url_error(f"{target.host} resolves to {address}: {reason}; only public addresses "
                             "(or the hosts in WEBHOOK_ALLOW_HOSTS) can be subscribers.")
    return addresses


def retry_delay(round_attempt, base_seconds, jitter):
    """Seconds after failed attempt number `round_attempt` (1, 2, ... in this round) before the
    next: base, 2 x base, 4 x base, ..., each moved by up to +-JITTER; `jitter` is a random
    number in [0, 1)."""
    return base_seconds * 2 ** (round_attempt - 1) * (1 - JITTER + 2 * JITTER * jitter)


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: the HTTP status (None: no answer) and what went wrong, if anything."""
    status_code: int | None
    error: str | None = None

    @property
    def delivered(self):
        return self.status_code is not None and 200 <= self.status_code <= 299


@dataclass(frozen=True)
class Attempt:
    """A delivery after one attempt."""
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None


def after_attempt(delivery, outcome, now, base_seconds, max_attempts, jitter):
    """The delivery's state after an attempt that got `outcome`: delivered on a 2xx; else
    pending again after `retry_delay`, until `max_attempts` attempts of this round failed."""
    attempts = delivery.attempts + 1
    if outcome.delivered:
        return Attempt(DELIVERED, attempts, outcome.status_code, None, None, now)
    error = clip(outcome.error or f"HTTP {outcome.status_code}")
    round_attempt = attempts - delivery.attempts_before_resend
    if round_attempt >= max_attempts:
        return Attempt(FAILED, attempts, outcome.status_code, error, None, None)
    delay = timedelta(seconds=retry_delay(round_attempt, base_seconds, jitter))
    return Attempt(PENDING, attempts, outcome.status_code, error, now + delay, None)


def should_disable(failing_since, now, disable_after_hours):
    """Whether a webhook whose every attempt has failed since `failing_since` is to be disabled."""
    return failing_since is not None and now - failing_since >= timedelta(hours=disable_after_hours)


def disabled_reason(failing_since, last_error, disable_after_hours):
    return clip(f"Every delivery failed for {disable_after_hours:g} hours (since {failing_since.isoformat()}); "
                f"the last: {last_error}. PATCH enabled: true to deliver the events emitted from then on.")


def check_can_resend(webhook):
    """A delivery can be sent again while its webhook is enabled (a disabled one gets nothing)."""
    if not webhook.enabled:
        raise InvalidTransition("This webhook is disabled: enable it before sending a delivery again.",
                                {"webhook_id": str(webhook.id), "enabled": False})


def clip(text):
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_ERROR_LENGTH else text[:MAX_ERROR_LENGTH - 3] + "..."
