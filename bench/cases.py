"""The cases: one case is load on one target for BENCH_SECONDS, with the CPU every part used meanwhile.

Each function takes the run (bench.run.Bench: its settings, processes, seed and results) and adds
its cases to it. A case that fails is recorded and the run goes on: the other cases still tell
something, but the run's exit status says it is broken.
"""
import dataclasses
import statistics
import sys
import time

from bench import cpu, loadgen, seed
from bench.targets import (
    CLUSTER_1,
    CLUSTER_2,
    ENDPOINTS,
    FLOOR,
    NAIVE,
    NOT_THE_SYSTEM,
    OTHER_LOAD_WARNING,
    OURS,
    OURS_2X,
    SHED_OFF,
    SHED_ON,
    SHED_WAIT,
    SHEDDING_OFF,
)
from common.contract.services import BY_NAME, SERVICES
from tests import harness

RUNNER = [sys.executable, "-m", "common.kit.runner", "run"]


def new_case(kind, target, connections):
    return {"name": f"{ENDPOINTS[kind]} | {target} | c{connections}", "endpoint": ENDPOINTS[kind], "kind": kind,
            "target": target, "connections": connections}


def run_case(bench, kind, target, connections, url_key=None):
    """Load `kind` at `connections` on `target` (served at bench.urls[url_key or target]): the case."""
    stack = None if target == FLOOR else bench.processes.get("stack")
    return load_case(bench, new_case(kind, target, connections), bench.urls[url_key or target],
                     bench.workload(kind), stack)


def load_case(bench, case, url, workload, stack=None, database_url=None, own=None, **how):
    """Measure `case` (new_case) on `url` with `workload` (see `measure`, and its `how`) and add it
    to the run; `own` picks the CPU seconds by label that count for it (default: all of them)."""
    bench.cases.append(case)
    try:
        result, used = measure(bench, url, workload, case["connections"], stack, database_url, **how)
    except Exception as exc:  # recorded: the run is broken, but the other cases still tell something
        case["failed"] = f"{exc.__class__.__name__}: {exc}"
        bench.problems.append(f"{case['name']}: {case['failed']}")
        print(f"  {case['name']:<58} FAILED {case['failed']}", flush=True)
        return case
    except BaseException:  # Ctrl-C or SIGTERM: the run ends here
        case["failed"] = "interrupted"
        raise
    return record(bench, case, result, used, own(used["seconds"]) if own else used["seconds"])


def measure(bench, url, workload, connections, stack=None, database_url=None, generator=None, drain=None):
    """One request must answer 2xx (and `stack`, a harness process serving `url`, be alive); then
    the warm-up, then the measured load and the CPU it took. With `database_url`, the result also
    has the transactions Postgres ended in that database meanwhile (`pg_transactions`). `generator`:
    the load generator (default the run's). `drain`: a callable that waits until the work the load
    left behind is done, (seconds waited, whether it was): called after the warm-up (unmeasured)
    and after the load, whose CPU then runs until it returns (`drain_seconds`, `drained`)."""
    cfg, generator = bench.config, generator or bench.loadgen
    if stack is not None and not stack.alive():
        raise RuntimeError(f"the stack exited during the run; see {bench.shown(stack.log_path)}")
    status, body = loadgen.one_request(url, workload)
    if not 200 <= status <= 299:
        raise RuntimeError(f"first request answered {status}: {body[:300]}")
    if cfg.warmup:
        loadgen.run(generator, url, workload, connections, cfg.warmup)
    if drain:
        drain()
    labels = bench.cpu_labels()
    transactions = seed.transactions(database_url) if database_url else None
    before, started = cpu.snapshot(labels), time.monotonic()
    result = loadgen.run(generator, url, workload, connections, cfg.seconds)
    if drain:
        result["drain_seconds"], result["drained"] = drain()
    used = cpu.usage(before, cpu.snapshot(labels), time.monotonic() - started, bench.report["machine"]["usable_cpus"])
    if transactions is not None:
        result["pg_transactions"] = seed.transactions(database_url) - transactions
    return result, used


