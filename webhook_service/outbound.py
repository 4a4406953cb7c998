"""Sending one delivery: resolve, check, sign, POST (requests), within WEBHOOK_TIMEOUT_SECONDS.

The host is resolved and every address it resolves to checked (domain.check_addresses)
before each attempt, and the request then goes to the checked address itself
(`PinnedAddressAdapter`): nothing resolves the name again between the check and the
connect, so a DNS answer that changes in between (a rebinding attack's very short TTL)
cannot aim a delivery at our own network. TLS still verifies the certificate against the
URL's host name (SNI and hostname check), and the Host header names it.

No proxy from the environment (it would connect elsewhere than the checked address), no
redirects followed (a 3xx is a failed attempt), and one deadline for the whole attempt,
connecting and the answer included: a subscriber that trickles bytes cannot hold a send.
"""
import socket
from urllib.parse import urlsplit

import eventlet
import requests
from requests.adapters import HTTPAdapter
from standardwebhooks import Webhook

from common.contract.errors import ValidationFailed
from webhook_service import domain

USER_AGENT = "order-management-webhooks/1"
# What of a refusal's answer goes into last_error.
ANSWER_EXCERPT_BYTES = 200


def resolve(target, timeout_seconds):
    """Every address `target`'s host resolves to (an IP literal resolves to itself), in the
    resolver's order of preference; none when it does not resolve within `timeout_seconds`."""
    with eventlet.Timeout(timeout_seconds, False):
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            return []
        return list(dict.fromkeys(info[4][0] for info in infos))
    return []


def checked_target(url, allow_hosts, timeout_seconds):
    """(Target, the addresses it may be reached at) of `url`, or ValidationFailed naming `url`."""
    target = domain.check_url(url, allow_hosts)
    return target, domain.check_addresses(target, resolve(target, timeout_seconds), allow_hosts)


def signed_headers(secret, event_id, body, now):
    """The Standard Webhooks headers of one attempt: webhook-id (the event's id, the same on every
    attempt), webhook-timestamp (this attempt's) and webhook-signature, signed by the library."""
    signature = Webhook(secret).sign(msg_id=str(event_id), timestamp=now, data=body)
    return {"webhook-id": str(event_id), "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature, "Content-Type": "application/json", "User-Agent": USER_AGENT}


class PinnedAddressAdapter(HTTPAdapter):
    """Connects to `address` whatever the URL's host resolves to now; TLS verifies the URL's host name."""

    def __init__(self, address):
        self.address = address
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = pool_kwargs["assert_hostname"] = host_params["host"]
        return {**host_params, "host": self.address}, pool_kwargs

    def send(self, request, *args, **kwargs):
        request.headers["Host"] = urlsplit(request.url).netloc  # not the address urllib3 would name
        return super().send(request, *args, **kwargs)


def post(url, address, headers, body, timeout_seconds, verify=True):
    """POST `body` to `url` at `address`; the HTTP status and, for a non-2xx, what the answer began with."""
    with requests.Session() as session:
        session.trust_env = False  # no proxy or .netrc from the environment
        session.mount("http://", PinnedAddressAdapter(address))
        session.mount("https://", PinnedAddressAdapter(address))
        with session.post(url, data=body.encode(), headers=headers, timeout=(timeout_seconds, timeout_seconds),
                          allow_redirects=False, stream=True, verify=verify) as response:
            if 200 <= response.status_code <= 299:
                return response.status_code, None
            excerpt = response.raw.read(ANSWER_EXCERPT_BYTES, decode_content=False).decode("utf-8", "replace")
            return response.status_code, excerpt


def deliver(url, allow_hosts, event_id, body, secret, now, timeout_seconds, verify=True):
    """One attempt, within `timeout_seconds` from resolving to the answer: a domain.Outcome."""
    timer = eventlet.Timeout(timeout_seconds)
    try:
        _, addresses = checked_target(url, allow_hosts, timeout_seconds)
        status, excerpt = post(url, addresses[0], signed_headers(secret, event_id, body, now), body,
                               timeout_seconds, verify)
    except ValidationFailed as exc:
        return domain.Outcome(None, "refused: " + "; ".join(exc.details["url"]))
    except eventlet.Timeout as exc:
        if exc is not timer:
            raise
        return domain.Outcome(None, f"no answer within {timeout_seconds:g} s")
    except (requests.RequestException, OSError) as exc:
        return domain.Outcome(None, _described(exc))
    finally:
        timer.cancel()
    if excerpt is None:
        return domain.Outcome(status)
    return domain.Outcome(status, f"HTTP {status}: {excerpt}" if excerpt.strip() else f"HTTP {status}")


def _described(exc):
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return f"connection failed: {exc.__class__.__name__}: {_root_cause(exc)}"
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__


def _root_cause(exc):
    """The innermost reason requests and urllib3 wrapped (a refused connection, a bad certificate)."""
    for _ in range(5):
        inner = exc.__cause__ or next((arg for arg in exc.args if isinstance(arg, BaseException)), None)
        if inner is None:
            break
        exc = inner
    return str(exc) or exc.__class__.__name__
