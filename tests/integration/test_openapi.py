"""The OpenAPI document at /api/v1/openapi.json and Swagger UI at /docs, on the running stack.

The document must be valid OpenAPI 3, name every route the gateway serves, and
describe request bodies and query strings exactly as the marshmallow schemas
the gateway validates them with. Swagger UI must work offline in a real
browser: authorize with a token, try GET /api/v1/orders, see the 200 and its JSON.
"""
import json
import os
import re
import subprocess
import sys
import uuid

import pytest
import requests
from marshmallow import fields, validate
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec

from common.contract.schemas import base, invoices, notifications, orders, webhooks
from common.contract.schemas.orders import MAX_IDEMPOTENCY_KEY
from gateway.openapi.components import ENVELOPE_SCHEMAS, REQUEST_SCHEMAS, RESOURCE_SCHEMAS
from gateway.openapi.data import EXAMPLES
from tests import support

SPEC = "/api/v1/openapi.json"
ERROR_REF = "#/components/schemas/Error"
# Routes that are not part of the API: Swagger UI and Flask's static files.
NOT_API = {"static", "swagger_ui", "swagger_ui_file"}

# What the gateway serves and validates with, read from a gateway app in its own process
# (create_app configures logging for the whole process; keep that out of pytest's). A declared
# route's view validates the body and query with the schemas its declaration names; its
# handler must not validate them again (with other schemas).
ROUTES_SCRIPT = r"""
import inspect, json, re
from gateway.app import create_app
from gateway.routes import routes
app = create_app(rpc_pool=object())
found = []
for rule in app.url_map.iter_rules():
    view = app.view_functions[rule.endpoint]
    route = next((route for route in routes if view == route.view), None)
    found.append({"rule": rule.rule, "endpoint": rule.endpoint, "declared": route is not None,
                  "methods": sorted(rule.methods - {"HEAD", "OPTIONS"}),
                  "body": route and route.body and route.body.__name__,
                  "query": route and route.query and route.query.__name__,
                  "validates_itself": bool(re.search(r"json_body\(|query_args\(",
                                                     inspect.getsource(route.handler if route else view)))})
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def spec(stack):
    response = requests.get(stack.base_url + SPEC, timeout=10)  # no token: the document is public
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


@pytest.fixture(scope="module")
def gateway_routes():
    result = subprocess.run([sys.executable, "-c", ROUTES_SCRIPT], cwd=support.ROOT, capture_output=True,
                            text=True, check=True, env={**os.environ, "LOG_LEVEL": "WARNING"})
    routes = json.loads(result.stdout.strip().splitlines()[-1])
    return [route for route in routes if route["endpoint"] not in NOT_API]


def query_schema(name):
    """The query schema class the gateway names `name`, from the contract's schema modules."""
    return next(getattr(module, name) for module in (base, orders, invoices, notifications, webhooks)
                if hasattr(module, name))


def openapi_path(rule):
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def component(spec, ref):
    assert ref.startswith("#/components/"), ref
    node = spec
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def resolved(spec, node):
    return component(spec, node["$ref"]) if "$ref" in node else node


def validator_for(spec, schema):
    """An OpenAPI 3.0 schema validator; the document's components ride along so its $refs resolve."""
    return OAS30Validator({**schema, "components": spec["components"]})


# ---- the document ----------------------------------------------------------------

def test_the_document_is_valid_openapi_3_and_public(spec):
    assert spec["openapi"].startswith("3.")
    validate_spec(spec)


def test_every_gateway_route_is_declared_documented_and_nothing_else(spec, gateway_routes):
    assert all(route["declared"] for route in gateway_routes), "declare API routes on gateway.routes.routes"
    served = {(method.lower(), openapi_path(route["rule"])) for route in gateway_routes
              for method in route["methods"]}
    documented = {(method, path) for path, operations in spec["paths"].items() for method in operations}
    assert served == documented
    assert len(served) >= 18


def test_request_bodies_are_the_schemas_the_gateway_validates_with(spec, gateway_routes):
    for route in gateway_routes:
        assert not route["validates_itself"], route["endpoint"]
        for method in route["methods"]:
            operation = spec["paths"][openapi_path(route["rule"])][method.lower()]
            if route["body"] is None:
                assert "requestBody" not in operation, (method, route["rule"])
                continue
            body = operation["requestBody"]
            assert body["required"] is True
            ref = body["content"]["application/json"]["schema"]["$ref"]
            name = ref.rsplit("/", 1)[1]
            assert REQUEST_SCHEMAS[name].__name__ == route["body"], (method, route["rule"])
            example = body["content"]["application/json"]["example"]
            assert not REQUEST_SCHEMAS[name]().validate(example), "the example must pass the real validation"


