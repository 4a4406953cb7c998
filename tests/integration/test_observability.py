"""Traces across every hop (a real OTLP/HTTP receiver) and metrics scraped by a real Prometheus."""
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid

import pytest
import requests

from common.contract.services import SERVICES
from tests import support
from tests.integration.conftest import ApiClient, stack_env
from tests.servers.otlp_receiver import OtlpReceiver

SERVER, CLIENT, CONSUMER = 2, 3, 5  # opentelemetry.proto.trace.v1.Span.SpanKind


@pytest.fixture
def traced_stack(request):
    """A stack exporting every trace to a receiver; `request.param`, if any: {process: its own env}."""
    receiver = OtlpReceiver().start()
    vhost, amqp_uri = support.create_vhost()
    db_name, db_url = support.create_database()
    support.alembic(db_url, "upgrade", "head")
    # Every new trace kept (the default keeps one in ten). OTEL_BSP_SCHEDULE_DELAY is the SDK's own
    # setting: export every 200 ms, not every 5 s.
    env = stack_env(amqp_uri, db_url, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_TRACES_SAMPLER_ARG="1.0",
                    OTEL_BSP_SCHEDULE_DELAY="200")
    stack = support.ProcessStack(env, support.OUTPUT / "traced")
    stack.envs.update(getattr(request, "param", {}))
    try:
        stack.start()
        yield stack, receiver
    finally:
        stack.stop()
        receiver.stop()
        support.drop_database(db_name)
        support.delete_vhost(vhost)


