"""How a route is declared: once, on its handler, with its Flask rule and the structure of its operation.

    @routes.post(f"{API}/customers", tag="customers", status=201, response="Customer",
                 body=CustomerInput, errors=(Forbidden, AlreadyExists), location=True)
    def create_customer(body): ...

The gateway serves `routes` (Routes.register) and gateway/openapi/ documents
them: the body schema a route declares is the one its view validates the body
with, and the error statuses it documents are those of the error classes it
declares plus what every route of its kind can answer. What the document says
in words (summary, description) is data, keyed by operation id
(gateway/openapi/prose.yaml).
"""
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from common.contract.errors import RateLimited, ServiceUnavailable, Unauthenticated, UpstreamTimeout, ValidationFailed
from common.contract.schemas.base import schema_instance

API = "/api/v1"
SPEC_PATH = f"{API}/openapi.json"  # where the gateway serves the OpenAPI document
# What a route can answer besides the errors it declares.
AUTHENTICATED_ERRORS = (Unauthenticated, ServiceUnavailable, UpstreamTimeout)
BODY_ERRORS = (ValidationFailed, RequestEntityTooLarge, UnsupportedMediaType)  # see json_body
QUERY_ERRORS = (ValidationFailed,)
# Never rate limited (RATE_LIMIT): probes and scrapes. Every other route can answer 429.
UNLIMITED_PATHS = frozenset({"/health", "/health/live", "/metrics"})
PATH_VARIABLE = re.compile(r"<(?:\w+:)?(\w+)>")


@dataclass(frozen=True, eq=False)
class Route:
    """One route. Past `handler` the fields describe its operation in the OpenAPI document;
    `body` and `query` also validate the request, and `public` also spares it the token check."""
    method: str
    path: str  # a Flask rule: /api/v1/orders/<order_id>
    handler: Callable  # called with the path variables, and `body` / `query` when declared
    tag: str
    status: int = 200  # of the success response
    # The success body as JSON: a component schema name, an inline schema, or None (no JSON body).
    response: str | dict | None = None
    # The success body in other media types (the client picks by Accept): {media type: schema}.
    other_media_types: dict = field(default_factory=dict)
    # Answers that are neither the success nor an error: {status: component schema name}.
    other_responses: dict = field(default_factory=dict)
    body: type | None = None  # the marshmallow schema that validates the JSON body
    query: type | None = None  # the marshmallow schema that validates the query string
    errors: tuple = ()  # the error classes (DomainError or werkzeug) it can answer with
    headers: tuple = ()  # the request headers it reads, by component parameter name
    etag: bool = False  # answers with an ETag
    location: bool = False  # answers with a Location
    public: bool = False  # needs no bearer token

    def __post_init__(self):
        if not self.public and not self.path.startswith(API + "/"):
            raise ValueError(f"{self.path}: only {API} routes check tokens, so it must be declared public")

    @property
    def endpoint(self):
        return self.handler.__name__

    @property
    def operation_id(self):
        """The handler's name in camelCase: create_order -> createOrder."""
        first, *rest = self.endpoint.split("_")
        return first + "".join(word.capitalize() for word in rest)

    @property
    def path_variables(self):
        return PATH_VARIABLE.findall(self.path)

    @property
    def rate_limited(self):
        return self.path not in UNLIMITED_PATHS

    @property
    def answered_errors(self):
        """The declared error classes and those every route of this kind can answer with."""
        errors = list(self.errors)
        if self.rate_limited:
            errors.append(RateLimited)
        if not self.public:
            errors += AUTHENTICATED_ERRORS
        if self.body:
            errors += BODY_ERRORS
        if self.query:
            errors += QUERY_ERRORS
        return errors

    def view(self, **path_variables):
        """The Flask view: the declared body and query validated, then the handler."""
        if self.body:
            path_variables["body"] = json_body(self.body)
        if self.query:
            path_variables["query"] = query_args(self.query)
        return self.handler(**path_variables)


class Routes:
    """The routes in declaration order; `@routes.get(path, tag=..., ...)` declares one."""

    def __init__(self):
        self._routes = []

    def __iter__(self):
        return iter(self._routes)

    def get(self, path, **operation):
        return self.route("get", path, **operation)

    def post(self, path, **operation):
        return self.route("post", path, **operation)

    def put(self, path, **operation):
        return self.route("put", path, **operation)

    def patch(self, path, **operation):
        return self.route("patch", path, **operation)

    def delete(self, path, **operation):
        return self.route("delete", path, **operation)

    def route(self, method, path, **operation):
        def declare(handler):
            self._routes.append(Route(method, path, handler, **operation))
            return handler
        return declare

    def register(self, app):
        for route in self._routes:
            app.add_url_rule(route.path, route.endpoint, route.view, methods=[route.method.upper()])

    def public_paths(self):
        """The paths that need no token (compared with request paths: a public route has no variables)."""
        return frozenset(route.path for route in self._routes if route.public)


routes = Routes()  # the gateway's, filled in by the modules of gateway/routes/


def json_body(schema_class):
    """The request's JSON object, checked against `schema_class` (400 naming bad fields)."""
    if not request.is_json:
        raise UnsupportedMediaType("Send JSON with Content-Type: application/json.")
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        raise ValidationFailed("The body is nested too deeply.", {"body": ["Nested too deeply."]}) from None
    if body is None and request.get_data():
        raise ValidationFailed("The body is not valid JSON.", {"body": ["Malformed JSON."]})
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object.", {"body": ["Not an object."]})
    errors = schema_instance(schema_class).validate(body)
    if errors:
        raise ValidationFailed("Some fields are invalid.", errors)
    return body


def query_args(schema_class):
    """The query string checked against `schema_class`, as strings (services parse them again)."""
    args = request.args.to_dict()
    errors = schema_instance(schema_class).validate(args)
    if errors:
        raise ValidationFailed("Some query parameters are invalid.", errors)
    return args
