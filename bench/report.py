"""The report of a run: the ratios and their targets, the table printed at the end, the JSON file."""
import json

from bench.targets import (
    BATCH_FLOOR,
    BATCH_OFF,
    BATCH_ON,
    CLUSTER_1,
    CLUSTER_2,
    ENDPOINTS,
    FLOOR,
    MAIL_SINK,
    METRICS_OFF,
    METRICS_ON,
    NAIVE,
    NO_WEBHOOK,
    ONE_WEBHOOK,
    OTHER_LOAD_WARNING,
    OURS,
    OURS_2X,
    SHED_OFF,
    SHED_ON,
    SHED_WAIT,
    SHEDDING_OFF,
    SIDE_BASELINE,
    SIDE_CONTROL,
    SIDE_METRICS,
    SIDE_TRACING,
    SIDE_TRACING_ALL,
    TRACING_ALL,
    TRACING_ON,
    WEBHOOK_RECEIVER,
)

WHOLE = "CPU per answer with Postgres and RabbitMQ"


def find_case(cases, kind, target, connections):
    """The measured case (kind, target, connections), or None (absent, failed, or no requests)."""
    for case in cases:
        if (case["kind"], case["target"], case["connections"]) == (kind, target, connections):
            return case if "failed" not in case and case.get("requests") else None
    return None