def record(bench, case, result, used, cpu_seconds):
    """Fill `case` from a load run's `result` and the CPU `used` meanwhile (`cpu_seconds`: the
    CPU seconds by label that count for this case), and print its line."""
    ok = result["requests"] - result["non2xx"]
    case.update(result)
    case["ok_rps"] = round(ok / result["seconds"], 1) if result["seconds"] else 0.0
    case["cpu_seconds"] = cpu_seconds
    case["machine_busy"] = used["machine_busy"]
    # With BENCH_BASE_URL the stack is not ours to label: its processes land in "other".
    case["other_load"] = None if bench.config.base_url else used["other_share"]
    case["steal"] = used["steal_share"]
    case["cpu_ms_per_ok_request"] = {label: round(1000 * value / ok, 2) if ok else None
                                     for label, value in cpu_seconds.items()}
    case["cpu_ms_per_ok_total"] = round(sum(
        value or 0 for label, value in case["cpu_ms_per_ok_request"].items() if label not in NOT_THE_SYSTEM), 2)
    if "pg_transactions" in result:
        case["pg_transactions_per_ok"] = round(result["pg_transactions"] / ok, 2) if ok else None
    if "overloaded" in result:  # the Python load generator's
        case["overloaded_share"] = round(result["overloaded"] / result["requests"], 3) if result["requests"] else None
    apart = (f"  (2xx p99 {case['ok_p99_ms']:.2f} ms; 503 overloaded {100 * case['overloaded_share']:.0f}%)"
             if result.get("non2xx") and case.get("overloaded_share") is not None else "")
    drained = "" if "drained" not in result else (
        f"  (its work done {result['drain_seconds']:.1f} s after the load)" if result["drained"] else
        f"  [!] its work was not done {result['drain_seconds']:.0f} s after the load: CPU per order is low")
    print(f"  {case['name']:<58} {case['ok_rps']:>8.1f} req/s  p50 {case['p50_ms']:>7.2f}  "
          f"p99 {case['p99_ms']:>8.2f} ms  errors {case['errors']}{apart}{drained}", flush=True)
    if case["steal"] is not None and case["steal"] > OTHER_LOAD_WARNING:
        print(f"    [!] the hypervisor ran someone else on {case['steal'] * 100:.0f}% of our CPU time (steal): "
              "this case's numbers are low", flush=True)
    if case["other_load"] is not None and case["other_load"] > OTHER_LOAD_WARNING:
        print(f"    [!] {case['other_load'] * 100:.0f}% of the machine was busy with processes the bench did "
              "not start: this case's numbers are low", flush=True)
    return case


def median_case(target, rounds):
    """One case for `target`: the median of its rounds' numbers (equal lengths), their errors summed.
    Not the mean: on this VM a 10-second case can run while the machine is slowed (every process's
    CPU per order up to 1.9x, the database's and RabbitMQ's too, with no steal reported), and that
    one round would decide a ratio."""
    first = rounds[0]
    case = {key: first[key] for key in ("endpoint", "kind", "connections")}
    case.update(name=f"{first['endpoint']} | {target} | c{first['connections']}", target=target, rounds=len(rounds))
    failed = [r["failed"] for r in rounds if "failed" in r]
    if failed:
        case["failed"] = "; ".join(failed)
        return case
    for key, value in first.items():
        if key not in case:
            case[key] = _merged(key, value, rounds)
    return case


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def _merged(key, value, rounds):
    """Field `key` (first round's `value`) of the median case: counts summed, numbers' medians."""
    if key == "drained":
        return all(r.get(key) for r in rounds)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if key in ("requests", "non2xx", "errors", "overloaded", "retry_waits"):
            return sum(r[key] for r in rounds)
        return _median(r.get(key) for r in rounds)
    if key == "cpu_ms_per_ok_request":
        labels = {label for r in rounds for label in r[key]}
        return {label: _median(r[key].get(label) for r in rounds) for label in sorted(labels)}
    if key == "statuses":
        statuses = {}
        for r in rounds:
            for status, n in r[key].items():
                statuses[status] = statuses.get(status, 0) + n
        return statuses
    return value


