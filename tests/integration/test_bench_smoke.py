"""`make bench` end to end with tiny settings: it runs, reports every case and ratio, cleans up.

Numbers are not checked (a benchmark is not a test); that the run is whole is.
"""
import json
import os
import subprocess
import sys
import uuid

import pytest

from tests import support

CONNECTIONS = (1, 4)
MAIN = 4
BATCHING_CONNECTIONS = (1, MAIN, 2 * MAIN)  # as 1, 32 and 128 are by default
# About 450 s on a 2-vCPU machine shared with other test runs; a SIGKILL at the timeout would leak.
TIMEOUT_SECONDS = 900
# Below the shedding bound (a tiny run's numbers are not numbers): that the cases run and report.
OVERLOAD = 2 * MAIN
RATIO_LINES = (
    f"ratio POST@{MAIN} req/s ours/floor",
    f"ratio POST@{MAIN} req/s ours/naive",
    f"ratio POST@{MAIN} p99 ours/floor",
    f"ratio POST@{min(CONNECTIONS)} p50 ours/floor",
    f"ratio GET by id@{MAIN} req/s ours/floor",
    f"ratio POST@{MAIN} CPU per answer floor/ours",
    f"ratio POST@{MAIN} req/s metrics on/off",
    f"ratio POST@{MAIN} req/s tracing on/off",
    f"ratio POST@{MAIN} req/s tracing 100%/off",
    f"ratio POST@{MAIN // 2}+{MAIN // 2} req/s side by side tracing on/off",
    f"ratio POST@{MAIN // 2}+{MAIN // 2} CPU per answer with Postgres and RabbitMQ side by side tracing on/off",
    f"ratio POST@{MAIN // 2}+{MAIN // 2} req/s side by side tracing 100%/off",
    f"ratio POST@{MAIN // 2}+{MAIN // 2} CPU per answer with Postgres and RabbitMQ side by side tracing 100%/off",
    f"ratio POST@{MAIN // 2}+{MAIN // 2} req/s side by side metrics on/off",
    f"ratio POST@{MAIN // 2}+{MAIN // 2} CPU per answer with Postgres and RabbitMQ side by side metrics on/off",
    "ratio POST@1 p50 batching on/off",
    *(f"ratio POST@{c} {what} batching {pair}" for c in BATCHING_CONNECTIONS[1:]
      for what, pair in (("req/s", "on/off"), ("req/s", "on/floor"), ("p99", "on/off"),
                         ("CPU per answer", "on/off"), ("transactions per order", "on/off"))),
    f"ratio POST@{OVERLOAD} 2xx req/s shedding on/off",
    f"ratio POST@{OVERLOAD} 2xx p99 shedding on/off",
    f"ratio POST@{OVERLOAD} 2xx req/s shedding on, Retry-After honoured/off",
    f"ratio POST@{OVERLOAD} 2xx p99 shedding on, Retry-After honoured/off",
    f"ratio POST@{MAIN} CPU per order 1 webhook/none",
)


def _bench_env(database, results):
    """The environment of a tiny run: 1 s per case, one round, a short soak, no cluster."""
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}",
        "BENCH_SECONDS": "1",
        "BENCH_WARMUP_SECONDS": "0",
        "BENCH_SEED_ORDERS": "200",
        "BENCH_CUSTOMERS": "20",
        "BENCH_CONNECTIONS": ",".join(map(str, CONNECTIONS)),
        "BENCH_MAIN_CONNECTIONS": str(MAIN),
        "BENCH_SOAK_SECONDS": "2",
        # Starting a RabbitMQ cluster costs about a minute; the cluster fault tests start one anyway.
        "BENCH_CLUSTER": "0",
        "BENCH_OBSERVABILITY_ROUNDS": "1",
        "BENCH_BATCHING_CONNECTIONS": ",".join(map(str, BATCHING_CONNECTIONS)),
        "BENCH_BATCHING_ROUNDS": "1",
        "BENCH_OVERLOAD_CONNECTIONS": str(OVERLOAD),
        "BENCH_OVERLOAD_ROUNDS": "1",
        "BENCH_CONSUMERS_ROUNDS": "1",
        "BENCH_SOAK_CONNECTIONS": "2",
        "BENCH_SOAK_INTERVAL": "1",
        "BENCH_DATABASE": database,
        "BENCH_RESULTS": str(results),
    }
    for knob in ("BENCH_BASE_URL", "BENCH_BASELINE", "BENCH_ONLY"):  # each would leave cases out
        env.pop(knob, None)
    return env


