"""The OpenAPI 3 document of the gateway's routes (GET /api/v1/openapi.json), built from their declarations.

apispec's marshmallow plugin writes it from the very schemas in
common/contract/schemas/ that validate requests and shape responses, so a
field or a limit changed there changes the document too. Which routes exist,
with their statuses, headers and the error classes they answer with, comes
from their declarations (gateway/routes/); each error status is the one its
class carries (common/contract/errors.py). The words are in prose.yaml, the
examples in examples.yaml, the components in components.py, and what
apispec's output needs after it in fixes.py. tests/integration/test_openapi.py
checks the document against the gateway's url_map, and
tests/integration/test_schemathesis.py the running gateway against the document.
"""
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from common.contract.errors import DomainError
from common.contract.schemas.base import Money
from common.contract.schemas.invoices import TaxRate
from gateway.openapi.components import (
    ERROR_RESPONSES,
    MONEY_PATTERN,
    RATE_LIMIT_HEADERS,
    TAX_RATE_PATTERN,
    URI_TOO_LONG,
    ref,
    register_components,
    response_headers,
)
from gateway.openapi.data import EXAMPLES, PROSE
from gateway.openapi.fixes import finish
from gateway.routes.declare import PATH_VARIABLE

OPENAPI_VERSION = "3.0.3"  # what the bundled Swagger UI (4.x) renders
TAGS = ("orders", "products", "customers", "notifications", "invoices", "webhooks", "api-keys", "health", "meta")
SUCCESS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No content"}


def build_spec(routes):
    """The OpenAPI document of `routes` (gateway.routes.Routes) as a dict."""
    marshmallow_plugin = MarshmallowPlugin()
    spec = APISpec(title="Order management API", version="1.0.0", openapi_version=OPENAPI_VERSION,
                   plugins=[marshmallow_plugin], info={"description": PROSE["description"]},
                   security=[{"bearerAuth": []}, {"apiKeyAuth": []}], tags=[{"name": tag} for tag in TAGS])
    marshmallow_plugin.map_to_openapi_type(Money, "string", "decimal")
    marshmallow_plugin.map_to_openapi_type(TaxRate, "string", None)
    marshmallow_plugin.converter.add_attribute_function(_money_properties)
    register_components(spec)

    paths = {}
    for route in routes:
        path = PATH_VARIABLE.sub(r"{\1}", route.path)  # /orders/<order_id> -> /orders/{order_id}
        paths.setdefault(path, {})[route.method] = _operation(route)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return finish(spec.to_dict())


def _money_properties(self, field, **kwargs):
    """Money is a decimal string with at most two places (responses: exactly two); a tax rate a decimal string."""
    if isinstance(field, Money):
        return {"pattern": MONEY_PATTERN, "example": "29.99"}
    if isinstance(field, TaxRate):
        return {"pattern": TAX_RATE_PATTERN}
    return {}


def _operation(route):
    prose = PROSE["operations"][route.operation_id]
    examples = EXAMPLES["operations"].get(route.operation_id, {})
    parameters = [*route.path_variables]  # apispec makes a component name a $ref
    if route.query:  # expanded by apispec into one parameter per field
        parameters.append({"in": "query", "schema": route.query})
    parameters += route.headers
    operation = {"operationId": route.operation_id, "summary": prose["summary"], "tags": [route.tag],
                 "responses": _responses(route, prose, examples)}
    if "description" in prose:
        operation["description"] = prose["description"]
    if parameters:
        operation["parameters"] = parameters
    if route.body:  # apispec makes a registered schema class a $ref
        operation["requestBody"] = {"required": True,
                                    "content": {"application/json": _media(route.body, examples.get("request"))}}
    if route.public:
        operation["security"] = []
    return operation


def _responses(route, prose, examples):
    """Success first, then the other answers, the errors its classes answer with and 414; by status."""
    success = {"description": SUCCESS[route.status],
               "headers": response_headers(*(["ETag"] if route.etag else []),
                                           *(["Location"] if route.location else []),
                                           *(RATE_LIMIT_HEADERS if route.rate_limited else []))}
    content = {}
    if route.response is not None:
        schema = ref("schemas", route.response) if isinstance(route.response, str) else route.response
        content["application/json"] = _media(schema, examples.get(route.status))
    content.update((media_type, _media(schema)) for media_type, schema in route.other_media_types.items())
    if content:
        success["content"] = content
    responses = {route.status: success}
    for status, schema in route.other_responses.items():
        media = _media(ref("schemas", schema), examples.get(status))
        responses[status] = {"description": prose["responses"][status], "headers": response_headers(),
                             "content": {"application/json": media}}
    for status in {_http_status(error) for error in route.answered_errors}:
        responses[status] = ref("responses", ERROR_RESPONSES[status])
    if route.path_variables or route.query:
        status, name = URI_TOO_LONG
        responses[status] = ref("responses", name)
    return {str(status): responses[status] for status in sorted(responses)}


def _media(schema, example=None):
    media = {"schema": schema}
    if example is not None:
        media["example"] = example
    return media


def _http_status(error):
    """What an error class answers with: a DomainError's http_status, a werkzeug HTTPException's code."""
    return error.http_status if issubclass(error, DomainError) else error.code