# ---- the groups of cases -------------------------------------------------------

def peer_cases(bench):
    """Ours against the floor (the POST sweep, GET by id, GET list) and the naive peer (POST)."""
    cfg, m = bench.config, bench.config.main_connections
    bench.start_gunicorn(FLOOR, "bench.floor_app:app")
    print(f"\ncases: {cfg.warmup}s warm-up + {cfg.seconds}s each, load generator {bench.loadgen}", flush=True)
    for c in cfg.connections:
        run_case(bench, "post_order", OURS, c)
        run_case(bench, "post_order", FLOOR, c)
    bench.start_gunicorn(NAIVE, "bench.naive_gateway:app")
    run_case(bench, "post_order", NAIVE, m)
    bench.processes[NAIVE].stop()
    for kind in ("get_order", "list_orders"):
        run_case(bench, kind, OURS, m)
        run_case(bench, kind, FLOOR, m)
    bench.processes[FLOOR].stop()


def _wait_consumers(bench, process, queue, count, timeout=60):
    """Until `queue` has `count` consumers (or `process` exited, or `timeout`): how many it has."""
    deadline, consumers = time.monotonic() + timeout, None
    while time.monotonic() < deadline and process.alive():
        consumers = harness.queue_consumers(bench.vhost, queue)
        if consumers is not None and consumers >= count:
            break
        time.sleep(0.5)
    return consumers


def scale_case(bench):
    """POST at the main connections with a second order_service consuming the same RPC queue."""
    m = bench.config.main_connections
    if bench.config.base_url:
        print("  (skipping 2 x order_service: the stack was not started by the bench)")
        bench.report["scale"] = "skipped: BENCH_BASE_URL"
        return
    second = bench.start("order_service_2", [*RUNNER, BY_NAME["order_service"].module],
                         {**bench.stack_env, "METRICS_PORT": str(harness.free_metrics_base())})
    consumers = _wait_consumers(bench, second, "rpc-order_service", 2)
    if consumers is None or consumers < 2:
        case = {**new_case("post_order", OURS_2X, m),
                "failed": f"the second order_service did not start consuming (consumers: {consumers}); "
                          f"see {second.log_path.name}"}
        bench.cases.append(case)
        bench.problems.append(case["name"] + ": " + case["failed"])
    else:
        run_case(bench, "post_order", OURS_2X, m, url_key=OURS)
    second.stop()


def hop_case(bench):
    """One empty nameko RPC at a time, with an order-sized payload: CPU per call of
    the callee, the caller and RabbitMQ. The order path pays this twice (gateway ->
    order_service -> inventory_service) before it does anything."""
    if bench.config.base_url:
        bench.report["hop"] = "skipped: BENCH_BASE_URL"
        return
    service = bench.start("ping_service", [*RUNNER, "bench.ping_service:PingService"], bench.stack_env)
    _wait_consumers(bench, service, "rpc-bench_ping", 1)
    try:
        calls, seconds, used = _hop_calls(bench, service)
    except Exception as exc:  # recorded, like a failed case: the other numbers still stand
        bench.problems.append(f"empty RPC hop: {exc.__class__.__name__}: {exc}")
        print(f"  empty RPC hop: FAILED {exc!r}", flush=True)
        return
    finally:
        service.stop()
    per_call = {"callee": used["seconds"].get("callee", 0.0), "caller": used["seconds"]["load generator"],
                "rabbitmq": used["seconds"].get("rabbitmq", 0.0)}
    per_call = {label: round(1000 * value / calls, 2) for label, value in per_call.items()}
    bench.report["hop"] = {"calls": calls, "ms_per_call": round(1000 * seconds / calls, 2),
                           "cpu_ms_per_call": per_call, "cpu_ms_total": round(sum(per_call.values()), 2),
                           "steal": used["steal_share"]}
    print(f"  one empty RPC hop, one call at a time: {1000 * seconds / calls:.2f} ms per call; CPU per call: "
          + ", ".join(f"{label} {value:.2f}" for label, value in per_call.items())
          + f" = {sum(per_call.values()):.2f} ms", flush=True)


