"""What is not the API's resources: health, the gateway's metrics and the OpenAPI document."""
from flask import Response, current_app, jsonify

from common.contract.errors import DomainError, NotFound, ServiceUnavailable, UpstreamTimeout, error_body
from common.contract.services import SERVICE_NAMES
from gateway import metrics
from gateway.calls import GATEWAY_CALLER, read
from gateway.routes.declare import SPEC_PATH, routes

DATABASE_DOWN = "database unreachable"


@routes.get("/health", tag="health", response="Health", public=True, other_responses={503: "Health"})
def health():
    checks = {"broker": "ok"}
    for service in SERVICE_NAMES:
        try:
            checks[service] = _service_health(service)
        except ServiceUnavailable:
            checks["broker"] = "unreachable"
            break
        except UpstreamTimeout:
            break
    for service in SERVICE_NAMES:
        checks.setdefault(service, "unknown" if checks["broker"] != "ok" else "timeout")
    states = {checks[service] for service in SERVICE_NAMES}
    checks["database"] = ("unreachable" if DATABASE_DOWN in states
                          else "ok" if "ok" in states else "unknown")
    down = sorted(name for name, state in checks.items() if state != "ok")
    if not down:
        return jsonify({"status": "ok", "checks": checks})
    body = {"status": "unavailable", "checks": checks,
            **error_body(ServiceUnavailable.code, "Down: " + ", ".join(down), checks)}
    return jsonify(body), 503


@routes.get("/health/live", tag="health", public=True, response={
    "type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["ok"]}}})
def live():
    """For liveness probes: the process serves; nothing it depends on is asked."""
    return jsonify({"status": "ok"})


@routes.get("/metrics", tag="meta", public=True, errors=(NotFound,),
            other_media_types={"text/plain; version=0.0.4": {"type": "string"}})
def metrics_text():
    if not metrics.enabled():
        raise NotFound("Metrics are off (METRICS_PORT=0).", {"path": "/metrics"})
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)


@routes.get(SPEC_PATH, tag="meta", response={"type": "object"}, public=True)
def openapi():
    return Response(current_app.extensions["openapi"], mimetype="application/json")


def _service_health(service):
    """'ok', or what is wrong with `service`; ServiceUnavailable when the broker is not
    there, UpstreamTimeout when the service does not answer."""
    try:
        read(service, "health", as_caller=GATEWAY_CALLER)
    except UpstreamTimeout:
        raise
    except ServiceUnavailable as exc:
        if "broker" in exc.details:
            raise
        if exc.details.get("service") == service:
            return "not running"
        return DATABASE_DOWN if "database" in exc.details else exc.code
    except DomainError as exc:
        return DATABASE_DOWN if "database" in exc.details else exc.code
    return "ok"
