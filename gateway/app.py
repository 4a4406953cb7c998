"""The HTTP gateway's app: the factory and the hooks every request passes through.

The gateway owns no database: it validates, then forwards each call over RPC
through the process's pool of started proxies (gateway/rpc_pool.py), by the
rules of gateway/calls.py. The routes are in gateway/routes/, one module per
resource; the OpenAPI document is built from their declarations
(gateway/openapi/).
"""
import logging
import logging.config
import re
import time
import uuid

from flask import Flask, current_app, g, request

from common.contract.caller import verify_token
from common.contract.errors import Unauthenticated
from common.contract.settings import load_settings
from common.observability import tracing
from common.observability.log import logging_config, set_request_id, set_service
from gateway import metrics, server_span
from gateway.batching import CreateBatches
from gateway.errors import register_error_handlers
from gateway.openapi import register_openapi
from gateway.routes import API, routes
from gateway.rpc_pool import RpcProxyPool

access_log = logging.getLogger("gateway.access")

MAX_BODY_BYTES = 64 * 1024
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def create_app(settings=None, rpc_pool=None):
    """The gateway app; `settings` default to the process's (common.contract.settings.load_settings)."""
    settings = settings or load_settings()
    logging.config.dictConfig(logging_config(settings.log_level))
    set_service("gateway")
    app = Flask(__name__)
    app.config["JWT_SECRET"] = settings.jwt_secret
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

    if tracing.configure_tracing("gateway", settings):
        server_span.instrument(app)  # first: the span holds every hook below
    register_error_handlers(app)
    app.before_request(_assign_request_id)
    app.before_request(_authenticate)
    app.after_request(_echo_request_id)
    app.after_request(_log_request)
    routes.register(app)
    register_openapi(app, routes)  # the document GET /api/v1/openapi.json serves, and /docs
    return app


def _assign_request_id():
    g.started = time.perf_counter()
    # When this request will have been answered: every RPC it makes carries it,
    # and no service commits its work after it (common/contract/context.py).
    g.deadline = time.time() + current_app.config["RPC_TIMEOUT"]
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
    set_request_id(g.request_id)


def _authenticate():
    """Every /api/v1 route not declared public needs `Authorization: Bearer <JWT>`; g.caller is who it names."""
    g.caller = None
    if not request.path.startswith(API + "/") or request.path in current_app.config["PUBLIC_PATHS"]:
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Send Authorization: Bearer <token>.", {"authorization": "missing"})
    g.caller = verify_token(token.strip(), current_app.config["JWT_SECRET"])


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
