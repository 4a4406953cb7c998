"""The HTTP gateway's app: the factory and the hooks every request passes through.

The gateway owns no database: it validates, then forwards each call over RPC
through the process's pool of started proxies (gateway/rpc_pool.py), by the
rules of gateway/calls.py. The routes are in gateway/routes/, one module per
resource; the OpenAPI document is built from their declarations
(gateway/openapi/).

A request past GATEWAY_MAX_IN_FLIGHT never reaches the app: it is answered
503 overloaded at once, in front of it (gateway/edge/refusal.py). Every
other request passes, in order: its id and deadline; who is calling (a
bearer token or an X-API-Key, verified, or nobody); the rate limit of that
caller (or of the client address when nobody was verified); then, for a
protected route, the refusal of an unverified caller. So a flood of bad
credentials is limited too, and a token that fails verification never names
whose counter it uses. CORS (Flask-Cors) adds its headers to every answer to
an allowed origin, errors and refusals included.
"""
import logging
import logging.config
import time
import uuid

from flask import Flask, current_app, g, request
from flask_cors import CORS

from common.contract.caller import verify_token
from common.contract.errors import RateLimited, Unauthenticated
from common.contract.settings import load_settings
from common.observability import tracing
from common.observability.log import logging_config, set_request_id, set_service
from gateway import calls, metrics, server_span
from gateway.batching import CreateBatches
from gateway.edge import refusal
from gateway.edge.api_keys import ApiKeyCache
from gateway.edge.breakers import Breakers
from gateway.edge.rate_limit import RateLimiter
from gateway.errors import register_error_handlers
from gateway.http import request_id
from gateway.openapi import register_openapi
from gateway.routes import API, routes
from gateway.routes.declare import UNLIMITED_PATHS
from gateway.rpc_pool import RpcProxyPool

access_log = logging.getLogger("gateway.access")

MAX_BODY_BYTES = 64 * 1024
API_KEY_HEADER = "X-API-Key"
CORS_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
CORS_REQUEST_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "If-Match", API_KEY_HEADER,
                        "X-Request-ID"]
CORS_EXPOSED_HEADERS = ["ETag", "Location", "X-Request-ID", "Retry-After", "RateLimit-Limit",
                        "RateLimit-Remaining", "RateLimit-Reset"]


def create_app(settings=None, rpc_pool=None):
    """The gateway app; `settings` default to the process's (common.contract.settings.load_settings)."""
    settings = settings or load_settings()
    logging.config.dictConfig(logging_config(settings.log_level))
    set_service("gateway")
    app = Flask(__name__)
    app.config["JWT_SECRET"] = settings.jwt_secret
    app.config["CALLER_SIGNING_KEY"] = settings.caller_signing_keys[0]  # signs each batched create's caller
    app.config["RPC_TIMEOUT"] = settings.rpc_timeout
    metrics.configure(settings.metrics_port != 0)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["PUBLIC_PATHS"] = routes.public_paths()
    app.json.sort_keys = False
    app.extensions["rpc_pool"] = rpc_pool or RpcProxyPool(
        settings.nameko_config(), timeout=settings.rpc_timeout, max_size=settings.rpc_pool_size)
    if settings.batch_max > 1:
        app.extensions["create_batches"] = CreateBatches(app.extensions["rpc_pool"], settings.batch_max,
                                                         settings.batch_in_flight)

    cors_options = _configure_edge(app, settings)

    if tracing.configure_tracing("gateway", settings):
        server_span.instrument(app)  # first: the span holds every hook below
    register_error_handlers(app)
    app.before_request(_assign_request_id)
    app.before_request(_identify)
    app.before_request(_limit)
    app.before_request(_require_caller)
    app.after_request(_rate_limit_headers)
    app.after_request(_echo_request_id)
    app.after_request(_log_request)
    routes.register(app)
    register_openapi(app, routes)  # the document GET /api/v1/openapi.json serves, and /docs
    # Last, around everything: a shed request is answered before Flask sees it.
    app.wsgi_app = refusal.refusing(app.wsgi_app, refusal.Refusal(app, settings.gateway_max_in_flight, cors_options))
    return app