def _expected_cases():
    """(kind, target, connections) of every case a tiny run records."""
    expected = {("post_order", target, c) for target in ("ours", "floor") for c in CONNECTIONS}
    expected |= {("post_order", "naive", MAIN), ("post_order", "ours, 2 order_service", MAIN)}
    expected |= {(kind, target, MAIN) for kind in ("get_order", "list_orders") for target in ("ours", "floor")}
    # One round of each observability configuration (BENCH_OBSERVABILITY_ROUNDS=1), and its median.
    expected |= {("post_order", target + suffix, MAIN) for suffix in ("", " #1")
                 for target in ("ours, metrics on", "ours, metrics off", "ours, tracing on", "ours, tracing 100%")}
    # Tracing off and on (at the configured ratio, then at 100%) at once, then metrics on and off,
    # a stack each with half the connections.
    expected |= {("post_order", f"side by side, {target}{suffix}", MAIN // 2) for suffix in ("", " #1")
                 for target in ("tracing off", "tracing on", "tracing off vs 100%", "tracing 100%",
                                "metrics on", "metrics off")}
    # Batching off and on at every count, the floor between them above one connection.
    expected |= {("post_order", target + suffix, c) for suffix in ("", " #1") for c in BATCHING_CONNECTIONS
                 for target in ("batching off", "batching on", *(("floor, interleaved",) if c > 1 else ()))}
    # Load shedding at its bound and off, and at its bound with clients honouring Retry-After; the
    # consumers without a webhook (also at one connection) and with one.
    expected |= {("post_order", f"ours, shedding {state}{suffix}", OVERLOAD) for suffix in ("", " #1")
                 for state in ("on", "off", "on, Retry-After honoured")}
    expected |= {("post_order", f"ours, {target}{suffix}", c) for suffix in ("", " #1")
                 for target, counts in (("no webhook", (1, MAIN)), ("1 webhook", (MAIN,))) for c in counts}
    return expected


def _bench(env, timeout=TIMEOUT_SECONDS):
    """The bench run to its end; past `timeout` stopped with SIGTERM, on which it stops what it
    started and drops its databases and vhosts (a SIGKILL would leave them behind), and failed."""
    bench = subprocess.Popen([sys.executable, "-m", "bench.run"], cwd=support.ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = bench.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        bench.terminate()
        stdout, stderr = bench.communicate(timeout=120)
        pytest.fail(f"the bench took more than {timeout} s:\n{(stdout + stderr)[-4000:]}")
    return subprocess.CompletedProcess(bench.args, bench.returncode, stdout, stderr)


def test_bench_runs_every_case_and_writes_the_results(tmp_path):
    database = f"orders_bench_smoke_{uuid.uuid4().hex[:8]}"
    results = tmp_path / "latest.json"
    run = _bench(_bench_env(database, results))
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]

    for line in RATIO_LINES:
        assert line in run.stdout, f"no '{line}' in:\n{run.stdout[-3000:]}"
    assert "machine: nproc" in run.stdout
    assert "notification_service (the order_created consumer" in run.stdout  # what emailing an order costs

    report = json.loads(results.read_text())
    assert report["valid"] is True, report["problems"]
    assert {(c["kind"], c["target"], c["connections"]) for c in report["cases"]} == _expected_cases()
    side_by_side = [c for c in report["cases"] if c["target"].startswith("side by side")]
    assert all(c["cpu_ms_per_ok_whole"] > c["cpu_ms_per_ok_total"] > 0 for c in side_by_side), side_by_side
    batching = [c for c in report["cases"] if c["target"].startswith(("batching", "floor, interleaved"))]
    assert all(c["pg_transactions_per_ok"] is not None and {"postgres", "rabbitmq"} <= set(c["cpu_ms_per_ok_request"])
               for c in batching), batching
    # Backends report transactions at most once a second: a 1-second case may see none, all of them not.
    assert sum(c["pg_transactions"] for c in batching) > 0, batching
    assert "Postgres transactions per order" in run.stdout
    overload = [c for c in report["cases"] if c["target"].startswith("ours, shedding")]
    assert all(c["ok_p99_ms"] > 0 and c["overloaded_share"] is not None for c in overload), overload
    assert all(("retry_waits" in c) == c["target"].startswith("ours, shedding on, Retry-After honoured")
               for c in overload), overload
    assert "overload, POST at" in run.stdout and "503 answers of the default stack" in run.stdout
    consumers = [c for c in report["cases"] if c["target"].startswith(("ours, no webhook", "ours, 1 webhook"))]
    assert all(c["drained"] and "webhook_service" in c["cpu_ms_per_ok_request"] for c in consumers), consumers
    delivered = [c["webhook_deliveries"] for c in consumers if c["target"] == "ours, 1 webhook #1"]
    assert len(delivered) == 1 and set(delivered[0]) == {"delivered"} and delivered[0]["delivered"] > 0, delivered
    assert "consumers, POST at" in run.stdout
    for case in report["cases"]:
        assert "failed" not in case, case
        assert case["requests"] > 0 and case["ok_rps"] > 0, case
        for field in ("p50_ms", "p90_ms", "p99_ms", "errors", "steal"):
            assert field in case, (field, case)
    assert "one empty nameko RPC hop" in run.stdout
    assert report["hop"]["calls"] > 0 and set(report["hop"]["cpu_ms_per_call"]) == {"callee", "caller", "rabbitmq"}
    assert {r["name"] for r in report["ratios"]} >= {line[len("ratio "):] for line in RATIO_LINES}
    assert report["soak"]["processes"], "the soak sampled no process"
    assert {"order_service", "gateway master"} <= {p["process"] for p in report["soak"]["processes"]}

    # What it made, it removed: its databases (the second stacks' too) and its RabbitMQ virtual host.
    assert not support.query("postgres", "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", database)
    assert report["vhost"].startswith("oms-bench-")
    vhosts = subprocess.run(["rabbitmqctl", "-q", "list_vhosts"], capture_output=True, text=True).stdout.split()
    assert report["vhost"] not in vhosts
