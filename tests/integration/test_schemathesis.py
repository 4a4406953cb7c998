"""Thousands of generated requests against the running stack, judged by /api/v1/openapi.json.

Schemathesis reads the document the gateway serves, generates valid and
invalid requests for every operation (examples, coverage of each constraint's
edges, random fuzzing and stateful sequences that reuse the ids responses
return) with an admin token, and checks every answer:

- not_a_server_error: never a 5xx;
- status_code_conformance: only statuses the document lists for the operation;
- content_type_conformance: the documented media type;
- response_headers_conformance: documented headers (ETag, Location, X-Request-ID) as described;
- response_schema_conformance: the body validates against the documented schema.

The seed is fixed so a failure reproduces (`SCHEMATHESIS_SEED=<n>` tries another);
the output and reports (NDJSON, JUnit) land in test-output/schemathesis/, and
every failure is printed with a curl command that reproduces it.
"""
import json
import os
import shutil
import subprocess
import sys
import time

from tests import support

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance")
MIN_REQUESTS = 2000
MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "150"))
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261121")
# ~150 s on an idle 2-CPU machine; a virtual machine whose hypervisor takes a
# third of its CPU time (seen here) needs more. A limit, not a target.
TIME_LIMIT_SECONDS = 360


def seed_data(api):
    """Orders in several states: GET /api/v1/orders hands their ids to the order operations."""
    customer = api.create_customer()
    products = [api.create_product(stock=100_000) for _ in range(3)]
    for n in range(9):
        order = api.create_order(customer, (products[n % 3], 1 + n))
        if n % 3 == 1:
            assert api.set_status(order, "processing").status_code == 200
        if n % 3 == 2:
            assert api.set_status(order, "cancelled").status_code == 200


def requests_sent(report_dir):
    """The HTTP requests schemathesis made, counted from its NDJSON event stream."""
    count = 0
    for path in report_dir.glob("*.ndjson"):
        for line in path.read_text().splitlines():
            event = json.loads(line).get("ScenarioFinished")
            if event:
                count += len(event["recorder"].get("interactions", {}))
    return count


def test_generated_requests_find_no_server_error_and_no_schema_violation(stack, api):
    seed_data(api)
    report_dir = support.OUTPUT / "schemathesis"
    shutil.rmtree(report_dir, ignore_errors=True)  # this run's reports only
    report_dir.mkdir(parents=True)
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{stack.base_url}/api/v1/openapi.json",
        "--header", f"Authorization: Bearer {support.token('admin', ttl_seconds=3600)}",
        "--checks", ",".join(CHECKS),
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", SEED,
        # One worker: with several, hypothesis' lambda-source introspection (ast.parse in threads)
        # intermittently crashes on CPython 3.11 ("AST constructor recursion depth mismatch").
        "--workers", "1",
        "--generation-database", "none",
        "--request-timeout", "30",
        "--report", "ndjson,junit", "--report-dir", str(report_dir),
        "--no-color",
    ]
    started = time.monotonic()
    result = subprocess.run(command, cwd=report_dir, capture_output=True, text=True, timeout=TIME_LIMIT_SECONDS)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    (report_dir / "output.txt").write_text(output)

    summary = output[output.rfind("= FAILURES ="):] if "= FAILURES =" in output else output[-6000:]
    assert result.returncode == 0, f"schemathesis found problems (all of it in {report_dir}):\n{summary}"
    sent = requests_sent(report_dir)
    assert sent >= MIN_REQUESTS, f"only {sent} requests in {elapsed:.0f}s; raise SCHEMATHESIS_MAX_EXAMPLES"
    print(f"schemathesis: {sent} requests in {elapsed:.0f}s, no failures")
