"""The gateway's routes, one module per resource, all declared on one registry (declare.routes).

Importing the modules declares their routes; the order they are imported in is
the order of the OpenAPI document's paths.
"""
# isort: off
from gateway.routes import meta, customers, products, orders, invoices, notifications, api_keys, webhooks  # noqa: F401
# isort: on
from gateway.routes.declare import API, SPEC_PATH, Route, Routes, routes

__all__ = ["API", "SPEC_PATH", "Route", "Routes", "routes"]
