"""The OpenAPI document (GET /api/v1/openapi.json, built in document.py) and Swagger UI (GET /docs)."""
import json

from gateway.openapi.document import build_spec
from gateway.openapi.swagger_ui import register_swagger_ui


def register_openapi(app, routes):
    """The document of `routes`, for the route that serves it (app.extensions["openapi"]), and GET /docs."""
    app.extensions["openapi"] = json.dumps(build_spec(routes), separators=(",", ":"))
    register_swagger_ui(app)


__all__ = ["build_spec", "register_openapi"]