def _specs(config):
    """(name, kind, a, b, connections, field, op, target) of every ratio a / b (with BENCH_BASELINE,
    of the only comparison that runs)."""
    m, low, o = config.main_connections, min(config.connections), config.overload_connections
    h = max(1, m // 2)
    both = f"{m // 2}+{m // 2}"
    post = "post_order"
    if config.baseline:
        return [(f"POST@{both} req/s side by side after/before", post, *SIDE_BASELINE, h, "ok_rps", None, None),
                (f"POST@{both} {WHOLE} side by side after/before", post, *SIDE_BASELINE, h, "cpu_ms_per_ok_whole",
                 None, None)]
    return [
        (f"POST@{m} req/s ours/floor", post, OURS, FLOOR, m, "ok_rps", ">=", 0.5),
        (f"POST@{m} req/s ours/naive", post, OURS, NAIVE, m, "ok_rps", ">=", 8),
        (f"POST@{m} p99 ours/floor", post, OURS, FLOOR, m, "p99_ms", "<=", 2),
        (f"POST@{low} p50 ours/floor", post, OURS, FLOOR, low, "p50_ms", "<=", 3),
        (f"GET by id@{m} req/s ours/floor", "get_order", OURS, FLOOR, m, "ok_rps", ">=", 0.6),
        (f"GET list@{m} req/s ours/floor", "list_orders", OURS, FLOOR, m, "ok_rps", None, None),
        (f"POST@{m} req/s 2 order_service/1", post, OURS_2X, OURS, m, "ok_rps", None, None),
        (f"POST@{m} req/s metrics on/off", post, METRICS_ON, METRICS_OFF, m, "ok_rps", ">=", 0.95),
        (f"POST@{m} req/s tracing on/off", post, TRACING_ON, METRICS_ON, m, "ok_rps", ">=", 0.85),
        (f"POST@{m} req/s tracing 100%/off", post, TRACING_ALL, METRICS_ON, m, "ok_rps", None, None),
        (f"POST@{both} req/s side by side tracing on/off", post, *SIDE_TRACING[::-1], h, "ok_rps", ">=", 0.85),
        (f"POST@{both} CPU per answer side by side off/on", post, *SIDE_TRACING, h, "cpu_ms_per_ok_total", None, None),
        # With the Postgres and RabbitMQ work each order needs: tracing's CPU per order on the
        # whole machine, which is what bounds req/s on CPU-bound cores.
        (f"POST@{both} {WHOLE} side by side tracing on/off", post, *SIDE_TRACING[::-1], h, "cpu_ms_per_ok_whole",
         "<=", 1.15),
        (f"POST@{both} req/s side by side tracing 100%/off", post, *SIDE_TRACING_ALL[::-1], h, "ok_rps", None, None),
        (f"POST@{both} {WHOLE} side by side tracing 100%/off", post, *SIDE_TRACING_ALL[::-1], h,
         "cpu_ms_per_ok_whole", None, None),
        (f"POST@{both} req/s side by side metrics on/off", post, *SIDE_METRICS, h, "ok_rps", ">=", 0.95),
        (f"POST@{both} {WHOLE} side by side metrics on/off", post, *SIDE_METRICS, h, "cpu_ms_per_ok_whole",
         "<=", 1.05),
        (f"POST@{both} req/s side by side control second/first", post, *SIDE_CONTROL[::-1], h, "ok_rps", None, None),
        (f"POST@{both} {WHOLE} side by side control second/first", post, *SIDE_CONTROL[::-1], h,
         "cpu_ms_per_ok_whole", None, None),
        (f"POST@{m} req/s cluster/one node", post, CLUSTER_1, METRICS_ON, m, "ok_rps", None, None),
        (f"POST@{m} req/s cluster 2 each/1 each", post, CLUSTER_2, CLUSTER_1, m, "ok_rps", None, None),
        (f"POST@{m} CPU per answer one node/cluster", post, METRICS_ON, CLUSTER_1, m, "cpu_ms_per_ok_total",
         None, None),
        # What req/s ours/floor would be if both were CPU-bound on the same CPUs:
        # CPU per answer moves far less than req/s when a hypervisor steals time.
        (f"POST@{m} CPU per answer floor/ours", post, FLOOR, OURS, m, "cpu_ms_per_ok_total", None, None),
        (f"GET by id@{m} CPU per answer floor/ours", "get_order", FLOOR, OURS, m, "cpu_ms_per_ok_total", None, None),
        *_batching_specs(config),
        # Load shedding at its bound against (practically) none, at BENCH_OVERLOAD_CONNECTIONS: the
        # 2xx answers only (the Python load generator keeps their latency apart). Then at the bound
        # with clients that wait out Retry-After, against none with clients that send again at once.
        (f"POST@{o} 2xx req/s shedding on/off", post, SHED_ON, SHED_OFF, o, "ok_rps", None, None),
        (f"POST@{o} 2xx p99 shedding on/off", post, SHED_ON, SHED_OFF, o, "ok_p99_ms", None, None),
        (f"POST@{o} 2xx req/s shedding on, Retry-After honoured/off", post, SHED_WAIT, SHED_OFF, o, "ok_rps",
         None, None),
        (f"POST@{o} 2xx p99 shedding on, Retry-After honoured/off", post, SHED_WAIT, SHED_OFF, o, "ok_p99_ms",
         None, None),
        # The whole system's CPU per created order (Postgres and RabbitMQ included), its consumers'
        # work done: with one webhook on order_created over without.
        (f"POST@{m} CPU per order 1 webhook/none", post, ONE_WEBHOOK, NO_WEBHOOK, m, "cpu_ms_per_ok_total",
         None, None),
    ]


def _batching_specs(config):
    """Batching on against off and the floor (batching.py): the targets at the main connections,
    the same ratios without a target at the other counts, p50 at the fewest connections."""
    post, low = "post_order", min(config.batching_connections)
    specs = [(f"POST@{low} p50 batching on/off", post, BATCH_ON, BATCH_OFF, low, "p50_ms", "<=", 1.0)]
    for c in (c for c in config.batching_connections if c > 1):
        at_least = (lambda value: (">=", value)) if c == config.main_connections else (lambda value: (None, None))
        specs += [
            (f"POST@{c} req/s batching on/off", post, BATCH_ON, BATCH_OFF, c, "ok_rps", *at_least(2)),
            (f"POST@{c} req/s batching on/floor", post, BATCH_ON, BATCH_FLOOR, c, "ok_rps", *at_least(0.25)),
            (f"POST@{c} p99 batching on/off", post, BATCH_ON, BATCH_OFF, c, "p99_ms", None, None),
            (f"POST@{c} CPU per answer batching on/off", post, BATCH_ON, BATCH_OFF, c, "cpu_ms_per_ok_total",
             None, None),
            (f"POST@{c} transactions per order batching on/off", post, BATCH_ON, BATCH_OFF, c,
             "pg_transactions_per_ok", None, None),
        ]
    return specs


def ratios(cases, config):
    entries = []
    for name, kind, a, b, conns, field, op, target in _specs(config):
        ca, cb = find_case(cases, kind, a, conns), find_case(cases, kind, b, conns)
        value = round(ca[field] / cb[field], 3) if ca and cb and ca.get(field) is not None and cb.get(field) else None
        entry = {"name": name, "value": value, "op": op, "target": target}
        if target is not None:
            entry["pass"] = None if value is None else (value >= target if op == ">=" else value <= target)
        # A shed answer (503 overloaded) is what a case past the bound measures, not a broken answer.
        suspect = [c["name"] for c in (ca, cb) if c and c["errors"] - c.get("overloaded", 0)]
        if suspect:
            entry["errors_in"] = suspect
        entries.append(entry)
    return entries


# ---- the printed report ----------------------------------------------------------

def print_report(bench, ratios):
    _print_header(bench)
    _print_table(bench.cases)
    _print_cpu(bench)
    _print_off_the_path(bench)
    _print_batching(bench)
    _print_overload(bench)
    _print_consumers(bench)
    print("\nratios (this run):")
    for entry in ratios:
        value = "n/a" if entry["value"] is None else f"{entry['value']:.2f}"
        if entry["target"] is None:
            verdict, target = "", "(no target)"
        else:
            verdict = "n/a" if entry["pass"] is None else ("PASS" if entry["pass"] else "MISS")
            target = f"(target {entry['op']} {entry['target']})"
        note = "  [errors in the compared cases]" if entry.get("errors_in") else ""
        print(f"ratio {entry['name']:<42} {value:>7} {target:<16} {verdict}{note}")
    if bench.problems:
        print("\nproblems (the numbers above are not all true):")
        for problem in bench.problems:
            print("  - " + problem)


def _print_header(bench):
    cfg, mach = bench.config, bench.report["machine"]
    print("\n" + "=" * 100)
    print(f"machine: {mach['nproc']} CPUs ({mach['usable_cpus']} usable), {mach['cpu_model']}, "
          f"{mach['ram_gib']} GiB RAM, kernel {mach['kernel']}, Python {mach['python']}, "
          f"Postgres {bench.report.get('postgres', '?')}; "
          f"busy before the run: {mach.get('busy_before_start', 0) * 100:.0f}%")
    print(f"load generator: {bench.report.get('loadgen')}; gateway and peers: gunicorn gthread "
          f"{cfg.workers} workers x {cfg.threads} threads; everything on this machine, 127.0.0.1 only")
    print(f"seeded: {bench.report.get('seed', {}).get('orders', '?')} orders; {cfg.warmup}s warm-up + "
          f"{cfg.seconds}s per case; auth enforced by the gateway: {bench.report.get('auth_enforced')}")
    print(f"tracing cases: OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG "
          f"{cfg.trace_ratio:g} (tracing on: the configured ratio) or 1 (tracing 100%)")
    print("req/s counts 2xx answers only; latency covers every answer; errors = non-2xx + socket errors")


def _print_table(cases):
    header = f"{'case':<34} {'target':<22} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} " \
             f"{'p99 ms':>8} {'errors':>7}"
    for endpoint in ENDPOINTS.values():
        rows = [c for c in cases if c["endpoint"] == endpoint]
        if not rows:
            continue
        print("\n" + header)
        print("-" * len(header))
        for case in rows:
            if "failed" in case:
                print(f"{endpoint:<34} {case['target']:<22} {case['connections']:>5}   FAILED: {case['failed']}")
                continue
            errors = str(case["errors"])
            if case["statuses"]:
                errors += " " + ",".join(f"{k}x{v}" for k, v in case["statuses"].items())
            noisy = "  [!] other load {:.0f}%".format(case["other_load"] * 100) \
                if (case.get("other_load") or 0) > OTHER_LOAD_WARNING else ""
            if (case.get("steal") or 0) > OTHER_LOAD_WARNING:
                noisy += "  [!] steal {:.0f}%".format(case["steal"] * 100)
            print(f"{endpoint:<34} {case['target']:<22} {case['connections']:>5} {case['ok_rps']:>9.1f} "
                  f"{case['p50_ms']:>8.2f} {case['p90_ms']:>8.2f} {case['p99_ms']:>8.2f} {errors:>7}{noisy}")
    samples = [c for c in cases if c.get("error_sample")]
    if samples:
        print("\nfirst error answer per case:")
        for case in samples:
            print(f"  {case['name']}: {case['error_sample'][:160]}")


def _print_cpu(bench):
    print("\nCPU per 2xx answer, ms (machine busy = share of all CPUs in use during the case;"
          " steal = share the hypervisor gave to someone else;"
          " other = busy time of processes the bench did not start"
          + (", here including the running stack's)" if bench.config.base_url else ")"))
    for case in bench.cases:
        if "failed" in case or not case.get("cpu_ms_per_ok_request"):
            continue
        parts = [f"{label} {value:.2f}" for label, value in case["cpu_ms_per_ok_request"].items()
                 if value is not None and value >= 0.01]
        busy = case.get("machine_busy")
        steal = case.get("steal") or 0
        print(f"  {case['endpoint'].split('?')[0]:<24} {case['target']:<22} c{case['connections']:<3} "
              f"busy {busy * 100 if busy is not None else 0:>3.0f}%  steal {steal * 100:>2.0f}%  "
              + ", ".join(parts))


def _print_off_the_path(bench):
    """What emailing each new order costs (off the order path, on the same cores), and one RPC hop."""
    cfg = bench.config
    created = [case for case in bench.cases if case["kind"] == "post_order" and case["target"] == OURS
               and case.get("cpu_ms_per_ok_request")]
    if created:
        print("\nnotification_service (the order_created consumer queueing the email, and the sender "
              "sending it), CPU per created order: "
              + ", ".join(f"c{case['connections']} "
                          f"{case['cpu_ms_per_ok_request'].get('notification_service') or 0:.2f} ms"
                          for case in created)
              + "; the mail relay (not ours): "
              + ", ".join(f"c{case['connections']} {case['cpu_ms_per_ok_request'].get(MAIL_SINK) or 0:.2f} ms"
                          for case in created))
    hop = bench.report.get("hop")
    if isinstance(hop, dict):
        floor = find_case(bench.cases, "post_order", FLOOR, cfg.main_connections)
        floor_cpu = sum(v or 0 for v in floor.get("cpu_ms_per_ok_request", {}).values()) if floor else None
        print(f"\none empty nameko RPC hop (bench/ping_service.py, one call at a time): "
              f"{hop['cpu_ms_total']:.2f} ms CPU per call ("
              + ", ".join(f"{label} {value:.2f}" for label, value in hop["cpu_ms_per_call"].items()) + ")"
              + (f"; the floor's whole POST at c{cfg.main_connections}: {floor_cpu:.2f} ms CPU per order"
                 if floor_cpu else ""))


def _print_batching(bench):
    """What batching off and on ran with, and their (and the floor's) Postgres transactions per order."""
    measured = [case for case in bench.cases if case["target"] in (BATCH_OFF, BATCH_ON, BATCH_FLOOR)
                and case.get("pg_transactions_per_ok") is not None]
    if not measured:
        return
    from bench.batching import describe

    rounds = bench.config.batching_rounds
    print(f"\nbatching ({describe(bench.config)}; the median of {rounds} round{'s' if rounds > 1 else ''}), "
          "Postgres transactions per order (pg_stat_database xact_commit + xact_rollback of the "
          "target's database over its 2xx answers):")
    for connections in sorted({case["connections"] for case in measured}):
        print(f"  c{connections:<4}" + ", ".join(f"{case['target']} {case['pg_transactions_per_ok']:.2f}"
                                          for case in measured if case["connections"] == connections))


def _print_overload(bench):
    """Shedding on and off at the overload count, and on with clients honouring Retry-After: the
    2xx answers' throughput, p50 and p99, the answers shed; and whether the default bound shed
    any answer of the default stack's other cases."""
    cfg = bench.config
    shed = [find_case(bench.cases, "post_order", target, cfg.overload_connections)
            for target in (SHED_ON, SHED_OFF, SHED_WAIT)]
    if any(shed):
        print(f"\noverload, POST at {cfg.overload_connections} connections (Python load generator: wrk cannot "
              f"keep the latency of 2xx answers apart), shedding on: GATEWAY_MAX_IN_FLIGHT {cfg.max_in_flight} "
              f"per gateway process, off: {SHEDDING_OFF['GATEWAY_MAX_IN_FLIGHT']}; clients send again at once, "
              "or honour Retry-After (wait what it says plus up to as much again; waits are in no latency):")
        for case in filter(None, shed):
            print(f"  {case['target']:<40} {_overload_line(case)}")
    below = {}
    for case in bench.cases:  # the default stack with the default bound, below the overload count
        if (case["target"] in (OURS, BATCH_ON, METRICS_ON, NO_WEBHOOK) and case.get("requests")
                and case["connections"] < cfg.overload_connections):
            below.setdefault(case["connections"], []).append(case.get("statuses", {}).get("503", 0))
    if below:
        shed = [c for c, n in below.items() if c <= cfg.max_in_flight and sum(n)]
        print(f"\n503 answers of the default stack (GATEWAY_MAX_IN_FLIGHT {cfg.max_in_flight} per gateway process: "
              f"a load of up to {cfg.max_in_flight} connections is never shed) in its cases below "
              f"{cfg.overload_connections} connections, by connections: "
              + ", ".join(f"c{c} {sum(n)}" for c, n in sorted(below.items()))
              + (f"  [!] shed at {', '.join(f'c{c}' for c in sorted(shed))} (or another 503)" if shed else ""))


def _overload_line(case):
    """A case's 2xx req/s, 2xx p50 and p99, 503 overloaded (count, share), and its clients' waits."""
    share, count = case.get("overloaded_share"), case.get("overloaded", 0)
    line = (f"2xx {case['ok_rps']:>8.1f} req/s, 2xx p50 {case['ok_p50_ms']:>8.2f} ms, p99 {case['ok_p99_ms']:>8.2f} ms, "
            f"503 overloaded {count} ({'n/a' if share is None else f'{100 * share:.1f}%'} of the answers)")
    if "retry_waits" in case and case.get("seconds"):  # how much of the connections' time went to waiting
        idle = case["waited_seconds"] / (case["connections"] * case["seconds"])
        line += f", {case['retry_waits']} waits ({100 * idle:.0f}% of the connections' time)"
    return line


def _print_consumers(bench):
    """webhook_service's and notification_service's CPU per created order without a webhook and
    with one, counted until their work was done, and the whole system's; the p50 at one connection."""
    m = bench.config.main_connections
    measured = [find_case(bench.cases, "post_order", target, m) for target in (NO_WEBHOOK, ONE_WEBHOOK)]
    if not any(measured):
        return
    print(f"\nconsumers, POST at {m} connections, CPU per created order (ms) until the consumers' work was done "
          "(outboxes, queues, deliveries, notifications):")
    for case in filter(None, measured):
        per = case["cpu_ms_per_ok_request"]
        print(f"  {case['target']:<18} webhook_service {per.get('webhook_service') or 0:.2f}, notification_service "
              f"{per.get('notification_service') or 0:.2f}, the whole system {case['cpu_ms_per_ok_total']:.2f} "
              f"(done {case.get('drain_seconds', 0):.1f} s after the load); the subscriber (not ours) "
              f"{per.get(WEBHOOK_RECEIVER) or 0:.2f}")
    rounds = [c for c in bench.cases if c["target"].startswith(ONE_WEBHOOK + " #") and "webhook_deliveries" in c]
    if rounds:
        print("  the webhook's deliveries since it was made, by status (all delivered if its CPU is true): "
              + "; ".join(f"{c['target'].removeprefix(ONE_WEBHOOK).strip()} "
                          + ", ".join(f"{status} {n}" for status, n in sorted(c["webhook_deliveries"].items()))
                          for c in rounds))
    one = find_case(bench.cases, "post_order", NO_WEBHOOK, 1)
    if one:
        print(f"  {NO_WEBHOOK} at 1 connection: p50 {one['p50_ms']:.2f} ms")


# ---- the JSON file ---------------------------------------------------------------

def write(bench, ratios, finished_at):
    cfg = bench.config
    bench.report.update({
        "finished_at": finished_at,
        "settings": {"seconds": cfg.seconds, "warmup_seconds": cfg.warmup, "seed_orders": cfg.seed_orders,
                     "customers": cfg.customers, "products": cfg.products,
                     "items_per_order": cfg.items_per_order, "connections": cfg.connections,
                     "main_connections": cfg.main_connections, "gateway_workers": int(cfg.workers),
                     "gateway_threads": int(cfg.threads), "scale": cfg.scale,
                     "soak_seconds": cfg.soak_seconds, "base_url": cfg.base_url,
                     "database": None if cfg.base_url else cfg.database,
                     "trace_ratio": cfg.trace_ratio, "baseline": cfg.baseline,
                     "batching_connections": cfg.batching_connections, "batching_rounds": cfg.batching_rounds,
                     "overload_connections": cfg.overload_connections, "overload_rounds": cfg.overload_rounds,
                     "max_in_flight": cfg.max_in_flight, "consumers_rounds": cfg.consumers_rounds},
        "cases": bench.cases,
        "ratios": ratios,
        "problems": bench.problems,
        "valid": not bench.problems,
    })
    cfg.results.parent.mkdir(parents=True, exist_ok=True)
    tmp = cfg.results.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(bench.report, indent=2, default=str) + "\n")
    tmp.replace(cfg.results)
    print(f"\nresults: {bench.shown(cfg.results)}; process logs: {bench.shown(bench.logs)}/")
