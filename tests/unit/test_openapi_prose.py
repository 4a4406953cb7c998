"""The OpenAPI document's prose (gateway/openapi/prose.yaml) and the route declarations match:
every route has its words, and every entry of words names something the document has."""
from gateway.openapi.components import ERROR_RESPONSES, PARAMETERS, RESPONSE_HEADERS, URI_TOO_LONG
from gateway.openapi.data import EXAMPLES, PROSE
from gateway.openapi.document import build_spec
from gateway.routes import routes


def test_every_route_has_prose_and_every_prose_entry_names_a_route():
    operation_ids = [route.operation_id for route in routes]
    assert len(operation_ids) == len(set(operation_ids)), "two routes with one operation id"
    assert set(PROSE["operations"]) == set(operation_ids)
    for route in routes:
        prose = PROSE["operations"][route.operation_id]
        assert prose.get("summary"), route.operation_id
        assert set(prose) <= {"summary", "description", "responses"}, route.operation_id
        assert set(prose.get("responses", {})) == set(route.other_responses), route.operation_id


def test_every_error_parameter_and_header_has_prose_and_nothing_else_does():
    assert set(PROSE["errors"]) == {*ERROR_RESPONSES, URI_TOO_LONG[0]}
    assert set(PROSE["parameters"]) == set(PARAMETERS)
    assert set(PROSE["headers"]) == set(RESPONSE_HEADERS)
    assert set(EXAMPLES["parameters"]) == set(PARAMETERS)


def test_the_document_carries_the_prose():
    document = build_spec(routes)
    assert document["info"]["description"] == PROSE["description"]
    operations = {operation["operationId"]: operation
                  for operations in document["paths"].values() for operation in operations.values()}
    for operation_id, prose in PROSE["operations"].items():
        assert operations[operation_id]["summary"] == prose["summary"]
        assert operations[operation_id].get("description") == prose.get("description")
        for status, description in prose.get("responses", {}).items():
            assert operations[operation_id]["responses"][str(status)]["description"] == description
    for status, name in [*ERROR_RESPONSES.items(), URI_TOO_LONG]:
        assert document["components"]["responses"][name]["description"] == PROSE["errors"][status]