def test_query_parameters_are_the_query_schema_fields(spec, gateway_routes):
    for route in gateway_routes:
        for method in route["methods"]:
            operation = spec["paths"][openapi_path(route["rule"])][method.lower()]
            parameters = [resolved(spec, parameter) for parameter in operation.get("parameters", [])]
            in_query = {parameter["name"]: parameter for parameter in parameters if parameter["in"] == "query"}
            if route["query"] is None:
                assert not in_query, (method, route["rule"])
                continue
            schema = query_schema(route["query"])()
            assert set(in_query) == set(schema.fields), (method, route["rule"])
            limit = in_query["limit"]["schema"]
            assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 100, 20)
            assert in_query["cursor"]["schema"]["maxLength"] == 500


def _field_constraints(field):
    expected = {}
    for validator in field.validators:
        if isinstance(validator, validate.Length):
            kind = "Items" if isinstance(field, fields.List) else "Length"
            if validator.min is not None:
                expected["min" + kind] = validator.min
            if validator.max is not None:
                expected["max" + kind] = validator.max
        elif isinstance(validator, validate.Range) and not isinstance(field, base.Money):
            expected["minimum"], expected["maximum"] = validator.min, validator.max
        elif isinstance(validator, validate.OneOf):
            expected["enum"] = list(validator.choices)
        elif isinstance(validator, validate.Regexp):  # Python's \Z is ECMA-262's $
            expected["pattern"] = re.sub(r"\\Z$", "$", validator.regex.pattern)
    return expected


def test_request_schemas_mirror_the_marshmallow_classes(spec):
    schemas = spec["components"]["schemas"]
    for name, schema_class in REQUEST_SCHEMAS.items():
        documented = schemas[name]
        declared = {field.data_key or field_name: field for field_name, field in schema_class().fields.items()}
        assert set(documented["properties"]) == set(declared), name
        assert set(documented.get("required", [])) == {key for key, field in declared.items() if field.required}, \
            name
        assert documented["additionalProperties"] is False, f"{name}: unknown fields are 400"
        if issubclass(schema_class, base.AtLeastOneField):
            assert documented["minProperties"] == 1
        for key, field in declared.items():
            prop = documented["properties"][key]
            for keyword, value in _field_constraints(field).items():
                assert prop.get(keyword) == value, (name, key, keyword)
            if field.allow_none:
                assert prop.get("nullable") or any(branch.get("nullable") for branch in prop.get("anyOf", [])), \
                    (name, key)
    sku = schemas["ProductInput"]["properties"]["sku"]["pattern"]
    assert sku.endswith("$") and r"\Z" not in sku, "ECMA-262 spells Python's \\Z as $"
    assert spec["components"]["parameters"]["sku"]["schema"]["pattern"] == sku


