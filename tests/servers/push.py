"""A Web Push service (RFC 8030) for tests: it hands out subscriptions as a browser's push service
would, and for each push it checks the VAPID token (RFC 8292: ES256, signed by the key in `k`,
`aud` its own origin, `exp` within 24 hours, a `sub` contact) and decrypts the payload (RFC 8291,
aes128gcm) with the subscriber's private key and auth secret (http_ece), as the browser would."""
import base64
import json
import os
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.harness.ports import free_port
from tests.servers.waiting import first_matching


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PushService:
    """`subscribe()` gives a PushSubscription's JSON (endpoint, keys) to register; `received` holds
    each push it took: {endpoint, payload (decrypted, parsed), claims}. Endpoints in `gone` are
    answered 410 (the browser unsubscribed); `outages` 503s come before any push is taken. A push
    whose token or encryption is wrong is answered 400/401 and kept in `rejected` with the reason."""

    def __init__(self, vapid_public_key=None):
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.vapid_public_key = vapid_public_key  # the key every token must be signed with, if given
        self.received, self.rejected = [], []
        self.gone, self.outages = set(), 0
        self._subscribers = {}  # endpoint -> (private key, auth secret)
        self._lock = threading.Lock()
        self._server = None

    def start(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = service.take(self.path, self.headers, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def subscribe(self):
        private_key = ec.generate_private_key(ec.SECP256R1())
        auth = os.urandom(16)
        endpoint = f"{self.origin}/push/{uuid.uuid4().hex}"
        self._subscribers[endpoint] = (private_key, auth)
        public = private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return {"endpoint": endpoint, "expirationTime": None, "keys": {"p256dh": b64url(public), "auth": b64url(auth)}}

    def take(self, path, headers, body):
        endpoint = self.origin + path
        with self._lock:
            if endpoint not in self._subscribers:
                return 404
            if endpoint in self.gone:
                return 410
            if self.outages > 0:
                self.outages -= 1
                return 503
        try:
            claims = self._check_vapid(headers)
            if headers.get("Content-Encoding") != "aes128gcm" or "TTL" not in headers:
                raise ValueError(f"Content-Encoding {headers.get('Content-Encoding')!r}, TTL {headers.get('TTL')!r}")
            private_key, auth = self._subscribers[endpoint]
            payload = json.loads(http_ece.decrypt(body, private_key=private_key, auth_secret=auth,
                                                  version="aes128gcm"))
        except Exception as exc:
            self.rejected.append({"endpoint": endpoint, "reason": repr(exc)})
            return 401 if isinstance(exc, jwt.InvalidTokenError) else 400
        self.received.append({"endpoint": endpoint, "payload": payload, "claims": claims})
        return 201

    def _check_vapid(self, headers):
        match = re.match(r"^vapid t=([^,\s]+),\s*k=([^,\s]+)$", headers.get("Authorization", ""))
        if match is None:
            raise jwt.InvalidTokenError(f"not a VAPID Authorization: {headers.get('Authorization')!r}")
        token, key = match.groups()
        if self.vapid_public_key is not None and key != self.vapid_public_key:
            raise jwt.InvalidTokenError("signed with another key than the application server's")
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
        claims = jwt.decode(token, public, algorithms=["ES256"], audience=self.origin,
                            options={"require": ["aud", "exp", "sub"]})
        if not claims["exp"] <= time.time() + 24 * 3600:
            raise jwt.InvalidTokenError("exp more than 24 hours ahead")
        if not str(claims["sub"]).startswith(("mailto:", "https:")):
            raise jwt.InvalidTokenError(f"sub {claims['sub']!r}")
        return claims

    def to(self, endpoint):
        return [push for push in self.received if push["endpoint"] == endpoint]

    def wait_for(self, predicate, timeout=20):
        return first_matching(self.received, predicate, timeout,
                              lambda: f"have {self.received[-5:]}, rejected {self.rejected[-5:]}")
