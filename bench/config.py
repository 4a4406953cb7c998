"""The bench's knobs, read once from the environment (bench/README.md lists them)."""
import os
from dataclasses import dataclass
from pathlib import Path

from common.contract.settings import load_settings
from tests.harness import ROOT

DEFAULT_RESULTS = ROOT / "bench" / "results" / "latest.json"


def _int(env, name, default):
    value = env.get(name, "").strip()
    return int(value) if value else default


def _counts(env, name, default, main):
    """The connection counts in `name` (comma-separated), with `main` among them."""
    return sorted({int(c) for c in env.get(name, default).split(",") if c.strip()} | {main})


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
    batching: bool
    batching_connections: list
    batching_rounds: int
    batch_max: int | None
    overload: bool
    overload_connections: int
    overload_rounds: int
    max_in_flight: int
    consumers: bool
    consumers_rounds: int
    consumer_batch_max: int | None
    only: str
    observability_rounds: int
    side_by_side_control: bool
    baseline: str | None
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
    trace_ratio: float

    @classmethod
    def from_env(cls, env=os.environ):
        main = _int(env, "BENCH_MAIN_CONNECTIONS", 32)
        settings = load_settings(env)  # the system's own settings: broker, database, gateway, secret
        return cls(
            base_url=(env.get("BENCH_BASE_URL") or "").rstrip("/") or None,
            seconds=max(1, _int(env, "BENCH_SECONDS", 10)),
            warmup=max(0, _int(env, "BENCH_WARMUP_SECONDS", 2)),
            seed_orders=max(1, _int(env, "BENCH_SEED_ORDERS", 100_000)),
            customers=max(1, _int(env, "BENCH_CUSTOMERS", 200)),
            products=max(2, _int(env, "BENCH_PRODUCTS", 50)),
            items_per_order=max(1, _int(env, "BENCH_ITEMS_PER_ORDER", 2)),
            connections=_counts(env, "BENCH_CONNECTIONS", "1,8,32,64", main),
            main_connections=main,
            loadgen=env.get("BENCH_LOADGEN", "auto"),
            scale=env.get("BENCH_SCALE", "1") != "0",
            observability=env.get("BENCH_OBSERVABILITY", "1") != "0",
            cluster=env.get("BENCH_CLUSTER", "1") != "0",
            batching=env.get("BENCH_BATCHING", "1") != "0",
            batching_connections=_counts(env, "BENCH_BATCHING_CONNECTIONS", "1,32,128", main),
            batching_rounds=max(1, _int(env, "BENCH_BATCHING_ROUNDS", 2)),
            # "batching on" runs with these (None: not settings of this checkout, so on and off
            # run alike: the comparison is a control).
            batch_max=getattr(settings, "batch_max", None),
            consumer_batch_max=getattr(settings, "consumer_batch_max", None),
            overload=env.get("BENCH_OVERLOAD", "1") != "0",
            overload_connections=max(1, _int(env, "BENCH_OVERLOAD_CONNECTIONS", 512)),
            overload_rounds=max(1, _int(env, "BENCH_OVERLOAD_ROUNDS", 2)),
            # "shedding on" runs with this bound per gateway process (config.yml or the environment).
            max_in_flight=settings.gateway_max_in_flight,
            consumers=env.get("BENCH_CONSUMERS", "1") != "0",
            consumers_rounds=max(1, _int(env, "BENCH_CONSUMERS_ROUNDS", 2)),
            only=env.get("BENCH_ONLY", ""),
            observability_rounds=max(1, _int(env, "BENCH_OBSERVABILITY_ROUNDS", 3)),
            side_by_side_control=env.get("BENCH_SIDE_BY_SIDE_CONTROL", "0") == "1",
            baseline=env.get("BENCH_BASELINE", "").strip() or None,
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
            # "tracing on" keeps this share of new traces: the ratio the stack is configured with.
            trace_ratio=settings.otel_traces_sampler_arg,
        )

    def batching_cases(self):
        """How many cases batching.batching_cases measures: off and on at every count, the floor
        at every count above one, each round."""
        floor = sum(1 for c in self.batching_connections if c > 1)
        return (2 * len(self.batching_connections) + floor) * self.batching_rounds

    def expected_seconds(self):
        """About how long the cases take (the bearer token must outlive them)."""
        cases = (len(self.connections) * 2 + 5 + (1 if self.scale else 0)
                 + (7 * self.observability_rounds + 3 if self.observability else 0) + (2 if self.cluster else 0)
                 + (self.batching_cases() + 3 * self.batching_rounds if self.batching else 0)
                 + (3 * self.overload_rounds + 1 if self.overload else 0)
                 + (3 * self.consumers_rounds + 1 if self.consumers else 0))
        return cases * (self.seconds + self.warmup + 2)