def test_responses_name_every_status_in_the_error_shape(spec):
    assert component(spec, ERROR_REF)["required"] == ["error"]
    error_body = spec["components"]["schemas"]["ErrorBody"]
    assert set(error_body["required"]) == {"code", "message", "details"}
    assert error_body["properties"]["details"]["additionalProperties"] == {}  # values of any type
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            statuses = {int(status) for status in operation["responses"]}
            # the contract's routes without a token
            public = path in ("/health", "/health/live", "/metrics", SPEC, "/api/v1/push/vapid-public-key")
            assert operation.get("security") == ([] if public else None), (method, path)
            if public:
                continue
            assert {401, 503, 504} <= statuses, (method, path)
            if "requestBody" in operation:
                assert {400, 413, 415} <= statuses, (method, path)
            if "{" in path:
                assert 404 in statuses, (method, path)
            if any(resolved(spec, p)["name"] == "If-Match" for p in operation.get("parameters", [])):
                assert 412 in statuses, (method, path)
            for status in statuses - {200, 201, 202, 204}:
                response = resolved(spec, operation["responses"][str(status)])
                assert response["content"]["application/json"]["schema"]["$ref"] == ERROR_REF, (method, path)
    assert spec["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}]  # either one
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    key = spec["components"]["securitySchemes"]["apiKeyAuth"]
    assert (key["type"], key["in"], key["name"]) == ("apiKey", "header", "X-API-Key")
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path not in ("/health", "/health/live", "/metrics"):
                assert "429" in operation["responses"], (method, path)
    limited = resolved(spec, spec["paths"]["/api/v1/orders"]["post"]["responses"]["429"])
    assert {"Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(limited["headers"])
    for method in ("post", "get"):
        assert method in spec["paths"]["/api/v1/api-keys"]
    assert "delete" in spec["paths"]["/api/v1/api-keys/{key_id}"]


def test_headers_lists_and_delete_are_described(spec):
    paths = spec["paths"]
    create = paths["/api/v1/orders"]["post"]
    assert [resolved(spec, p)["name"] for p in create["parameters"]] == ["Idempotency-Key"]
    key = resolved(spec, create["parameters"][0])["schema"]
    assert (key["minLength"], key["maxLength"]) == (1, MAX_IDEMPOTENCY_KEY)
    assert {"ETag", "Location", "X-Request-ID"} <= set(create["responses"]["201"]["headers"])
    assert "Location" in paths["/api/v1/customers"]["post"]["responses"]["201"]["headers"]
    assert "ETag" in paths["/api/v1/orders/{order_id}"]["get"]["responses"]["200"]["headers"]
    for path, method in [("/api/v1/orders/{order_id}", "put"), ("/api/v1/orders/{order_id}/shipping", "put"),
                         ("/api/v1/orders/{order_id}/status", "put"), ("/api/v1/orders/{order_id}", "delete")]:
        assert "If-Match" in [resolved(spec, p)["name"] for p in paths[path][method]["parameters"]]
    delete = paths["/api/v1/orders/{order_id}"]["delete"]["responses"]["204"]
    assert "content" not in delete
    for name in ("CustomerPage", "ProductPage", "OrderPage"):
        page = spec["components"]["schemas"][name]
        assert page["required"] == ["items", "next_cursor"]
        assert page["properties"]["next_cursor"]["nullable"] is True
    order = spec["components"]["schemas"]["Order"]["properties"]
    assert all(order[key].get("nullable") or any(b.get("nullable") for b in order[key].get("anyOf", []))
               for key in ("shipping_address", "carrier", "tracking_number"))
    assert None in spec["components"]["schemas"]["StatusChange"]["properties"]["from"]["enum"]
    assert spec["components"]["schemas"]["Address"]["properties"]["line2"]["nullable"] is True
    assert set(RESOURCE_SCHEMAS) | set(ENVELOPE_SCHEMAS) <= set(spec["components"]["schemas"])


def test_every_example_fits_its_schema(spec):
    checked = 0
    for operations in spec["paths"].values():
        for operation in operations.values():
            media_types = [operation.get("requestBody", {}).get("content", {}).get("application/json")]
            for response in operation["responses"].values():
                media_types.append(resolved(spec, response).get("content", {}).get("application/json"))
            for media in filter(None, media_types):
                examples = [media["example"]] if "example" in media else []
                examples += [example["value"] for example in media.get("examples", {}).values()]
                for example in examples:
                    validator_for(spec, media["schema"]).validate(example)
                    checked += 1
    assert checked > 30


def test_every_operation_example_is_in_the_document(spec):
    """Examples are keyed by operation id and status: a stale key would silently show nothing."""
    operations = {operation["operationId"]: operation
                  for operations in spec["paths"].values() for operation in operations.values()}
    for operation_id, examples in EXAMPLES["operations"].items():
        operation = operations[operation_id]
        for key, example in examples.items():
            documented = operation["requestBody"] if key == "request" else operation["responses"][str(key)]
            assert documented["content"]["application/json"]["example"] == example, (operation_id, key)


def test_real_responses_fit_the_document(api, spec):
    """A few real answers, validated here too (test_schemathesis.py does thousands)."""
    customer = api.create_customer()
    product = api.create_product()
    order = api.create_order(customer, (product, 1))
    answers = [
        ("/api/v1/customers/{customer_id}", "get", 200, api.get(f"/api/v1/customers/{customer['id']}")),
        ("/api/v1/products/{sku}", "get", 200, api.get(f"/api/v1/products/{product['sku']}")),
        ("/api/v1/orders/{order_id}", "get", 200, api.get(f"/api/v1/orders/{order['id']}")),
        ("/api/v1/orders", "get", 200, api.get("/api/v1/orders", params={"limit": 2})),
        ("/api/v1/orders/{order_id}/history", "get", 200, api.get(f"/api/v1/orders/{order['id']}/history")),
        ("/api/v1/notifications", "get", 200, api.get("/api/v1/notifications", params={"limit": 2})),
        ("/api/v1/notifications/{notification_id}", "get", 404, api.get(f"/api/v1/notifications/{uuid.uuid4()}")),
        ("/api/v1/orders/{order_id}", "get", 404, api.get("/api/v1/orders/not-an-id")),
        ("/api/v1/orders", "get", 401, requests.get(api.base_url + "/api/v1/orders", timeout=10)),
        ("/health", "get", 200, requests.get(api.base_url + "/health", timeout=10)),
    ]
    for path, method, status, response in answers:
        assert response.status_code == status, response.text
        documented = resolved(spec, spec["paths"][path][method]["responses"][str(status)])
        validator_for(spec, documented["content"]["application/json"]["schema"]).validate(response.json())


# ---- Swagger UI ------------------------------------------------------------------

def test_docs_page_and_its_assets_are_served_locally(stack):
    page = requests.get(stack.base_url + "/docs", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(asset.startswith("/docs/") for asset in assets), assets
    assert SPEC in page.text
    for asset in assets:
        assert requests.get(stack.base_url + asset, timeout=10).status_code == 200, asset
    assert requests.get(stack.base_url + "/docs/index.html", timeout=10).status_code == 404


# Runs in its own interpreter: Playwright's sync API deadlocks under the eventlet monkey-patching
# that nameko's pytest plugin applies to this process.
BROWSER_SCRIPT = r"""
import json, sys, tempfile
from playwright.sync_api import expect, sync_playwright

base_url, chromium, token, screenshot, flags = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
outside = []
with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
    # A persistent context is how Playwright takes a user-data-dir: a fresh one per run.
    browser = playwright.chromium.launch_persistent_context(
        profile, executable_path=chromium, headless=True, args=flags, viewport={"width": 1280, "height": 1600})
    try:
        page = browser.new_page()
        page.set_default_timeout(20_000)
        page.on("request", lambda req: None if req.url.startswith(base_url) else outside.append(req.url))
        page.goto(base_url + "/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("Order management API")

        page.click("button.authorize")
        page.fill(".modal-ux input[aria-label='auth-bearer-value']", token)
        page.click(".modal-ux button[type=submit]")
        page.locator(".modal-ux button", has_text="Logout").wait_for()
        page.click(".modal-ux button.btn-done")

        operation = page.locator("#operations-orders-listOrders")
        operation.locator(".opblock-summary").click()
        operation.locator("button.try-out__btn").click()
        operation.locator("button.execute").click()
        status = operation.locator(".live-responses-table .response .response-col_status")
        expect(status).to_have_text("200")
        body = operation.locator(".live-responses-table .response-col_description .highlight-code pre").first
        result = {"status": status.inner_text().strip(), "body": body.inner_text(),
                  "curl": operation.locator(".curl-command").inner_text()}

        operation.locator(".opblock-summary").evaluate("element => element.scrollIntoView()")
        page.screenshot(path=screenshot)
    finally:
        browser.close()
print(json.dumps({**result, "outside": outside}))
"""


def test_swagger_ui_authorizes_and_tries_get_orders_in_headless_chromium(stack, api):
    chromium = support.chromium_or_skip()
    customer = api.create_customer()
    api.create_order(customer, (api.create_product(), 1))
    screenshot = support.OUTPUT / "swagger-ui.png"
    screenshot.unlink(missing_ok=True)

    run = subprocess.run([sys.executable, "-c", BROWSER_SCRIPT, stack.base_url, chromium, support.token("admin"),
                          str(screenshot), *support.CHROMIUM_FLAGS], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])

    assert seen["status"] == "200"
    body = json.loads(seen["body"])
    assert set(body) == {"items", "next_cursor"} and body["items"], body
    assert "Authorization: Bearer " in seen["curl"]
    assert not seen["outside"], f"Swagger UI must load nothing from elsewhere: {seen['outside']}"
    assert screenshot.stat().st_size > 10_000