def _hop_calls(bench, service):
    """Calls to the ping service for BENCH_SECONDS after 50 unmeasured: (calls, seconds, CPU used)."""
    from common.contract.settings import load_settings
    from common.kit import patches
    from common.kit.rpc import SignedClusterRpcProxy

    payload = {"customer_id": bench.seed["customers"][0],  # the shape of a POST /orders body
               "items": [{"sku": sku, "quantity": 1} for sku in bench.seed["skus"][:bench.config.items_per_order]]}
    patches.apply([patches.KEPT_PRODUCER_CONNECTIONS])  # as the gateway's callers have it
    # Signed as every caller's calls are (the ping service checks them as ours do): part of the hop's cost.
    config = load_settings(bench.stack_env).nameko_config()  # what the ping service reads
    with SignedClusterRpcProxy(config, context_data={"caller": {"sub": "bench", "role": "admin"}},
                               timeout=10) as proxy:
        for _ in range(50):
            proxy.bench_ping.ping(payload)
        labels = {pid: "callee" for pid in service.tree()}
        before, started, calls = cpu.snapshot(labels), time.monotonic(), 0
        while time.monotonic() - started < bench.config.seconds:
            proxy.bench_ping.ping(payload)
            calls += 1
        seconds = time.monotonic() - started
        return calls, seconds, cpu.usage(before, cpu.snapshot(labels), seconds, bench.report["machine"]["usable_cpus"])


def cluster_cases(bench):
    """POST at the main connections on a 3-node RabbitMQ cluster of the bench's own
    (scripts/rabbitmq_nodes.py; quorum queues, every node in AMQP_URI), first with one
    instance of every service, then with a second of each. Compared with `ours, metrics
    on` (one node, freshly started the same way). Then the default stack again."""
    m = bench.config.main_connections
    if bench.config.base_url:
        bench.report["cluster"] = "skipped: BENCH_BASE_URL"
        return
    from scripts.rabbitmq_nodes import cluster_nodes, failover_uri, start_cluster

    nodes = cluster_nodes(3, harness.free_node_port(nodes=3), bench.logs.parent / "rabbitmq")
    bench.cleanups.append(("stop the bench's RabbitMQ cluster", lambda: [node.stop() for node in nodes]))
    print("starting a 3-node RabbitMQ cluster ...", flush=True)
    cluster = {"AMQP_URI": start_cluster(nodes), "AMQP_QUORUM_QUEUES": "true", "MAX_WORKERS": "5"}
    bench.restart_stack(**cluster)
    run_case(bench, "post_order", CLUSTER_1, m, url_key=OURS)
    second_env = {**bench.stack_env, **cluster, "AMQP_URI": failover_uri(nodes[1:] + nodes[:1]),
                  "METRICS_PORT": str(harness.free_metrics_base())}
    seconds = {service.name: bench.start(f"{service.name}_2", [*RUNNER, service.module], second_env)
               for service in SERVICES}
    order_service = BY_NAME["order_service"]
    order_metrics = f"http://127.0.0.1:{int(second_env['METRICS_PORT']) + order_service.metrics_offset}/metrics"
    harness.wait_http(order_metrics, 60, seconds[order_service.name])
    run_case(bench, "post_order", CLUSTER_2, m, url_key=OURS)
    for second in seconds.values():
        second.stop()
    bench.restart_stack()
    for node in reversed(nodes):
        node.stop()


