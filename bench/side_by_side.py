"""Two stacks at the same time, each driven by half the main connections: the default one, and a
second one (its own database, seeded alike, and vhost; the same Postgres, RabbitMQ and mail sink)
that differs in one thing: its configuration, or (BENCH_BASELINE) the checkout it runs.

Separate cases each get their own seconds of a machine whose speed moves by up to 2x; here both
stacks share every second, and on two busy cores each gets about half the CPU, so the ratio of
their req/s is about the ratio of their CPU per order. Each stack's own CPU is counted apart, and
the Postgres and RabbitMQ work an order needs is added to both.
"""
import shutil
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import cases, cpu, loadgen, seed
from bench.targets import (
    ENDPOINTS,
    OURS,
    SECOND_PREFIX,
    SECOND_STACK,
    SHARED_LABELS,
    SHARED_SERVERS,
    SIDE_BASELINE,
    SIDE_CONTROL,
    SIDE_METRICS,
    SIDE_TRACING,
    SIDE_TRACING_ALL,
)
from tests import harness


def observability_cases(bench, tracing, tracing_all):
    """Tracing off against tracing at the configured ratio (`tracing`: its environment) and at
    100% (`tracing_all`), then metrics on against off; one round per observability round each.
    The control run (BENCH_SIDE_BY_SIDE_CONTROL=1) leaves the second stack as the first: how far
    its ratios are from 1.0 is the method's own error."""
    second_env, workload = second_stack(bench)
    comparisons = ([(SIDE_CONTROL, {})] if bench.config.side_by_side_control else
                   [(SIDE_TRACING, tracing), (SIDE_TRACING_ALL, tracing_all), (SIDE_METRICS, {"METRICS_PORT": "0"})])
    for pair, overrides in comparisons:
        bench.restart_stack()
        run(bench, pair, {**second_env, **overrides}, workload)


def baseline_cases(bench):
    """This checkout's stack (after) against the same stack at BENCH_BASELINE (before), from a
    temporary git worktree of that revision with the same interpreter and packages."""
    rev = bench.config.baseline
    checkout, commit = _worktree(bench, rev)
    bench.report["baseline"] = {"rev": rev, "commit": commit}
    print(f"\nbaseline: {rev} ({commit[:12]}) side by side with this checkout", flush=True)
    second_env, workload = second_stack(bench, checkout)
    run(bench, SIDE_BASELINE, second_env, workload, checkout)


def _worktree(bench, rev):
    """A detached git worktree of `rev`, removed at the end of the run: (its path, its commit)."""
    parent = Path(tempfile.mkdtemp(prefix="oms-bench-baseline-"))
    checkout = parent / "checkout"

    def git(*args, cwd=harness.ROOT):
        return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()

    def remove():
        subprocess.run(["git", "worktree", "remove", "--force", str(checkout)], cwd=harness.ROOT, capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)

    bench.cleanups.append(("remove the baseline worktree", remove))
    try:
        git("worktree", "add", "--detach", str(checkout), rev)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"BENCH_BASELINE={rev}: git worktree add failed: {exc.stderr.strip()[:300]}") from None
    return checkout, git("rev-parse", "HEAD", cwd=checkout)


def second_stack(bench, checkout=harness.ROOT, suffix="_second"):
    """The second stack's database (BENCH_DATABASE + `suffix`, migrated by `checkout`, seeded like
    the first) and vhost: (its environment, its POST workload)."""
    cfg = bench.config
    second_db = seed.create_database(cfg.database_url, cfg.database + suffix)
    if not cfg.keep_db:
        bench.cleanups.append(("drop the second bench database", lambda: seed.drop_database(second_db)))
    harness.migrate(second_db, cwd=checkout)
    seeded = seed.seed(second_db, cfg.customers, cfg.products, cfg.seed_orders, run_tag=uuid.uuid4().hex[:8])
    vhost, amqp_uri = harness.create_vhost(cfg.amqp_uri, "oms-bench")
    bench.cleanups.append(("delete the second bench vhost", lambda: harness.delete_vhost(vhost)))
    env = {**bench.stack_env, "AMQP_URI": amqp_uri, "DATABASE_URL": second_db,
           "GATEWAY_PORT": str(harness.free_port()), "METRICS_PORT": str(harness.free_metrics_base())}
    workload = loadgen.Workload(kind="post_order", token=bench.token, customers=seeded["customers"],
                                skus=seeded["skus"], items_per_order=min(cfg.items_per_order, len(seeded["skus"])))
    return env, workload