def _configure_edge(app, settings):
    """API keys, rate limits, circuit breakers and CORS, from the settings (gateway/edge/); the options
    CORS was set up with (None: no CORS), which the answer to a shed request applies too."""
    app.extensions["api_keys"] = ApiKeyCache(
        settings.api_key_cache_seconds,
        lambda prefix, digest, caller: calls.read("customer_service", "verify_api_key", prefix, digest,
                                                  as_caller=caller))
    app.extensions["rate_limiter"] = (RateLimiter(settings.rate_limit, settings.redis_url)
                                      if settings.rate_limit else None)
    app.extensions["breakers"] = Breakers(settings.breaker_failures, settings.breaker_reset_seconds)
    if not settings.cors_origins:
        return None
    options = {"origins": list(settings.cors_origins), "methods": CORS_METHODS, "allow_headers": CORS_REQUEST_HEADERS,
               "expose_headers": CORS_EXPOSED_HEADERS, "max_age": 600}
    CORS(app, **options)
    return options


def _assign_request_id():
    g.started = time.perf_counter()
    # When this request will have been answered: every RPC it makes carries it,
    # and no service commits its work after it (common/contract/context.py).
    g.deadline = time.time() + current_app.config["RPC_TIMEOUT"]
    g.request_id = request_id(request.headers.get("X-Request-ID", ""))
    set_request_id(g.request_id)


def _protected():
    """Whether the request needs a caller: every /api/v1 route not declared public (CORS preflights aside)."""
    return (request.method != "OPTIONS" and request.path.startswith(API + "/")
            and request.path not in current_app.config["PUBLIC_PATHS"])


def _identify():
    """g.caller: who a valid bearer token or X-API-Key names (the key wins when both are sent);
    g.auth_error: why the credentials sent are not valid, raised by _require_caller."""
    g.caller = g.auth_error = None
    if not _protected():
        return
    try:
        key = request.headers.get(API_KEY_HEADER)
        if key is not None:
            g.caller = current_app.extensions["api_keys"].caller_for(key.strip())
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(f"Send Authorization: Bearer <token> or {API_KEY_HEADER}.",
                                  {"authorization": "missing"})
        g.caller = verify_token(token.strip(), current_app.config["JWT_SECRET"])
    except Unauthenticated as exc:
        g.auth_error = exc


def _limit():
    """RATE_LIMIT per verified caller (else per client address); 429 past it, that answer not counted."""
    limiter = current_app.extensions["rate_limiter"]
    if limiter is None or request.method == "OPTIONS" or request.path in UNLIMITED_PATHS:
        return
    caller = g.caller
    caller_key = f"caller:{caller.sub}" if caller is not None else f"address:{request.remote_addr}"
    g.rate_verdict = verdict = limiter.check(caller_key)
    if verdict is not None and not verdict.allowed:
        metrics.count_rate_limited()
        raise RateLimited(f"Too many requests: the limit is {limiter.expression} per caller.", {
            "limit": limiter.expression, "retry_after_seconds": int(verdict.headers()["Retry-After"])})


def _require_caller():
    if g.auth_error is not None:
        raise g.auth_error


def _rate_limit_headers(response):
    verdict = g.get("rate_verdict")
    if verdict is not None:
        response.headers.update({name: value for name, value in verdict.headers().items() if name != "Retry-After"})
    return response


def _echo_request_id(response):
    response.headers["X-Request-ID"] = g.get("request_id") or uuid.uuid4().hex
    return response


def _log_request(response):
    """One access line per request, in the same JSON shape as every other line, and its metrics."""
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    metrics.record_request(request.method, request.url_rule, response.status_code, seconds)
    duration_ms = round(seconds * 1000, 2)
    access_log.info("%s %s %s", request.method, request.path, response.status_code, extra={
        "method": request.method, "path": request.path, "status": response.status_code,
        "duration_ms": duration_ms})
    return response