def separate_cases(bench, configurations, rounds=None, measure_one=None):
    """Cases on a freshly started stack per round and configuration (target, environment
    overrides): after unrecorded load, the rounds in the order A B C D D C B A A B C D (`rounds`,
    default BENCH_OBSERVABILITY_ROUNDS), so that neither the place after a restart nor drift over
    the minutes favours one; then each configuration's median round at each count.
    `measure_one(target, name)` runs one round's cases on the started stack (`name`: the target
    and the round) and returns them; default: POST at the main connections."""
    m = bench.config.main_connections

    def post_at_main(target, name):
        return [run_case(bench, "post_order", name, m, url_key=OURS)]

    measure_one = measure_one or post_at_main
    # Unrecorded load first, on the default stack: the first load after seeding pays for the
    # database settling (autovacuum, cold caches), up to a fifth of its req/s.
    loadgen.run(bench.loadgen, bench.urls[OURS], bench.workload("post_order"), m, bench.config.seconds)
    rounds = rounds or bench.config.observability_rounds
    order = [configurations if n % 2 == 0 else configurations[::-1] for n in range(rounds)]
    measured, done = {}, {target: 0 for target, _ in configurations}  # {(target, connections): [cases]}
    for target, overrides in [pair for one_round in order for pair in one_round]:
        bench.restart_stack(**overrides)
        done[target] += 1
        for case in measure_one(target, f"{target} #{done[target]}"):
            measured.setdefault((target, case["connections"]), []).append(case)
    for (target, _), cases in measured.items():
        bench.cases.append(median_case(target, cases))


def overload_cases(bench):
    """POST at BENCH_OVERLOAD_CONNECTIONS on the default stack, load shedding at its bound
    (GATEWAY_MAX_IN_FLIGHT), and with it out of reach (today's behaviour: every request waits
    for a thread), by clients that send again at once; and at the bound by clients that wait out
    Retry-After (loadgen's `honour_retry_after`), as a well-kept client does. BENCH_OVERLOAD_ROUNDS
    rounds each. Always the Python load generator: it keeps the 2xx answers' latency apart from
    the 503s' (wrk cannot), and only it waits. Then the default stack again."""
    cfg = bench.config
    if cfg.base_url:
        bench.report["overload"] = "skipped: BENCH_BASE_URL"
        return
    bench.report["overload"] = {"connections": cfg.overload_connections, "rounds": cfg.overload_rounds,
                                "on": {"GATEWAY_MAX_IN_FLIGHT": cfg.max_in_flight}, "off": SHEDDING_OFF,
                                "honoured": {"GATEWAY_MAX_IN_FLIGHT": cfg.max_in_flight,
                                             "clients": "wait Retry-After plus up to as much again"},
                                "loadgen": "python"}
    print(f"\noverload: POST at {cfg.overload_connections} connections, shedding on (GATEWAY_MAX_IN_FLIGHT "
          f"{cfg.max_in_flight} per gateway process) and off ({SHEDDING_OFF['GATEWAY_MAX_IN_FLIGHT']}) by clients "
          "that send again at once, and on by clients that honour Retry-After; "
          "Python load generator (latency of 2xx answers apart)", flush=True)

    def at_overload(target, name):
        case = new_case("post_order", name, cfg.overload_connections)
        # Each target's own clients, the warm-up's too: a stack warmed by clients that never wait
        # would start its measured seconds with a backlog the waiting ones did not make.
        workload = dataclasses.replace(bench.workload("post_order"), honour_retry_after=target == SHED_WAIT)
        return [load_case(bench, case, bench.urls[OURS], workload, bench.processes["stack"], generator="python")]

    separate_cases(bench, [(SHED_ON, {}), (SHED_OFF, SHEDDING_OFF), (SHED_WAIT, {})], cfg.overload_rounds,
                   at_overload)
    bench.restart_stack()