def run(bench, pair, second_env, second_workload, checkout=harness.ROOT):
    """The default stack as `pair`[0] and a second one (`second_env`, at `checkout`) as `pair`[1],
    at the same time: a case per round and stack, then each stack's median case."""
    first, second = pair
    half = max(1, bench.config.main_connections // 2)
    stack = bench.start_process(harness.Stack(second_env, bench.logs / f"{SECOND_STACK}.log",
                                              name=SECOND_STACK, cwd=checkout))
    drives = {first: (bench.urls[OURS], bench.workload("post_order")),
              second: (stack.base_url, second_workload)}
    rounds = {first: [], second: []}
    try:
        stack.start(timeout=90)
        both(bench, drives, half, max(bench.config.warmup, 2))
        for n in range(bench.config.observability_rounds):
            for target, case in _round(bench, drives, second, half, n + 1).items():
                rounds[target].append(case)
                bench.cases.append(case)
    except Exception as exc:  # recorded: the other cases still tell something
        bench.problems.append(f"{second}: {exc.__class__.__name__}: {exc}")
        print(f"  {second} FAILED {exc}", flush=True)
    finally:
        stack.stop()
    for target, measured in rounds.items():
        if measured:
            bench.cases.append(cases.median_case(target, measured))


def both(bench, drives, connections, seconds):
    """Load on both stacks at once: {target: load result}."""
    with ThreadPoolExecutor(len(drives)) as pool:
        runs = {target: pool.submit(loadgen.run, bench.loadgen, url, workload, connections, seconds)
                for target, (url, workload) in drives.items()}
        return {target: run.result() for target, run in runs.items()}


def _round(bench, drives, second, half, number):
    """One measured round on both stacks: {target: its case}."""
    labels = bench.cpu_labels()
    before, started = cpu.snapshot(labels), time.monotonic()
    results = both(bench, drives, half, bench.config.seconds)
    used = cpu.usage(before, cpu.snapshot(labels), time.monotonic() - started, bench.report["machine"]["usable_cpus"])
    # Postgres and RabbitMQ serve both stacks: their CPU per answer of either, which an order of
    # one needs as much as one of the other, completes each stack's CPU per order.
    answers = sum(result["requests"] - result["non2xx"] for result in results.values())
    shared_ms = round(1000 * sum(used["seconds"].get(label) or 0 for label in SHARED_SERVERS)
                      / answers, 2) if answers else None
    measured = {}
    for target, result in results.items():
        case = _side_case(bench, target, target == second, number, half, result, used)
        case["shared_cpu_ms_per_ok"] = shared_ms
        case["cpu_ms_per_ok_whole"] = None if shared_ms is None else round(case["cpu_ms_per_ok_total"] + shared_ms, 2)
        measured[target] = case
    return measured


def _side_case(bench, target, on_second_stack, round_number, connections, result, used):
    """A case of a side-by-side run: its own stack's CPU per 2xx answer only."""
    mine = {label.removeprefix(SECOND_PREFIX): value for label, value in used["seconds"].items()
            if label.startswith(SECOND_PREFIX) == on_second_stack and label not in SHARED_LABELS}
    case = {"name": f"{ENDPOINTS['post_order']} | {target} #{round_number} | c{connections}",
            "endpoint": ENDPOINTS["post_order"], "kind": "post_order", "target": f"{target} #{round_number}",
            "connections": connections}
    return cases.record(bench, case, result, used, mine)
