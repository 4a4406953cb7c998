"""What apispec's output needs before it is the document: facts the marshmallow schemas cannot say,
and OpenAPI 3.0 spellings of what they do."""
from common.contract.schemas.base import AtLeastOneField
from gateway.openapi.components import (
    ENVELOPE_SCHEMAS,
    MONEY_OUT_PATTERN,
    REQUEST_SCHEMAS,
    RESOURCE_ENUMS,
    RESOURCE_SCHEMAS,
)
from gateway.openapi.data import PROSE


def finish(document):
    """`document` (apispec's to_dict()) completed, in place; returned."""
    schemas = document["components"]["schemas"]
    for name in RESOURCE_SCHEMAS:
        _resource_schema(schemas[name])
    for name in ENVELOPE_SCHEMAS:
        schemas[name].pop("additionalProperties", None)
    for name, schema_class in REQUEST_SCHEMAS.items():
        _request_schema(schemas[name], schema_class)
    for (schema, field), values in RESOURCE_ENUMS.items():
        schemas[schema]["properties"][field]["enum"] = values
    _walk(document)
    sku = schemas["ProductInput"]["properties"]["sku"]["pattern"]
    document["components"]["parameters"]["sku"]["schema"]["pattern"] = sku
    _query_parameters_are_never_null(document)
    return document


def _resource_schema(schema):
    """Every field of a resource is in every response; responses may carry more fields in future
    versions (only requests are closed); totals are not bounded like input prices."""
    schema["required"] = list(schema["properties"])
    schema.pop("additionalProperties", None)
    for prop in schema["properties"].values():
        if prop.get("format") == "decimal":
            prop.update(pattern=MONEY_OUT_PATTERN, example="59.98")
            prop.pop("x-minimum", None)
            prop.pop("x-maximum", None)


def _request_schema(schema, schema_class):
    if issubclass(schema_class, AtLeastOneField):  # its validates_schema: not none of them
        schema["minProperties"] = 1
    for prop in schema["properties"].values():
        if set(prop) == {"writeOnly"}:  # fields.Raw(load_only=True): any JSON value but null
            prop.update(anyOf=[{"type": kind} for kind in ("string", "number", "boolean", "object", "array")],
                        description=PROSE["ignored_field"])


def _walk(node):
    """Python's `\\Z` is ECMA-262's `$` (no trailing newline); `null` must be listed where it is allowed."""
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if isinstance(pattern, str) and pattern.endswith(r"\Z"):
            node["pattern"] = pattern[:-2] + "$"
        # apispec spells a nullable $ref as anyOf [{"type": "object", "nullable": true}, $ref]; that first
        # branch would accept any object, so narrow it to exactly null.
        for branch in node.get("anyOf", ()):
            if branch == {"type": "object", "nullable": True}:
                branch["enum"] = [None]
        for value in node.values():
            _walk(value)
    elif isinstance(node, list):
        for value in node:
            _walk(value)


def _query_parameters_are_never_null(document):
    """`cursor`'s load_default None means "first page": a query string has no null to send."""
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", ()):
                if parameter.get("in") == "query":
                    parameter["schema"].pop("nullable", None)
                    if parameter["schema"].get("default", "") is None:
                        del parameter["schema"]["default"]
