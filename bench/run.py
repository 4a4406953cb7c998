"""`make bench` (= python -m bench.run): ours, the floor and the naive peer, side by side.

Starts the stack (the Procfile under honcho) against its own database and
RabbitMQ virtual host, seeds it, drives every case for BENCH_SECONDS after a
warm-up, prints one table and the ratios, writes bench/results/latest.json,
and stops and drops everything it started. A missed target is reported,
never an exit status: benchmarks are not tests. The exit status is non-zero
only when the run itself is broken (the stack did not start, a case's first
request failed), because then its numbers would not be true.

Settings (environment): see bench/README.md.
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench import cpu, loadgen, stack
from common.contract.settings import load_settings

ROOT = stack.ROOT
DEFAULT_RESULTS = ROOT / "bench" / "results" / "latest.json"

OURS, FLOOR, NAIVE, OURS_2X = "ours", "floor", "naive", "ours, 2 order_service"
# The observability cases, each on a restarted stack, back to back (see run_observability_cases).
METRICS_ON, METRICS_OFF, TRACING_ON = "ours, metrics on", "ours, metrics off", "ours, tracing on"
TRACING_SAMPLED = "ours, tracing 1 in 10"  # OTEL_TRACES_SAMPLER=parentbased_traceidratio, ARG=0.1
# Two stacks at the same time, the default one and a second one (run_side_by_side_cases).
SIDE_OFF, SIDE_ON = "side by side, tracing off", "side by side, tracing on"
SIDE_METRICS_ON, SIDE_METRICS_OFF = "side by side, metrics on", "side by side, metrics off"
SIDE_CONTROL = "side by side, control"  # BENCH_SIDE_BY_SIDE_CONTROL: the second stack as the first
SECOND_STACK, SECOND_PREFIX = "second stack", "second "  # its honcho; its processes' labels start with "second "
# On a 3-node RabbitMQ cluster of the bench's own, one and two instances of every service.
CLUSTER_1, CLUSTER_2 = "ours, cluster, 1 each", "ours, cluster, 2 each"
SERVICE_MODULES = {"customer_service": "customer_service.service:CustomerService",
                   "inventory_service": "inventory_service.service:InventoryService",
                   "order_service": "order_service.service:OrderService",
                   "notification_service": "notification_service.service:NotificationService",
                   "invoice_service": "invoice_service.service:InvoiceService"}
MAIL_SINK = "mail sink"  # the SMTP server notification_service sends to (scripts/mail_sink.py --discard)
OTLP_RECEIVER = "otlp receiver"  # where "tracing on" exports spans (scripts/otlp_receiver.py --discard)
# CPU that is not the system under test: the load generator, other load, the mail relay, the trace receiver.
NOT_THE_SYSTEM = {"load generator", "other", MAIL_SINK, OTLP_RECEIVER}
# The servers both stacks of a side-by-side case use, and all the CPU neither stack owns.
SHARED_SERVERS = ("postgres", "rabbitmq")
SHARED_LABELS = {*SHARED_SERVERS} | NOT_THE_SYSTEM
# Above this share of all CPUs busy with other processes, a case is flagged: the machine was not quiet.
OTHER_LOAD_WARNING = 0.10
ENDPOINTS = {
    "post_order": "POST /api/v1/orders",
    "get_order": "GET /api/v1/orders/{id}",
    "list_orders": "GET /api/v1/orders?customer_id=",
}


def _int(env, name, default):
    value = env.get(name, "").strip()
    return int(value) if value else default


@dataclass
class Config:
    base_url: str | None
    seconds: int
    warmup: int
    seed_orders: int
    customers: int
    products: int
    items_per_order: int
    connections: list
    main_connections: int
    loadgen: str
    scale: bool
    observability: bool
    cluster: bool
    only: str
    observability_rounds: int
    side_by_side_control: bool
    soak_seconds: int
    soak_connections: int
    soak_interval: float
    database: str
    keep_db: bool
    results: Path
    workers: str
    threads: str
    jwt_secret: str
    amqp_uri: str
    database_url: str

    @classmethod
    def from_env(cls, env=os.environ):
        connections = sorted({int(c) for c in env.get("BENCH_CONNECTIONS", "1,8,32,64").split(",") if c.strip()})
        main = _int(env, "BENCH_MAIN_CONNECTIONS", 32)
        if main not in connections:
            connections = sorted({*connections, main})
        settings = load_settings(env)  # the system's own settings: broker, database, gateway, secret
        return cls(
            base_url=(env.get("BENCH_BASE_URL") or "").rstrip("/") or None,
            seconds=max(1, _int(env, "BENCH_SECONDS", 10)),
            warmup=max(0, _int(env, "BENCH_WARMUP_SECONDS", 2)),
            seed_orders=max(1, _int(env, "BENCH_SEED_ORDERS", 100_000)),
            customers=max(1, _int(env, "BENCH_CUSTOMERS", 200)),
            products=max(2, _int(env, "BENCH_PRODUCTS", 50)),
            items_per_order=max(1, _int(env, "BENCH_ITEMS_PER_ORDER", 2)),
            connections=connections,
            main_connections=main,
            loadgen=env.get("BENCH_LOADGEN", "auto"),
            scale=env.get("BENCH_SCALE", "1") != "0",
            observability=env.get("BENCH_OBSERVABILITY", "1") != "0",
            cluster=env.get("BENCH_CLUSTER", "1") != "0",
            only=env.get("BENCH_ONLY", ""),
            observability_rounds=max(1, _int(env, "BENCH_OBSERVABILITY_ROUNDS", 3)),
            side_by_side_control=env.get("BENCH_SIDE_BY_SIDE_CONTROL", "0") == "1",
            soak_seconds=max(0, _int(env, "BENCH_SOAK_SECONDS", 0)),
            soak_connections=max(1, _int(env, "BENCH_SOAK_CONNECTIONS", 8)),
            soak_interval=float(env.get("BENCH_SOAK_INTERVAL", "5")),
            database=env.get("BENCH_DATABASE", "orders_bench"),
            keep_db=env.get("BENCH_KEEP_DB", "0") == "1",
            results=Path(env.get("BENCH_RESULTS") or DEFAULT_RESULTS),
            workers=str(settings.gateway_workers),
            threads=str(settings.gateway_threads),
            jwt_secret=settings.jwt_secret,
            amqp_uri=settings.amqp_uri,
            database_url=settings.database_url,
        )


def admin_token(secret, ttl_seconds):
    try:
        import jwt  # PyJWT
    except ImportError:
        raise RuntimeError("PyJWT is needed to mint the bearer token: pip install PyJWT") from None

    now = int(time.time())
    return jwt.encode({"sub": "bench", "role": "admin", "iat": now, "exp": now + ttl_seconds},
                      secret, algorithm="HS256")


class Bench:
    def __init__(self, config):
        self.config = config
        self.cleanups = []  # (what, callable), run in reverse
        self.cases = []
        self.problems = []
        self.report = {
            "started_at": _now(),
            "machine": stack.machine(),
            "git": _git(),
        }
        self.logs = config.results.parent / "logs"
        self.processes = {}

    # ---- set-up --------------------------------------------------------------

    def setup(self):
        cfg = self.config
        self.loadgen = loadgen.choose(cfg.loadgen)
        self.report["loadgen"] = loadgen.describe(self.loadgen)
        if self.loadgen == "python" and cfg.loadgen == "auto":
            print("wrk is not installed (Debian/Ubuntu: apt-get install wrk): using the Python load generator.")
        expected = (len(cfg.connections) * 2 + 5 + (1 if cfg.scale else 0) + (6 * cfg.observability_rounds + 2 if cfg.observability else 0)
                    + (2 if cfg.cluster else 0)) \
            * (cfg.seconds + cfg.warmup + 2)
        self.token = admin_token(cfg.jwt_secret, expected + cfg.soak_seconds + 3600)
        self.logs.mkdir(parents=True, exist_ok=True)
        for old in self.logs.glob("*.log"):
            old.unlink()

        if cfg.base_url:
            print(f"BENCH_BASE_URL is set: using the stack at {cfg.base_url} (not starting one). "
                  "Seed rows go into its DATABASE_URL; nothing is dropped.")
            self.amqp_uri = cfg.amqp_uri
            self.database_url = cfg.database_url
            self.vhost = None
            self.urls = {OURS: cfg.base_url}
            stack.wait_http(cfg.base_url + "/health", 30)
        else:
            self._start_stack()

        print(f"seeding {cfg.customers} customers, {cfg.products} products, {cfg.seed_orders} orders ...",
              flush=True)
        self.seed = stack.seed(self.database_url, cfg.customers, cfg.products, cfg.seed_orders,
                               run_tag=uuid.uuid4().hex[:8])
        self.report["seed"] = {"customers": len(self.seed["customers"]), "products": len(self.seed["skus"]),
                               "orders": self.seed["orders"], "seconds": self.seed["seconds"],
                               "order_ids_sampled": len(self.seed["order_ids"])}
        print(f"seeded in {self.seed['seconds']} s")
        self.report["postgres"] = stack.server_version(self.database_url)
        self.report["auth_enforced"] = self._auth_enforced()

    def _start_stack(self):
        cfg = self.config
        self.database_url = stack.bench_database_url(cfg.database_url, cfg.database)
        stack.recreate_database(self.database_url)
        if not cfg.keep_db:
            self.cleanups.append(("drop the bench database", lambda: stack.drop_database(self.database_url)))
        stack.migrate(self.database_url)
        self.vhost, self.amqp_uri = stack.create_vhost(cfg.amqp_uri)
        self.report["vhost"] = self.vhost
        self.cleanups.append(("delete the bench vhost", lambda: stack.delete_vhost(self.vhost)))
        # notification_service emails every created order: to an SMTP server of the bench's own
        # that accepts and drops them (a mail relay is another machine's work: not counted as ours).
        smtp_port = stack.free_port()
        self._start(MAIL_SINK, [sys.executable, "-m", "scripts.mail_sink", "serve", "--port", str(smtp_port),
                                "--discard"], stack.venv_env())
        self.stack_env = stack.venv_env(
            AMQP_URI=self.amqp_uri, DATABASE_URL=self.database_url, JWT_SECRET=cfg.jwt_secret,
            GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=stack.free_port(),
            GATEWAY_WORKERS=cfg.workers, GATEWAY_THREADS=cfg.threads,
            SMTP_HOST="127.0.0.1", SMTP_PORT=smtp_port,
            RPC_TIMEOUT=os.environ.get("RPC_TIMEOUT", "10"), LOG_LEVEL=os.environ.get("LOG_LEVEL", "INFO"),
            METRICS_PORT=stack.free_metrics_base())
        print(f"starting the stack (database {cfg.database}, vhost {self.vhost}) ...", flush=True)
        self._run_stack(self.stack_env)

    def _run_stack(self, env):
        honcho = self._start("stack", [sys.executable, "-m", "honcho", "start", "-f", "Procfile"], env,
                             stop_signal=signal.SIGINT)
        url = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
        self.urls = {OURS: url}
        stack.wait_http(url + "/health", 90, honcho)

    def _restart_stack(self, **overrides):
        self.processes["stack"].stop()
        self._run_stack({**self.stack_env, **{key: str(value) for key, value in overrides.items()}})

    def _cpu_labels(self):
        """{pid: label} of every process the bench started, for CPU accounting."""
        labels = {}
        for name, process in self.processes.items():
            pids = process.tree()
            if name in ("stack", SECOND_STACK):
                prefix = SECOND_PREFIX if name == SECOND_STACK else ""
                for pid in pids:
                    label = stack.label(pid, process.pid)
                    if label:
                        labels[pid] = prefix + label.replace(" master", "").replace(" worker", "")
            else:
                label = {FLOOR: "floor app", NAIVE: "naive gateway"}.get(name, name.removesuffix("_2"))
                labels.update({pid: label for pid in pids})
        return labels

    def _start(self, name, cmd, env, stop_signal=signal.SIGTERM):
        process = stack.Process(name, cmd, env, self.logs / f"{name}.log", stop_signal=stop_signal).start()
        self.processes[name] = process
        self.cleanups.append((f"stop {name}", process.stop))
        return process

    def _start_gunicorn(self, name, app):
        """A peer served exactly like the gateway (same gunicorn settings file), on its own port."""
        env = stack.venv_env(**{**self._peer_env(), "GATEWAY_PORT": stack.free_port()})
        process = self._start(name, [sys.executable, "-m", "gunicorn", "-c", "gateway/gunicorn_conf.py", app], env)
        url = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
        stack.wait_http(url + "/health", 60, process)
        self.urls[name] = url
        return process

    def _peer_env(self):
        cfg = self.config
        return {"AMQP_URI": self.amqp_uri, "DATABASE_URL": self.database_url, "JWT_SECRET": cfg.jwt_secret,
                "GATEWAY_HOST": "127.0.0.1", "GATEWAY_WORKERS": cfg.workers, "GATEWAY_THREADS": cfg.threads,
                "RPC_TIMEOUT": os.environ.get("RPC_TIMEOUT", "10"), "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO")}

    def _auth_enforced(self):
        status, _ = loadgen.one_request(self.urls[OURS], self._workload("list_orders", token="not-a-token"))
        return status == 401

    # ---- cases ---------------------------------------------------------------

    def _workload(self, kind, token=None):
        return loadgen.Workload(kind=kind, token=token or self.token, customers=self.seed["customers"],
                                skus=self.seed["skus"], order_ids=self.seed["order_ids"],
                                items_per_order=min(self.config.items_per_order, len(self.seed["skus"])))

    def run_case(self, kind, target, connections, url_key=None):
        cfg = self.config
        url = self.urls[url_key or target]
        name = f"{ENDPOINTS[kind]} | {target} | c{connections}"
        case = {"name": name, "endpoint": ENDPOINTS[kind], "kind": kind, "target": target,
                "connections": connections}
        self.cases.append(case)
        workload = self._workload(kind)
        try:
            honcho = self.processes.get("stack")
            if honcho is not None and not honcho.alive() and target != FLOOR:
                raise RuntimeError(f"the stack exited during the run; see {_shown(honcho.log_path)}")
            status, body = loadgen.one_request(url, workload)
            if not 200 <= status <= 299:
                raise RuntimeError(f"first request answered {status}: {body[:300]}")
            if cfg.warmup:
                loadgen.run(self.loadgen, url, workload, connections, cfg.warmup)
            labels = self._cpu_labels()
            before, started = cpu.snapshot(labels), time.monotonic()
            result = loadgen.run(self.loadgen, url, workload, connections, cfg.seconds)
            used = cpu.usage(before, cpu.snapshot(labels), time.monotonic() - started,
                             self.report["machine"]["usable_cpus"])
        except Exception as exc:  # recorded: the run is broken, but the other cases still tell something
            case["failed"] = f"{exc.__class__.__name__}: {exc}"
            self.problems.append(f"{name}: {case['failed']}")
            print(f"  {name:<58} FAILED {case['failed']}", flush=True)
            return case
        except BaseException:  # Ctrl-C or SIGTERM: the run ends here
            case["failed"] = "interrupted"
            raise
        return self._record(case, result, used, used["seconds"])

    def _record(self, case, result, used, cpu_seconds):
        """Fill `case` from a load run's `result` and the CPU `used` meanwhile (`cpu_seconds`: the
        CPU seconds by label that count for this case), and print its line."""
        ok = result["requests"] - result["non2xx"]
        case.update(result)
        case["ok_rps"] = round(ok / result["seconds"], 1) if result["seconds"] else 0.0
        case["cpu_seconds"] = cpu_seconds
        case["machine_busy"] = used["machine_busy"]
        # With BENCH_BASE_URL the stack is not ours to label: its processes land in "other".
        case["other_load"] = None if self.config.base_url else used["other_share"]
        case["steal"] = used["steal_share"]
        case["cpu_ms_per_ok_request"] = {label: round(1000 * value / ok, 2) if ok else None
                                         for label, value in cpu_seconds.items()}
        case["cpu_ms_per_ok_total"] = round(sum(
            value or 0 for label, value in case["cpu_ms_per_ok_request"].items() if label not in NOT_THE_SYSTEM), 2)
        print(f"  {case['name']:<58} {case['ok_rps']:>8.1f} req/s  p50 {case['p50_ms']:>7.2f}  "
              f"p99 {case['p99_ms']:>8.2f} ms  errors {case['errors']}", flush=True)
        if case["steal"] is not None and case["steal"] > OTHER_LOAD_WARNING:
            print(f"    [!] the hypervisor ran someone else on {case['steal'] * 100:.0f}% of our CPU time (steal): "
                  "this case's numbers are low", flush=True)
        if case["other_load"] is not None and case["other_load"] > OTHER_LOAD_WARNING:
            print(f"    [!] {case['other_load'] * 100:.0f}% of the machine was busy with processes the bench did "
                  "not start: this case's numbers are low", flush=True)
        return case

    def run_cases(self):
        cfg = self.config
        m = cfg.main_connections
        if cfg.only:
            {"observability": self.run_observability_cases, "cluster": self.run_cluster_cases,
             "side-by-side": lambda: self.run_observability_cases(separate=False)}[cfg.only]()
            return
        self._start_gunicorn(FLOOR, "bench.floor_app:app")
        print(f"\ncases: {cfg.warmup}s warm-up + {cfg.seconds}s each, load generator {self.loadgen}", flush=True)
        for c in cfg.connections:
            self.run_case("post_order", OURS, c)
            self.run_case("post_order", FLOOR, c)
        self._start_gunicorn(NAIVE, "bench.naive_gateway:app")
        self.run_case("post_order", NAIVE, m)
        self.processes[NAIVE].stop()
        for kind in ("get_order", "list_orders"):
            self.run_case(kind, OURS, m)
            self.run_case(kind, FLOOR, m)
        self.processes[FLOOR].stop()
        if cfg.scale:
            self.run_scale_case()
        self.run_hop_case()
        if cfg.observability:
            self.run_observability_cases()
        if cfg.cluster:
            self.run_cluster_cases()

    def run_cluster_cases(self):
        """POST at the main connections on a 3-node RabbitMQ cluster of the bench's own
        (scripts/rabbitmq_nodes.py; quorum queues, every node in AMQP_URI), first with one
        instance of every service, then with a second of each. Compared with `ours, metrics
        on` (one node, freshly started the same way). Then the default stack again."""
        m = self.config.main_connections
        if self.config.base_url:
            self.report["cluster"] = "skipped: BENCH_BASE_URL"
            return
        from scripts.rabbitmq_nodes import cluster_nodes, failover_uri, start_cluster
        from tests.support import free_node_port

        nodes = cluster_nodes(3, free_node_port(nodes=3), self.logs.parent / "rabbitmq")
        self.cleanups.append(("stop the bench's RabbitMQ cluster", lambda: [node.stop() for node in nodes]))
        print("starting a 3-node RabbitMQ cluster ...", flush=True)
        cluster = {"AMQP_URI": start_cluster(nodes), "AMQP_QUORUM_QUEUES": "true", "MAX_WORKERS": "5"}
        self._restart_stack(**cluster)
        self.run_case("post_order", CLUSTER_1, m, url_key=OURS)
        second_env = {**self.stack_env, **cluster, "AMQP_URI": failover_uri(nodes[1:] + nodes[:1]),
                      "METRICS_PORT": str(stack.free_metrics_base())}
        seconds = [self._start(f"{service}_2", [sys.executable, "-m", "common.kit.runner", "run", module], second_env)
                   for service, module in SERVICE_MODULES.items()]
        order_metrics = f"http://127.0.0.1:{int(second_env['METRICS_PORT']) + 3}/metrics"  # order_service's
        stack.wait_http(order_metrics, 60, seconds[2])
        self.run_case("post_order", CLUSTER_2, m, url_key=OURS)
        for second in seconds:
            second.stop()
        self._restart_stack()
        for node in reversed(nodes):
            node.stop()

    def run_observability_cases(self, separate=True):
        """POST at the main connections on a freshly started stack per round: metrics on and
        tracing off (the default), metrics off (METRICS_PORT=0), tracing on, exporting every span
        to a local OTLP/HTTP receiver (scripts/otlp_receiver.py --discard, standing in for a
        collector on another machine; its CPU is reported apart), and tracing on keeping one new
        trace in ten (the standard ratio sampler). After unrecorded load, three rounds of each, in
        the order A B C D D C B A A B C D, so that neither the place after a restart nor drift over
        the minutes favours one; the ratios compare each configuration's median round. Then the
        default stack again. Without `separate`, only the side-by-side cases."""
        if self.config.base_url:
            self.report["observability"] = "skipped: BENCH_BASE_URL"
            return
        port = stack.free_port()
        self._start(OTLP_RECEIVER, [sys.executable, "-m", "scripts.otlp_receiver", "--port", str(port),
                                      "--discard"], self.stack_env)
        endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
        configurations = [(METRICS_ON, {}), (METRICS_OFF, {"METRICS_PORT": 0}), (TRACING_ON, endpoint),
                          (TRACING_SAMPLED, {**endpoint, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                             "OTEL_TRACES_SAMPLER_ARG": "0.1"})]
        if separate:
            self._run_separate_cases(configurations)
        self.run_side_by_side_cases(endpoint)
        self.processes[OTLP_RECEIVER].stop()
        self._restart_stack()

    def _run_separate_cases(self, configurations):
        m = self.config.main_connections
        rounds = {target: [] for target, _ in configurations}
        # Unrecorded load first (on the default stack, as it runs now): the first case after seeding
        # was measured paying for the database settling (autovacuum, cold caches), up to a fifth of its req/s.
        loadgen.run(self.loadgen, self.urls[OURS], self._workload("post_order"), m, self.config.seconds)
        # Forward, then backward, then forward again ...: A B C D D C B A for two rounds.
        order = [configurations if n % 2 == 0 else configurations[::-1]
                 for n in range(self.config.observability_rounds)]
        for target, overrides in [pair for one_round in order for pair in one_round]:
            self._restart_stack(**overrides)
            rounds[target].append(self.run_case("post_order", f"{target} #{len(rounds[target]) + 1}", m,
                                                 url_key=OURS))
        for target, cases in rounds.items():
            self.cases.append(_median_case(target, cases))

    def run_side_by_side_cases(self, endpoint):
        """Two stacks at the same time, each driven by half the main connections, one round per
        observability round: the default one, and a second one (its own database, seeded alike,
        and vhost) with tracing on, every span exported, then with metrics off. Separate cases
        each get their own 10 seconds of a machine whose speed moves by up to 2x; here both share
        every second, and on two busy cores each stack gets about half the CPU, so the ratio of
        their req/s is about the ratio of their CPU per order. Each stack's own CPU is counted
        apart, and the Postgres and RabbitMQ work an order needs is added to both. The control
        run (BENCH_SIDE_BY_SIDE_CONTROL=1) leaves the second stack as the first: how far its
        ratios are from 1.0 is the method's own error."""
        cfg = self.config
        second_db = stack.bench_database_url(cfg.database_url, cfg.database + "_second")
        stack.recreate_database(second_db)
        if not cfg.keep_db:
            self.cleanups.append(("drop the second bench database", lambda: stack.drop_database(second_db)))
        stack.migrate(second_db)
        seed = stack.seed(second_db, cfg.customers, cfg.products, cfg.seed_orders, run_tag=uuid.uuid4().hex[:8])
        vhost, amqp_uri = stack.create_vhost(cfg.amqp_uri)
        self.cleanups.append(("delete the second bench vhost", lambda: stack.delete_vhost(vhost)))
        second_env = {**self.stack_env, "AMQP_URI": amqp_uri, "DATABASE_URL": second_db,
                      "GATEWAY_PORT": str(stack.free_port()), "METRICS_PORT": str(stack.free_metrics_base())}
        workload = loadgen.Workload(kind="post_order", token=self.token, customers=seed["customers"],
                                    skus=seed["skus"], items_per_order=min(cfg.items_per_order, len(seed["skus"])))
        comparisons = ([(SIDE_OFF, SIDE_CONTROL, {})] if cfg.side_by_side_control else
                       [(SIDE_OFF, SIDE_ON, endpoint), (SIDE_METRICS_ON, SIDE_METRICS_OFF, {"METRICS_PORT": "0"})])
        for first, second, overrides in comparisons:
            self._restart_stack()
            self._side_by_side(first, second, {**second_env, **overrides}, workload)

    def _side_by_side(self, first, second, second_env, second_workload):
        cfg, half = self.config, max(1, self.config.main_connections // 2)
        second_stack = self._start(SECOND_STACK, [sys.executable, "-m", "honcho", "start", "-f", "Procfile"],
                                   second_env, stop_signal=signal.SIGINT)
        second_url = f"http://127.0.0.1:{second_env['GATEWAY_PORT']}"
        drives = {first: (self.urls[OURS], self._workload("post_order")), second: (second_url, second_workload)}

        def both(seconds):
            with ThreadPoolExecutor(len(drives)) as pool:
                runs = {target: pool.submit(loadgen.run, self.loadgen, url, workload, half, seconds)
                        for target, (url, workload) in drives.items()}
                return {target: run.result() for target, run in runs.items()}

        rounds = {first: [], second: []}
        try:
            stack.wait_http(second_url + "/health", 90, second_stack)
            both(max(cfg.warmup, 2))
            for n in range(cfg.observability_rounds):
                labels = self._cpu_labels()
                before, started = cpu.snapshot(labels), time.monotonic()
                results = both(cfg.seconds)
                used = cpu.usage(before, cpu.snapshot(labels), time.monotonic() - started,
                                 self.report["machine"]["usable_cpus"])
                # Postgres and RabbitMQ serve both stacks: their CPU per answer of either, which an
                # order of one needs as much as one of the other, completes each stack's CPU per order.
                answers = sum(result["requests"] - result["non2xx"] for result in results.values())
                shared_ms = round(1000 * sum(used["seconds"].get(label) or 0 for label in SHARED_SERVERS)
                                  / answers, 2) if answers else None
                for target, result in results.items():
                    case = self._side_case(target, target == second, n + 1, half, result, used)
                    case["shared_cpu_ms_per_ok"] = shared_ms
                    case["cpu_ms_per_ok_whole"] = None if shared_ms is None else round(
                        case["cpu_ms_per_ok_total"] + shared_ms, 2)
                    rounds[target].append(case)
                    self.cases.append(case)
        except Exception as exc:  # recorded: the other cases still tell something
            self.problems.append(f"{second}: {exc.__class__.__name__}: {exc}")
            print(f"  {second} FAILED {exc}", flush=True)
        finally:
            second_stack.stop()
        for target, cases in rounds.items():
            if cases:
                self.cases.append(_median_case(target, cases))

    def _side_case(self, target, on_second_stack, round_number, connections, result, used):
        """A case of a side-by-side run: its own stack's CPU per 2xx answer only."""
        mine = {label.removeprefix(SECOND_PREFIX): value for label, value in used["seconds"].items()
                if label.startswith(SECOND_PREFIX) == on_second_stack and label not in SHARED_LABELS}
        case = {"name": f"{ENDPOINTS['post_order']} | {target} #{round_number} | c{connections}",
                "endpoint": ENDPOINTS["post_order"], "kind": "post_order", "target": f"{target} #{round_number}",
                "connections": connections}
        return self._record(case, result, used, mine)

    def run_scale_case(self):
        m = self.config.main_connections
        if self.config.base_url:
            print("  (skipping 2 x order_service: the stack was not started by the bench)")
            self.report["scale"] = "skipped: BENCH_BASE_URL"
            return
        second = self._start("order_service_2", [sys.executable, "-m", "common.kit.runner", "run",
                                                 "order_service.service:OrderService"],
                             {**self.stack_env, "METRICS_PORT": str(stack.free_metrics_base())})
        deadline = time.monotonic() + 60
        consumers = None
        while time.monotonic() < deadline:
            if not second.alive():
                break
            consumers = stack.rpc_consumers(self.vhost, "rpc-order_service")
            if consumers is not None and consumers >= 2:
                break
            time.sleep(0.5)
        if consumers is None or consumers < 2:
            case = {"name": f"{ENDPOINTS['post_order']} | {OURS_2X} | c{m}", "endpoint": ENDPOINTS["post_order"],
                    "kind": "post_order", "target": OURS_2X, "connections": m,
                    "failed": f"the second order_service did not start consuming (consumers: {consumers}); "
                              f"see {second.log_path.name}"}
            self.cases.append(case)
            self.problems.append(case["name"] + ": " + case["failed"])
            second.stop()
            return
        self.run_case("post_order", OURS_2X, m, url_key=OURS)
        second.stop()

    def run_hop_case(self):
        """One empty nameko RPC at a time, with an order-sized payload: CPU per call of
        the callee, the caller and RabbitMQ. The order path pays this twice (gateway ->
        order_service -> inventory_service) before it does anything."""
        if self.config.base_url:
            self.report["hop"] = "skipped: BENCH_BASE_URL"
            return
        from nameko.standalone.rpc import ClusterRpcProxy

        from common.kit import patches

        service = self._start("ping_service", [sys.executable, "-m", "common.kit.runner", "run",
                                               "bench.ping_service:PingService"], self.stack_env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and service.alive() \
                and not stack.rpc_consumers(self.vhost, "rpc-bench_ping"):
            time.sleep(0.5)
        payload = {"customer_id": self.seed["customers"][0],  # the shape of a POST /orders body
                   "items": [{"sku": sku, "quantity": 1} for sku in self.seed["skus"][:self.config.items_per_order]]}
        patches.apply([patches.KEPT_PRODUCER_CONNECTIONS])  # as the gateway's callers have it
        try:
            with ClusterRpcProxy({"AMQP_URI": self.amqp_uri}, timeout=10) as proxy:
                for _ in range(50):
                    proxy.bench_ping.ping(payload)
                labels = {pid: "callee" for pid in service.tree()}
                before, started, calls = cpu.snapshot(labels), time.monotonic(), 0
                while time.monotonic() - started < self.config.seconds:
                    proxy.bench_ping.ping(payload)
                    calls += 1
                seconds = time.monotonic() - started
                used = cpu.usage(before, cpu.snapshot(labels), seconds, self.report["machine"]["usable_cpus"])
        except Exception as exc:  # recorded, like a failed case: the other numbers still stand
            self.problems.append(f"empty RPC hop: {exc.__class__.__name__}: {exc}")
            print(f"  empty RPC hop: FAILED {exc!r}", flush=True)
            return
        finally:
            service.stop()
        per_call = {"callee": used["seconds"].get("callee", 0.0), "caller": used["seconds"]["load generator"],
                    "rabbitmq": used["seconds"].get("rabbitmq", 0.0)}
        per_call = {label: round(1000 * value / calls, 2) for label, value in per_call.items()}
        self.report["hop"] = {"calls": calls, "ms_per_call": round(1000 * seconds / calls, 2),
                              "cpu_ms_per_call": per_call, "cpu_ms_total": round(sum(per_call.values()), 2),
                              "steal": used["steal_share"]}
        print(f"  one empty RPC hop, one call at a time: {1000 * seconds / calls:.2f} ms per call; CPU per call: "
              + ", ".join(f"{label} {value:.2f}" for label, value in per_call.items())
              + f" = {sum(per_call.values()):.2f} ms", flush=True)

    # ---- soak ------------------------------------------------------------------

    def soak(self):
        cfg = self.config
        if not cfg.soak_seconds:
            return
        print(f"\nsoak: POST /api/v1/orders at {cfg.soak_connections} connections for {cfg.soak_seconds}s, "
              f"RSS every {cfg.soak_interval}s", flush=True)
        honcho = self.processes.get("stack")
        if honcho is None:
            print("  the stack was not started by the bench (BENCH_BASE_URL): its processes are unknown, "
                  "no RSS to sample")
            self.report["soak"] = {"skipped": "BENCH_BASE_URL"}
            return
        result = {}

        def load():
            try:
                result.update(loadgen.run(self.loadgen, self.urls[OURS], self._workload("post_order"),
                                          cfg.soak_connections, cfg.soak_seconds))
            except Exception as exc:
                result["failed"] = f"{exc.__class__.__name__}: {exc}"

        samples = {}  # pid -> {"label", "kb": [...]}
        thread = threading.Thread(target=load, daemon=True)
        started = time.monotonic()
        thread.start()
        while True:
            for pid in honcho.tree():
                name = stack.label(pid, honcho.pid)
                kb = stack.rss_kb(pid)
                if name and kb is not None:
                    samples.setdefault(pid, {"label": name, "kb": []})["kb"].append(kb)
            if not thread.is_alive():
                break
            thread.join(timeout=cfg.soak_interval)
        elapsed = round(time.monotonic() - started, 1)
        rows = []
        for pid, data in sorted(samples.items(), key=lambda item: (item[1]["label"], item[0])):
            kb = data["kb"]
            rows.append({"process": data["label"], "pid": pid, "samples": len(kb), "first_mib": _mib(kb[0]),
                         "last_mib": _mib(kb[-1]), "max_mib": _mib(max(kb)), "growth_mib": _mib(kb[-1] - kb[0])})
        print(f"  {'process':<20} {'pid':>7} {'samples':>7} {'first MiB':>10} {'last MiB':>9} {'max MiB':>8} "
              f"{'growth':>7}")
        for row in rows:
            print(f"  {row['process']:<20} {row['pid']:>7} {row['samples']:>7} {row['first_mib']:>10.1f} "
                  f"{row['last_mib']:>9.1f} {row['max_mib']:>8.1f} {row['growth_mib']:>+7.1f}")
        if "failed" in result:
            self.problems.append("soak: " + result["failed"])
        else:
            statuses = ", ".join(f"{code}x{n}" for code, n in result.get("statuses", {}).items())
            print(f"  load during soak: {result.get('requests', 0) - result.get('non2xx', 0)} ok requests, "
                  f"{result.get('errors', 0)} errors{' (' + statuses + ')' if statuses else ''}, "
                  f"p50 {result.get('p50_ms')} ms, p99 {result.get('p99_ms')} ms")
            if result.get("error_sample"):
                print(f"  first error answer: {result['error_sample'][:160]}")
        self.report["soak"] = {"seconds": elapsed, "connections": cfg.soak_connections,
                               "interval_seconds": cfg.soak_interval, "processes": rows, "load": result,
                               "samples_kb": {str(pid): data for pid, data in samples.items()}}

    # ---- report ----------------------------------------------------------------

    def _case(self, kind, target, connections):
        for case in self.cases:
            if (case["kind"], case["target"], case["connections"]) == (kind, target, connections):
                return case if "failed" not in case and case.get("requests") else None
        return None

    def ratios(self):
        cfg = self.config
        m, low = cfg.main_connections, min(cfg.connections)

        def ratio(name, kind, a, b, conns, field, op=None, target=None):
            ca, cb = self._case(kind, a, conns), self._case(kind, b, conns)
            value = round(ca[field] / cb[field], 3) if ca and cb and cb[field] else None
            entry = {"name": name, "value": value, "op": op, "target": target}
            if target is not None:
                entry["pass"] = None if value is None else (value >= target if op == ">=" else value <= target)
            suspect = [c["name"] for c in (ca, cb) if c and c["errors"]]
            if suspect:
                entry["errors_in"] = suspect
            return entry

        return [
            ratio(f"POST@{m} req/s ours/floor", "post_order", OURS, FLOOR, m, "ok_rps", ">=", 0.5),
            ratio(f"POST@{m} req/s ours/naive", "post_order", OURS, NAIVE, m, "ok_rps", ">=", 8),
            ratio(f"POST@{m} p99 ours/floor", "post_order", OURS, FLOOR, m, "p99_ms", "<=", 2),
            ratio(f"POST@{low} p50 ours/floor", "post_order", OURS, FLOOR, low, "p50_ms", "<=", 3),
            ratio(f"GET by id@{m} req/s ours/floor", "get_order", OURS, FLOOR, m, "ok_rps", ">=", 0.6),
            ratio(f"GET list@{m} req/s ours/floor", "list_orders", OURS, FLOOR, m, "ok_rps"),
            ratio(f"POST@{m} req/s 2 order_service/1", "post_order", OURS_2X, OURS, m, "ok_rps"),
            ratio(f"POST@{m} req/s metrics on/off", "post_order", METRICS_ON, METRICS_OFF, m, "ok_rps", ">=", 0.95),
            ratio(f"POST@{m} req/s tracing on/off", "post_order", TRACING_ON, METRICS_ON, m, "ok_rps", ">=", 0.85),
            ratio(f"POST@{m} req/s tracing 1 in 10/off", "post_order", TRACING_SAMPLED, METRICS_ON, m, "ok_rps"),
            ratio(f"POST@{m // 2}+{m // 2} req/s side by side tracing on/off", "post_order", SIDE_ON, SIDE_OFF,
                  max(1, m // 2), "ok_rps", ">=", 0.85),
            ratio(f"POST@{m // 2}+{m // 2} CPU per answer side by side off/on", "post_order", SIDE_OFF, SIDE_ON,
                  max(1, m // 2), "cpu_ms_per_ok_total"),
            # The same with the Postgres and RabbitMQ work each order needs: tracing's CPU per order on
            # the whole machine, which is what bounds req/s on CPU-bound cores (target: at most +15%).
            ratio(f"POST@{m // 2}+{m // 2} CPU per answer with Postgres and RabbitMQ side by side tracing on/off",
                  "post_order", SIDE_ON, SIDE_OFF, max(1, m // 2), "cpu_ms_per_ok_whole", "<=", 1.15),
            ratio(f"POST@{m // 2}+{m // 2} req/s side by side metrics on/off", "post_order", SIDE_METRICS_ON,
                  SIDE_METRICS_OFF, max(1, m // 2), "ok_rps", ">=", 0.95),
            ratio(f"POST@{m // 2}+{m // 2} CPU per answer with Postgres and RabbitMQ side by side metrics on/off",
                  "post_order", SIDE_METRICS_ON, SIDE_METRICS_OFF, max(1, m // 2), "cpu_ms_per_ok_whole", "<=", 1.05),
            ratio(f"POST@{m // 2}+{m // 2} req/s side by side control second/first", "post_order", SIDE_CONTROL,
                  SIDE_OFF, max(1, m // 2), "ok_rps"),
            ratio(f"POST@{m // 2}+{m // 2} CPU per answer with Postgres and RabbitMQ side by side control "
                  "second/first", "post_order", SIDE_CONTROL, SIDE_OFF, max(1, m // 2), "cpu_ms_per_ok_whole"),
            ratio(f"POST@{m} req/s cluster/one node", "post_order", CLUSTER_1, METRICS_ON, m, "ok_rps"),
            ratio(f"POST@{m} req/s cluster 2 each/1 each", "post_order", CLUSTER_2, CLUSTER_1, m, "ok_rps"),
            ratio(f"POST@{m} CPU per answer one node/cluster", "post_order", METRICS_ON, CLUSTER_1, m,
                  "cpu_ms_per_ok_total"),
            # What req/s ours/floor would be if both were CPU-bound on the same CPUs:
            # CPU per answer moves far less than req/s when a hypervisor steals time.
            ratio(f"POST@{m} CPU per answer floor/ours", "post_order", FLOOR, OURS, m, "cpu_ms_per_ok_total"),
            ratio(f"GET by id@{m} CPU per answer floor/ours", "get_order", FLOOR, OURS, m, "cpu_ms_per_ok_total"),
        ]

    def print_report(self, ratios):
        cfg = self.config
        mach = self.report["machine"]
        print("\n" + "=" * 100)
        print(f"machine: {mach['nproc']} CPUs ({mach['usable_cpus']} usable), {mach['cpu_model']}, "
              f"{mach['ram_gib']} GiB RAM, kernel {mach['kernel']}, Python {mach['python']}, "
              f"Postgres {self.report.get('postgres', '?')}; "
              f"busy before the run: {mach.get('busy_before_start', 0) * 100:.0f}%")
        print(f"load generator: {self.report.get('loadgen')}; gateway and peers: gunicorn gthread "
              f"{cfg.workers} workers x {cfg.threads} threads; everything on this machine, 127.0.0.1 only")
        print(f"seeded: {self.report.get('seed', {}).get('orders', '?')} orders; {cfg.warmup}s warm-up + "
              f"{cfg.seconds}s per case; auth enforced by the gateway: {self.report.get('auth_enforced')}")
        print("req/s counts 2xx answers only; latency covers every answer; errors = non-2xx + socket errors")
        header = f"{'case':<34} {'target':<22} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} " \
                 f"{'p99 ms':>8} {'errors':>7}"
        for endpoint in ENDPOINTS.values():
            rows = [c for c in self.cases if c["endpoint"] == endpoint]
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
        samples = [c for c in self.cases if c.get("error_sample")]
        if samples:
            print("\nfirst error answer per case:")
            for case in samples:
                print(f"  {case['name']}: {case['error_sample'][:160]}")
        print("\nCPU per 2xx answer, ms (machine busy = share of all CPUs in use during the case;"
              " steal = share the hypervisor gave to someone else;"
              " other = busy time of processes the bench did not start"
              + (", here including the running stack's)" if cfg.base_url else ")"))
        for case in self.cases:
            if "failed" in case or not case.get("cpu_ms_per_ok_request"):
                continue
            parts = [f"{label} {value:.2f}" for label, value in case["cpu_ms_per_ok_request"].items()
                     if value is not None and value >= 0.01]
            busy = case.get("machine_busy")
            steal = case.get("steal") or 0
            print(f"  {case['endpoint'].split('?')[0]:<24} {case['target']:<22} c{case['connections']:<3} "
                  f"busy {busy * 100 if busy is not None else 0:>3.0f}%  steal {steal * 100:>2.0f}%  "
                  + ", ".join(parts))
        created = [case for case in self.cases if case["kind"] == "post_order" and case["target"] == OURS
                   and case.get("cpu_ms_per_ok_request")]
        if created:
            # Off the order path, but on the same two cores: what emailing each new order costs.
            print("\nnotification_service (the order_created consumer queueing the email, and the sender "
                  "sending it), CPU per created order: "
                  + ", ".join(f"c{case['connections']} "
                              f"{case['cpu_ms_per_ok_request'].get('notification_service') or 0:.2f} ms"
                              for case in created)
                  + "; the mail relay (not ours): "
                  + ", ".join(f"c{case['connections']} {case['cpu_ms_per_ok_request'].get(MAIL_SINK) or 0:.2f} ms"
                              for case in created))
        hop = self.report.get("hop")
        if isinstance(hop, dict):
            floor = self._case("post_order", FLOOR, cfg.main_connections)
            floor_cpu = sum(v or 0 for v in floor.get("cpu_ms_per_ok_request", {}).values()) if floor else None
            print(f"\none empty nameko RPC hop (bench/ping_service.py, one call at a time): "
                  f"{hop['cpu_ms_total']:.2f} ms CPU per call ("
                  + ", ".join(f"{label} {value:.2f}" for label, value in hop["cpu_ms_per_call"].items()) + ")"
                  + (f"; the floor's whole POST at c{cfg.main_connections}: {floor_cpu:.2f} ms CPU per order"
                     if floor_cpu else ""))
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
        if self.problems:
            print("\nproblems (the numbers above are not all true):")
            for problem in self.problems:
                print("  - " + problem)

    def write(self, ratios):
        cfg = self.config
        self.report.update({
            "finished_at": _now(),
            "settings": {"seconds": cfg.seconds, "warmup_seconds": cfg.warmup, "seed_orders": cfg.seed_orders,
                         "customers": cfg.customers, "products": cfg.products,
                         "items_per_order": cfg.items_per_order, "connections": cfg.connections,
                         "main_connections": cfg.main_connections, "gateway_workers": int(cfg.workers),
                         "gateway_threads": int(cfg.threads), "scale": cfg.scale,
                         "soak_seconds": cfg.soak_seconds, "base_url": cfg.base_url,
                         "database": None if cfg.base_url else cfg.database},
            "cases": self.cases,
            "ratios": ratios,
            "problems": self.problems,
            "valid": not self.problems,
        })
        cfg.results.parent.mkdir(parents=True, exist_ok=True)
        tmp = cfg.results.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        tmp.replace(cfg.results)
        print(f"\nresults: {_shown(cfg.results)}; process logs: {_shown(self.logs)}/")

    def cleanup(self):
        while self.cleanups:
            what, action = self.cleanups.pop()
            try:
                action()
            except Exception as exc:  # keep cleaning up the rest
                print(f"cleanup: could not {what}: {exc}", file=sys.stderr)


def _median_case(target, rounds):
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

    def median(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 2) if values else None
    for key, value in first.items():
        if key in case:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            case[key] = sum(r[key] for r in rounds) if key in ("requests", "non2xx", "errors") \
                else median(r.get(key) for r in rounds)
        elif key == "cpu_ms_per_ok_request":
            labels = {label for r in rounds for label in r[key]}
            case[key] = {label: median(r[key].get(label) for r in rounds) for label in sorted(labels)}
        elif key == "statuses":
            case[key] = {}
            for r in rounds:
                for status, n in r[key].items():
                    case[key][status] = case[key].get(status, 0) + n
        else:
            case[key] = value
    return case


def _mib(kb):
    return round(kb / 1024, 1)


def _now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _shown(path):
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _git():
    def git(*args):
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def main():
    signal.signal(signal.SIGTERM, _terminate)
    config = Config.from_env()
    bench = Bench(config)
    mach = bench.report["machine"]
    print(f"machine: nproc {mach['nproc']}, CPU {mach['cpu_model']}, RAM {mach['ram_gib']} GiB")
    mach["busy_before_start"] = cpu.machine_busy_share(1.0)
    if mach["busy_before_start"] > OTHER_LOAD_WARNING:
        print(f"[!] the machine is already {mach['busy_before_start'] * 100:.0f}% busy before the bench starts "
              "anything: expect lower numbers and flagged cases", flush=True)
    ratios = []
    broken = False
    try:
        bench.setup()
        bench.run_cases()
        bench.soak()
        ratios = bench.ratios()
    except BaseException as exc:
        broken = True
        if isinstance(exc, KeyboardInterrupt):
            bench.problems.append("interrupted")
        elif isinstance(exc, SystemExit):
            bench.problems.append(f"terminated ({exc.code})")
        else:
            traceback.print_exc()
            bench.problems.append(f"{exc.__class__.__name__}: {exc}")
        ratios = bench.ratios()
    finally:
        bench.cleanup()
    bench.print_report(ratios)
    bench.write(ratios)
    return 1 if broken or bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