def _wait_for(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def _create_in_a_trace(stack):
    """One order created under a caller's sampled traceparent: (its trace id, the caller's span id)."""
    api = ApiClient(stack.base_url)
    customer, product = api.create_customer(), api.create_product(stock=5)
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    response = api.post("/api/v1/orders", headers={"traceparent": f"00-{trace_id}-{caller_span}-01"}, json={
        "customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 1}]})
    assert response.status_code == 201, response.text
    return trace_id, caller_span


@pytest.mark.parametrize("traced_stack", [{"gateway": {"BATCH_MAX": "1"}}], indirect=True)
def test_one_trace_per_request_across_every_hop(traced_stack):
    """An unbatched create (BATCH_MAX=1): each hop's worker span is the request's."""
    stack, receiver = traced_stack
    trace_id, caller_span = _create_in_a_trace(stack)

    complete = {}

    def arrived():
        """The spans we look for, and every span's parent (a child is often exported first)."""
        spans = receiver.of_trace(trace_id)
        names = {(span.service, span.name) for span in spans}
        ids = {span.span_id for span in spans} | {caller_span}
        if {("gateway", "POST /api/v1/orders"), ("order_service", "order_service.create_order"),
                ("inventory_service", "inventory_service.reserve"),
                ("customer_service", "customer_service.on_order_created")} <= names \
                and all(span.parent_span_id in ids for span in spans):
            complete["spans"] = spans
        return "spans" in complete
    assert _wait_for(arrived), {(s.service, s.name) for s in receiver.of_trace(trace_id)}

    spans = {span.span_id: span for span in complete["spans"]}
    # One tree under the caller's span: the gateway's server span is the only child of the
    # caller's span, and every other span descends from it.
    [root] = [span for span in spans.values() if span.parent_span_id == caller_span]
    assert (root.service, root.kind) == ("gateway", SERVER)
    for span in spans.values():
        chain = span
        while chain.span_id != root.span_id:
            assert chain.parent_span_id in spans, f"{span.service}/{span.name} is not under the gateway's span"
            chain = spans[chain.parent_span_id]

    def named(service, name, kind):
        return [s for s in spans.values() if (s.service, s.name, s.kind) == (service, name, kind)]
    [gateway_call] = named("gateway", "order_service.create_order", CLIENT)
    [order_server] = named("order_service", "order_service.create_order", SERVER)
    assert order_server.parent_span_id == gateway_call.span_id
    [reserve_call] = named("order_service", "inventory_service.reserve", CLIENT)
    [reserve_server] = named("inventory_service", "inventory_service.reserve", SERVER)
    assert reserve_server.parent_span_id == reserve_call.span_id
    # SQL statements are spans of the services that ran them (named "<verb> <database>"): the
    # attempt lock, the context read and the combined insert, at least.
    sql = [s.name for s in spans.values() if s.service == "order_service"
           and s.parent_span_id == order_server.span_id and s.kind == CLIENT and "." not in s.name]
    assert len(sql) >= 3, sorted((s.service, s.name) for s in spans.values())
    # The order_created event carries the change's context: its consumer continues the trace.
    [consumer] = named("customer_service", "customer_service.on_order_created", CONSUMER)
    assert consumer.parent_span_id in spans

    # Log lines written while a span is active carry its ids.
    log = (support.OUTPUT / "traced" / "gateway.log").read_text()
    access = [json.loads(line) for line in log.splitlines()
              if line.startswith("{") and f'"trace_id": "{trace_id}"' in line]
    assert access and all(line["span_id"] for line in access)


def test_a_batched_create_keeps_spans_of_its_own_in_each_service_linked_to_the_batch(traced_stack):
    stack, receiver = traced_stack
    trace_id, caller_span = _create_in_a_trace(stack)

    def own(service, name):
        return [span for span in receiver.of_trace(trace_id) if (span.service, span.name) == (service, name)]
    assert _wait_for(lambda: own("order_service", "order_service.create_order")
                     and own("inventory_service", "inventory_service.reserve")), \
        {(s.service, s.name) for s in receiver.of_trace(trace_id)}
    [gateway_call] = own("gateway", "order_service.create_order")
    [order_entry] = own("order_service", "order_service.create_order")
    [reserve_entry] = own("inventory_service", "inventory_service.reserve")
    assert order_entry.parent_span_id == gateway_call.span_id and reserve_entry.parent_span_id == order_entry.span_id
    # Each links to its batch's worker span, in a trace of the batch's own.
    for entry, batch_name in ((order_entry, "order_service.create_orders"),
                              (reserve_entry, "inventory_service.reserve_many")):
        [(batch_trace, batch_span)] = entry.links
        assert batch_trace != trace_id
        assert _wait_for(lambda: any(s.span_id == batch_span and s.name == batch_name
                                     for s in receiver.of_trace(batch_trace)))


RENAMED = {"OTEL_SERVICE_NAME": "edge-gateway",
           "OTEL_RESOURCE_ATTRIBUTES": "service.name=not-this,deployment.environment=integration,team=order%20desk"}


@pytest.mark.parametrize("traced_stack", [{"gateway": RENAMED}], indirect=True)
def test_otel_service_name_and_resource_attributes_reach_the_exported_resource(traced_stack):
    stack, receiver = traced_stack
    response = requests.get(stack.base_url + f"/api/v1/orders/{uuid.uuid4()}", headers=support.bearer(), timeout=10)
    assert response.status_code == 404, response.text

    def named(name):
        return [span for span in list(receiver.spans) if span.name == name]
    assert _wait_for(lambda: named("GET /api/v1/orders/{order_id}") and named("order_service.get_order")), \
        {(span.service, span.name) for span in receiver.spans}
    # OTEL_SERVICE_NAME wins over a service.name among the attributes; the others are on the resource.
    [gateway_server] = named("GET /api/v1/orders/{order_id}")
    resource = gateway_server.resource
    assert resource["service.name"] == "edge-gateway"
    assert (resource["deployment.environment"], resource["team"]) == ("integration", "order desk")
    assert resource["telemetry.sdk.name"] == "opentelemetry"
    # The services, not given them, keep their own names.
    [order_server] = [span for span in named("order_service.get_order") if span.kind == SERVER]
    assert order_server.service == "order_service" and "deployment.environment" not in order_server.resource


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("prometheus is not installed (Debian: apt-get install prometheus)")
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    workdir = tmp_path_factory.mktemp("prometheus")
    base = int(stack.env["METRICS_PORT"])
    gateway = stack.base_url.removeprefix("http://")
    services = [f"127.0.0.1:{base + service.metrics_offset}" for service in SERVICES]
    (workdir / "prometheus.yml").write_text(json.dumps({
        # A loaded test machine can take over a second to answer a scrape.
        "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"},
        "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [gateway]}]},
                           {"job_name": "services", "static_configs": [{"targets": services}]}]}))
    port = support.free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=open(workdir / "prometheus.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        assert _wait_for(lambda: _ready(url), timeout=30), (workdir / "prometheus.log").read_text()[-2000:]
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def _ready(url):
    try:
        return requests.get(url + "/-/ready", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def _query(url, expression):
    answer = requests.get(url + "/api/v1/query", params={"query": expression}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def test_prometheus_scrapes_the_gateway_and_every_service(prometheus, api):
    customer, product = api.create_customer(), api.create_product(stock=50)
    for _ in range(5):
        api.create_order(customer, (product, 1))
    expression = 'sum(http_requests_total{method="POST",route="/api/v1/orders",status="201"})'
    assert _wait_for(lambda: (r := _query(prometheus, expression)) and float(r[0]["value"][1]) >= 5, timeout=30), \
        _query(prometheus, "http_requests_total")
    assert _wait_for(lambda: len(_query(prometheus, "up == 1")) == len(_query(prometheus, "up")) >= 4,
                     timeout=30), _query(prometheus, "up")
    # Every service is scraped: order_service counted the creates it served (one at a time here, each
    # a batch of one: create_orders).
    served = 'sum(rpc_server_calls_total{service="order_service",method=~"create_orders?",outcome="ok"})'
    assert _wait_for(lambda: (r := _query(prometheus, served)) and float(r[0]["value"][1]) >= 5, timeout=30)
    assert _wait_for(lambda: _query(prometheus, 'outbox_events_waiting{service="order_service"}'), timeout=30)
    assert _query(prometheus, 'http_request_duration_seconds_bucket{method="POST",route="/api/v1/orders"}')
    names = {route["metric"].get("route") for route in _query(prometheus, "http_requests_total")}
    assert "/api/v1/orders/{order_id}" in names or "/api/v1/orders" in names


def test_the_gateway_metrics_route_needs_no_token(stack):
    response = requests.get(stack.base_url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "http_requests_total" in response.text and "rpc_pool_proxies" in response.text
    request_id = uuid.uuid4().hex
    requests.get(stack.base_url + "/api/v1/orders/not-an-id", headers={**support.bearer(), "X-Request-ID": request_id},
                 timeout=10)
    assert 'route="/api/v1/orders/{order_id}",status="404"' in requests.get(stack.base_url + "/metrics",
                                                                              timeout=10).text


DASHBOARD = support.ROOT / "ops" / "grafana" / "dashboards" / "order-management.json"
# Renders Prometheus' graph page with the dashboard's queries, one panel each (its own
# interpreter: Playwright's sync API deadlocks under eventlet's monkey-patching).
GRAPH_SCRIPT = r"""
import sys
from playwright.sync_api import sync_playwright

url, chromium, screenshot, flags = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=flags)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    try:
        page.wait_for_selector(".graph svg path", state="attached", timeout=90_000)
        page.wait_for_timeout(3_000)
    finally:
        page.screenshot(path=screenshot, full_page=True)
        print("\n".join(errors))
    browser.close()
"""


def test_every_dashboard_panel_answers_and_renders(prometheus, api, stack):
    chromium = support.chromium_or_skip()
    customer, product = api.create_customer(), api.create_product(stock=10_000)
    finished = time.monotonic() + 12
    while time.monotonic() < finished:  # some load, some 404s and 409s, for the panels to draw
        api.create_order(customer, (product, 1))
        api.get(f"/api/v1/orders/{uuid.uuid4()}")
        api.post("/api/v1/orders", json={"customer_id": customer["id"],
                                         "items": [{"sku": product["sku"], "quantity": 100_000}]})
        time.sleep(0.2)
    time.sleep(3)
    panels = {panel["title"]: panel["targets"][0]["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"]}
    for title, expression in panels.items():
        _query(prometheus, expression)  # every query is valid PromQL over our metrics
    for title in ("Requests per second, by route", "Latency p99 by route (s)", "Errors per second (5xx and 4xx)",
                  "Service latency p99 by method (s)", "Outbox backlog (events not yet sent)",
                  "RPC pool and database pool", "Refused at the edge per minute (429, shed, open circuit)",
                  "Circuit breakers (0 closed, 1 half-open, 2 open)"):
        assert _wait_for(lambda: _query(prometheus, panels[title]), timeout=20), title

    params = {}
    for index, expression in enumerate(panels.values()):
        params.update({f"g{index}.expr": expression, f"g{index}.tab": "0", f"g{index}.range_input": "1m"})
    # Debian's prometheus ships the classic web UI.
    url = requests.Request("GET", prometheus + "/classic/graph", params=params).prepare().url
    screenshot = support.OUTPUT / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    run = subprocess.run([sys.executable, "-c", GRAPH_SCRIPT, url, chromium, str(screenshot),
                          *support.CHROMIUM_FLAGS], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert screenshot.stat().st_size > 20_000
