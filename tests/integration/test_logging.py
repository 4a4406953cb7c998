"""Every process logs one JSON object per line, and a request's id reaches all of them."""
import json
import uuid


def _json_lines(stack):
    """(process name, parsed line) for every JSON line honcho collected from the stack."""
    for raw in stack.log_path.read_text(errors="replace").splitlines():
        prefix, _, body = raw.partition("| ")
        if body.startswith("{"):
            yield prefix.split()[-1] if prefix.split() else "", json.loads(body)


def test_a_request_id_reaches_the_logs_of_every_process_it_touches(api, stack):
    request_id = f"log-test-{uuid.uuid4().hex}"
    customer = api.create_customer()
    product = api.create_product()
    # Unknown sku after a real customer check: the gateway, order_service and
    # inventory_service each log something for this request.
    response = api.post("/api/v1/orders", headers={"X-Request-ID": request_id}, json={
        "customer_id": customer["id"], "items": [{"sku": product["sku"] + "-nope", "quantity": 1}]})
    assert response.status_code == 422

    import time
    deadline = time.monotonic() + 5
    while True:
        lines = [(name, line) for name, line in _json_lines(stack) if line.get("request_id") == request_id]
        services = {line["service"] for _, line in lines}
        if {"gateway", "order_service", "inventory_service"} <= services or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {"gateway", "order_service", "inventory_service"} <= services, lines

    [access] = [line for _, line in lines if line.get("logger") == "gateway.access"]
    assert (access["method"], access["path"], access["status"]) == ("POST", "/api/v1/orders", 422)
    assert access["duration_ms"] > 0
    for _, line in lines:
        assert {"time", "level", "service", "request_id", "message"} <= set(line)


def test_every_line_of_every_process_is_json(api, stack):
    api.get("/health")
    for raw in stack.log_path.read_text(errors="replace").splitlines():
        prefix, sep, body = raw.partition("| ")
        if not sep or prefix.split()[-1:] == ["system"]:
            continue  # honcho's own start/stop lines
        json.loads(body)
