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
import os
import signal
import subprocess
import sys
import traceback
import uuid
from datetime import datetime, timezone
from pathlib import Path

from bench import batching, cases, consumers, cpu, loadgen, machine, report, seed, side_by_side, soak
from bench.config import Config
from bench.targets import (
    FLOOR,
    FLOOR_APP,
    MAIL_SINK,
    METRICS_OFF,
    METRICS_ON,
    NAIVE,
    OTHER_LOAD_WARNING,
    OTLP_RECEIVER,
    OURS,
    SECOND_PREFIX,
    SECOND_STACK,
    TRACING_ALL,
    TRACING_ON,
)
from common.contract.caller import issue_token
from tests import harness

ROOT = harness.ROOT


class Bench:
    """One run: its settings, the processes it started, its seed, its cases and report."""

    def __init__(self, config):
        self.config = config
        self.cleanups = []  # (what, callable), run in reverse
        self.cases = []
        self.problems = []
        self.report = {"started_at": _now(), "machine": machine.machine(), "git": _git()}
        self.logs = config.results.parent / "logs"
        self.processes = {}

    # ---- set-up --------------------------------------------------------------

    def setup(self):
        cfg = self.config
        self.loadgen = loadgen.choose(cfg.loadgen)
        self.report["loadgen"] = loadgen.describe(self.loadgen)
        if self.loadgen == "python" and cfg.loadgen == "auto":
            print("wrk is not installed (Debian/Ubuntu: apt-get install wrk): using the Python load generator.")
        self.token = issue_token(cfg.jwt_secret, "bench", "admin",
                                 ttl_seconds=cfg.expected_seconds() + cfg.soak_seconds + 3600)
        self.logs.mkdir(parents=True, exist_ok=True)
        for old in self.logs.glob("*.log"):
            old.unlink()
        if cfg.base_url:
            print(f"BENCH_BASE_URL is set: using the stack at {cfg.base_url} (not starting one). "
                  "Seed rows go into its DATABASE_URL; nothing is dropped.")
            self.amqp_uri, self.database_url, self.vhost = cfg.amqp_uri, cfg.database_url, None
            self.urls = {OURS: cfg.base_url}
            harness.wait_http(cfg.base_url + "/health", 30)
        else:
            self._start_stack()
        print(f"seeding {cfg.customers} customers, {cfg.products} products, {cfg.seed_orders} orders ...",
              flush=True)
        self.seed = seed.seed(self.database_url, cfg.customers, cfg.products, cfg.seed_orders,
                              run_tag=uuid.uuid4().hex[:8])
        self.report["seed"] = {"customers": len(self.seed["customers"]), "products": len(self.seed["skus"]),
                               "orders": self.seed["orders"], "seconds": self.seed["seconds"],
                               "order_ids_sampled": len(self.seed["order_ids"])}
        print(f"seeded in {self.seed['seconds']} s")
        self.report["postgres"] = seed.server_version(self.database_url)
        self.report["auth_enforced"] = self._auth_enforced()

    def _start_stack(self):
        cfg = self.config
        self.database_url = seed.create_database(cfg.database_url, cfg.database)
        if not cfg.keep_db:
            self.cleanups.append(("drop the bench database", lambda: seed.drop_database(self.database_url)))
        harness.migrate(self.database_url)
        self.vhost, self.amqp_uri = harness.create_vhost(cfg.amqp_uri, "oms-bench")
        self.report["vhost"] = self.vhost
        self.cleanups.append(("delete the bench vhost", lambda: harness.delete_vhost(self.vhost)))
        # notification_service emails every created order: to an SMTP server of the bench's own
        # that accepts and drops them (a mail relay is another machine's work: not counted as ours).
        smtp_port = harness.free_port()
        self.start(MAIL_SINK, [sys.executable, "-m", "scripts.mail_sink", "serve", "--port", str(smtp_port),
                               "--discard"], harness.venv_env())
        self.stack_env = harness.venv_env(
            AMQP_URI=self.amqp_uri, DATABASE_URL=self.database_url, JWT_SECRET=cfg.jwt_secret,
            GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=harness.free_port(),
            GATEWAY_WORKERS=cfg.workers, GATEWAY_THREADS=cfg.threads,
            SMTP_HOST="127.0.0.1", SMTP_PORT=smtp_port,
            RPC_TIMEOUT=os.environ.get("RPC_TIMEOUT", "10"), LOG_LEVEL=os.environ.get("LOG_LEVEL", "INFO"),
            METRICS_PORT=harness.free_metrics_base())
        print(f"starting the stack (database {cfg.database}, vhost {self.vhost}) ...", flush=True)
        self._run_stack(self.stack_env)

    def _auth_enforced(self):
        status, _ = loadgen.one_request(self.urls[OURS], self.workload("list_orders", token="not-a-token"))
        return status == 401

    # ---- processes -----------------------------------------------------------

    def start_process(self, process):
        """Keep `process` (a harness.Process, started or not) for CPU accounting, and stop it at the end."""
        self.processes[process.name] = process
        self.cleanups.append((f"stop {process.name}", process.stop))
        return process

    def start(self, name, cmd, env):
        return self.start_process(harness.Process(name, cmd, env, self.logs / f"{name}.log")).start()

    def _run_stack(self, env):
        stack = self.start_process(harness.Stack(env, self.logs / "stack.log"))
        self.urls = {OURS: stack.base_url}
        stack.start(timeout=90)

    def restart_stack(self, **overrides):
        """The default stack again, with `overrides` on top of its environment."""
        self.processes["stack"].stop()
        self._run_stack({**self.stack_env, **{key: str(value) for key, value in overrides.items()}})

    def start_gunicorn(self, name, app):
        """A peer served exactly like the gateway (same gunicorn settings file), on its own port."""
        env = harness.venv_env(**{**self._peer_env(), "GATEWAY_PORT": harness.free_port()})
        process = self.start(name, [sys.executable, "-m", "gunicorn", "-c", "gateway/gunicorn_conf.py", app], env)
        url = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
        harness.wait_http(url + "/health", 60, process)
        self.urls[name] = url
        return process

    def _peer_env(self):
        cfg = self.config
        return {"AMQP_URI": self.amqp_uri, "DATABASE_URL": self.database_url, "JWT_SECRET": cfg.jwt_secret,
                "GATEWAY_HOST": "127.0.0.1", "GATEWAY_WORKERS": cfg.workers, "GATEWAY_THREADS": cfg.threads,
                "RPC_TIMEOUT": os.environ.get("RPC_TIMEOUT", "10"), "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO")}

    def cpu_labels(self):
        """{pid: label} of every process the bench started, for CPU accounting."""
        labels = {}
        for name, process in self.processes.items():
            pids = process.tree()
            if name in ("stack", SECOND_STACK):
                prefix = SECOND_PREFIX if name == SECOND_STACK else ""
                for pid in pids:
                    label = machine.label(pid, process.pid)
                    if label:
                        labels[pid] = prefix + label.replace(" master", "").replace(" worker", "")
            else:
                label = {FLOOR: FLOOR_APP, NAIVE: "naive gateway"}.get(name, name.removesuffix("_2"))
                labels.update({pid: label for pid in pids})
        return labels

    def workload(self, kind, token=None):
        return loadgen.Workload(kind=kind, token=token or self.token, customers=self.seed["customers"],
                                skus=self.seed["skus"], order_ids=self.seed["order_ids"],
                                items_per_order=min(self.config.items_per_order, len(self.seed["skus"])))

    @staticmethod
    def shown(path):
        try:
            return str(Path(path).resolve().relative_to(ROOT))
        except ValueError:
            return str(path)

    # ---- the cases, in order -------------------------------------------------

    def run_cases(self):
        cfg = self.config
        if cfg.baseline:
            side_by_side.baseline_cases(self)
            return
        if cfg.only:
            {"observability": self.observability_cases, "cluster": lambda: cases.cluster_cases(self),
             "side-by-side": lambda: self.observability_cases(separate=False),
             "batching": lambda: batching.batching_cases(self), "overload": lambda: cases.overload_cases(self),
             "consumers": lambda: consumers.consumers_cases(self)}[cfg.only]()
            return
        # First, while both databases are as seeded: batching off runs on a fresh second stack.
        if cfg.batching:
            batching.batching_cases(self)
        cases.peer_cases(self)
        if cfg.scale:
            cases.scale_case(self)
        cases.hop_case(self)
        if cfg.observability:
            self.observability_cases()
        if cfg.cluster:
            cases.cluster_cases(self)
        if cfg.overload:
            cases.overload_cases(self)
        if cfg.consumers:
            consumers.consumers_cases(self)

    def observability_cases(self, separate=True):
        """Metrics on and tracing off (the default), metrics off (METRICS_PORT=0), and tracing on,
        exporting to a local OTLP/HTTP receiver (tests/servers/otlp_receiver.py --discard, standing
        in for a collector on another machine; its CPU is reported apart) at the configured ratio
        and at 100%: as separate cases, then side by side. Then the default stack again. Without
        `separate`, only the side-by-side cases."""
        if self.config.base_url:
            self.report["observability"] = "skipped: BENCH_BASE_URL"
            return
        port = harness.free_port()
        self.start(OTLP_RECEIVER, [sys.executable, "-m", "tests.servers.otlp_receiver", "--port", str(port),
                                   "--discard"], self.stack_env)
        tracing = _tracing_env(f"http://127.0.0.1:{port}", self.config.trace_ratio)
        tracing_all = _tracing_env(f"http://127.0.0.1:{port}", 1.0)
        if separate:
            cases.separate_cases(self, [(METRICS_ON, {}), (METRICS_OFF, {"METRICS_PORT": 0}),
                                        (TRACING_ON, tracing), (TRACING_ALL, tracing_all)])
        side_by_side.observability_cases(self, tracing, tracing_all)
        self.processes[OTLP_RECEIVER].stop()
        self.restart_stack()

    def cleanup(self):
        while self.cleanups:
            what, action = self.cleanups.pop()
            try:
                action()
            except Exception as exc:  # keep cleaning up the rest
                print(f"cleanup: could not {what}: {exc}", file=sys.stderr)


