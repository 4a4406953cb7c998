"""The channels besides email: SMS through a provider speaking Twilio's Messages API, and Web Push.

- `SmsClient` (`self.sms`): `send(to, body)` POSTs to
  {SMS_API_URL}/2010-04-01/Accounts/{SMS_ACCOUNT_SID}/Messages.json (form fields To, From, Body,
  HTTP Basic auth sid:token) and expects 201 with a JSON `sid`; without SMS_API_URL, to the
  local sink `make run` starts (scripts/sms_sink.py). Plain `requests`, not the `twilio`
  client: the Messages API is one form POST, and the client's base URL is Twilio's own, so a
  compatible provider or the local sink would need it patched.
- `WebPusher` (`self.pusher`): `send(endpoint, keys, payload)` through pywebpush: the payload
  encrypted for the subscription's keys (RFC 8291, aes128gcm) and signed with VAPID (RFC 8292,
  VAPID_PRIVATE_KEY, VAPID_SUBJECT), posted to the subscription's own endpoint (RFC 8030).

Both raise domain.ProviderAnswer for an answer that is not a success (domain classifies it),
and what `requests` raises when the other side cannot be reached. Both are green under eventlet.
"""
import base64
import os

import requests
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nameko.extensions import DependencyProvider

from common.contract.settings import settings_of
from notification_service.domain import ProviderAnswer

MESSAGES_PATH = "/2010-04-01/Accounts/{sid}/Messages.json"
PUSH_TTL_SECONDS = 24 * 3600  # how long a push service keeps a message for a browser that is offline
MAX_ANSWER = 500  # characters of a refusal kept


class PushNotConfigured(Exception):
    """No VAPID_PRIVATE_KEY: pushes wait (and retry) until one is configured."""


def load_vapid(setting):
    """The py_vapid key VAPID_PRIVATE_KEY names: a PEM file's path, or the key itself
    (base64url DER or raw, as py_vapid reads it); None when unset."""
    from py_vapid import Vapid

    if not setting:
        return None
    if os.path.exists(setting):
        return Vapid.from_file(setting)
    return Vapid.from_string(setting)


def public_key(vapid):
    """The application server key front ends subscribe with (base64url of the uncompressed point)."""
    raw = vapid.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class SmsClient(DependencyProvider):
    def setup(self):
        self.settings = settings_of(self.container)
        self.session = requests.Session()

    def get_dependency(self, worker_ctx):
        return self

    def send(self, to, body):
        """Send one SMS; the provider's message sid."""
        settings = self.settings
        sid = settings.sms_account_sid
        response = self.session.post(
            settings.sms_api_base + MESSAGES_PATH.format(sid=sid),
            data={"To": to, "From": settings.sms_from, "Body": body},
            auth=(sid, settings.sms_auth_token.get_secret_value()),
            timeout=settings.notify_http_timeout_seconds, allow_redirects=False)
        if response.status_code != 201:
            raise ProviderAnswer("sms", response.status_code, response.text[:MAX_ANSWER])
        return response.json().get("sid")

    def stop(self):
        self.session.close()

    kill = stop


class WebPusher(DependencyProvider):
    def setup(self):
        self.settings = settings_of(self.container)
        self.vapid = load_vapid(self.settings.vapid_private_key)
        self.session = requests.Session()

    def get_dependency(self, worker_ctx):
        return self

    def public_key(self):
        return public_key(self.vapid) if self.vapid is not None else None

    def send(self, endpoint, keys, payload):
        from pywebpush import WebPushException, webpush

        if self.vapid is None:
            raise PushNotConfigured("VAPID_PRIVATE_KEY is not set: pushes wait until it is")
        try:
            webpush({"endpoint": endpoint, "keys": keys}, data=payload, vapid_private_key=self.vapid,
                    vapid_claims={"sub": self.settings.vapid_claim_subject}, content_encoding="aes128gcm",
                    timeout=self.settings.notify_http_timeout_seconds, ttl=PUSH_TTL_SECONDS,
                    requests_session=self.session)
        except WebPushException as exc:
            if exc.response is None:
                raise
            raise ProviderAnswer("push", exc.response.status_code, exc.response.text[:MAX_ANSWER]) from None

    def stop(self):
        self.session.close()

    kill = stop