def _tracing_env(endpoint, ratio):
    """Every process exports its spans to `endpoint`, keeping `ratio` of new traces: set here, so the
    cases measure what they say whatever the configured sampler."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": str(ratio)}


def _now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _git():
    def git(*args):
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def _measure_quiet(bench):
    mach = bench.report["machine"]
    print(f"machine: nproc {mach['nproc']}, CPU {mach['cpu_model']}, RAM {mach['ram_gib']} GiB")
    mach["busy_before_start"] = cpu.machine_busy_share(1.0)
    if mach["busy_before_start"] > OTHER_LOAD_WARNING:
        print(f"[!] the machine is already {mach['busy_before_start'] * 100:.0f}% busy before the bench starts "
              "anything: expect lower numbers and flagged cases", flush=True)


def main():
    signal.signal(signal.SIGTERM, _terminate)
    bench = Bench(Config.from_env())
    _measure_quiet(bench)
    broken = False
    try:
        bench.setup()
        bench.run_cases()
        soak.soak(bench)
    except BaseException as exc:
        broken = True
        if isinstance(exc, KeyboardInterrupt):
            bench.problems.append("interrupted")
        elif isinstance(exc, SystemExit):
            bench.problems.append(f"terminated ({exc.code})")
        else:
            traceback.print_exc()
            bench.problems.append(f"{exc.__class__.__name__}: {exc}")
    finally:
        bench.cleanup()
    ratios = report.ratios(bench.cases, bench.config)
    report.print_report(bench, ratios)
    report.write(bench, ratios, _now())
    return 1 if broken or bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
