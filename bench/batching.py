"""Batching off and on in the same run, with the floor: POST req/s and p99 at each of
BENCH_BATCHING_CONNECTIONS (above one), p50 at one connection, the CPU per order of every process
(Postgres and RabbitMQ included) and the Postgres transactions per order.

"On" is the default stack with the defaults (BATCH_MAX and CONSUMER_BATCH_MAX from config.yml or
the bench's environment); "off" is a second stack (its own database, seeded alike, and vhost; see
side_by_side.second_stack) with both at 1. Each is measured alone at the full count, in turn, not
side by side on half the connections: a batch forms from the requests one gateway process holds at
once, so half the connections would measure smaller batches; the floor the target compares "on"
with is measured alone at the full count; and one connection cannot be halved.

A round is a block of every count per target, in the order off, on, floor, then floor, on, off,
... (BENCH_BATCHING_ROUNDS), so that drift over the minutes favours none; each target's median
round decides. Each block starts its target afresh with nothing else of the bench's up.
"""
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from bench import cases, consumers, loadgen, side_by_side
from bench.targets import (
    BATCH_FLOOR,
    BATCH_OFF,
    BATCH_ON,
    BATCHING_OFF,
    FLOOR,
    FLOOR_APP,
    OURS,
    SECOND_PREFIX,
    SECOND_STACK,
    SHARED_LABELS,
)
from tests import harness

TARGETS = (BATCH_OFF, BATCH_ON, BATCH_FLOOR)  # a round's order, or its reverse
FIRST, SECOND = "first", "second"  # whose processes a CPU label belongs to: the default stack's, the second's


@dataclass
class Drive:
    """Where a target's load goes, what it sends, where its transactions are, whose CPU counts."""
    url: str
    workload: object
    process: str | None  # the bench process serving it (bench.processes), checked before each case
    database_url: str
    owner: str  # FIRST, SECOND or FLOOR
    vhost: str | None = None  # a stack's: its consumers' work is waited for before the cases


def batching_cases(bench):
    """Off, on and the floor at every count of BENCH_BATCHING_CONNECTIONS (the floor above one)."""
    cfg = bench.config
    if cfg.base_url:
        bench.report["batching"] = "skipped: BENCH_BASE_URL"
        return
    bench.report["batching"] = {"on": {"BATCH_MAX": cfg.batch_max, "CONSUMER_BATCH_MAX": cfg.consumer_batch_max},
                                "off": BATCHING_OFF, "rounds": cfg.batching_rounds,
                                "connections": cfg.batching_connections}
    print(f"\nbatching: {describe(cfg)}", flush=True)
    measured = {}
    try:
        drives = _drives(bench)
        for n in range(cfg.batching_rounds):
            for target in TARGETS if n % 2 == 0 else TARGETS[::-1]:
                _block(bench, drives, target, n + 1, measured)
    except Exception as exc:  # recorded: the other cases still tell something
        bench.problems.append(f"batching: {exc.__class__.__name__}: {exc}")
        print(f"  batching FAILED {exc}", flush=True)
    finally:
        for name in (SECOND_STACK, FLOOR):
            if name in bench.processes:
                bench.processes[name].stop()
        if not bench.processes["stack"].alive():  # the default stack again, for the next cases
            bench.restart_stack()
    for (target, _), rounds in sorted(measured.items(), key=lambda item: item[0][1]):
        bench.cases.append(cases.median_case(target, rounds))


def describe(cfg):
    """What "on" and "off" run with, in words."""
    if cfg.batch_max is None and cfg.consumer_batch_max is None:
        return ("BATCH_MAX and CONSUMER_BATCH_MAX are not settings of this checkout: on and off run "
                "alike (a control)")
    control = " (a control: on runs as off)" if (cfg.batch_max, cfg.consumer_batch_max) == (1, 1) else ""
    return (f"on: BATCH_MAX {cfg.batch_max}, CONSUMER_BATCH_MAX {cfg.consumer_batch_max}; "
            f"off: {', '.join(f'{name} {value}' for name, value in BATCHING_OFF.items())}{control}")


def _drives(bench):
    """The second stack (batching off: made, not started) and the rest: {target: Drive}."""
    second_env, workload = side_by_side.second_stack(bench, suffix="_batching_off")
    bench.start_process(harness.Stack({**second_env, **BATCHING_OFF}, bench.logs / f"{SECOND_STACK}.log",
                                      name=SECOND_STACK))
    post = bench.workload("post_order")
    return {BATCH_OFF: Drive(f"http://127.0.0.1:{second_env['GATEWAY_PORT']}", workload, SECOND_STACK,
                             second_env["DATABASE_URL"], SECOND, unquote(urlsplit(second_env["AMQP_URI"]).path[1:])),
            BATCH_ON: Drive(bench.urls[OURS], post, "stack", bench.database_url, FIRST, bench.vhost),
            BATCH_FLOOR: Drive(None, post, None, bench.database_url, FLOOR)}


def _block(bench, drives, target, number, measured):
    """Round `number` of `target` at every count (the floor's above one) on what it runs on,
    started afresh; `measured`: {(target, connections): [its cases]}."""
    cfg, drive = bench.config, drives[target]
    _start(bench, drive)
    # Unrecorded load after the start: new processes and Postgres backends (connections, caches)
    # cost the first seconds, and the first load after seeding pays for the database settling.
    loadgen.run(bench.loadgen, drive.url, drive.workload, cfg.main_connections, cfg.seconds)
    if drive.vhost:  # else the emails of that load would be sent during, and charged to, the cases
        consumers.drain(bench, database_url=drive.database_url, vhost=drive.vhost)
    for connections in (c for c in cfg.batching_connections if target != BATCH_FLOOR or c > 1):
        case = cases.new_case("post_order", f"{target} #{number}", connections)
        stack = bench.processes[drive.process] if drive.process else None
        measured.setdefault((target, connections), []).append(cases.load_case(
            bench, case, drive.url, drive.workload, stack, drive.database_url, own=_own(drive.owner)))
    if target == BATCH_FLOOR:
        bench.processes[FLOOR].stop()


def _start(bench, drive):
    """What `drive` runs on, started afresh, with no other stack up: every target starts alike, and
    Postgres has room (a loaded stack holds about 50 connections, the floor 32)."""
    for name in (SECOND_STACK, "stack"):
        bench.processes[name].stop()
    if drive.owner == FLOOR:
        bench.start_gunicorn(FLOOR, "bench.floor_app:app")
        drive.url = bench.urls[FLOOR]
    elif drive.owner == SECOND:
        bench.processes[SECOND_STACK].start(timeout=90)
    else:
        bench.restart_stack()


def _owner(label):
    """Whose process a CPU label is: FIRST, SECOND, FLOOR, or None for what every case counts
    (Postgres, RabbitMQ, and what is not the system: the load generator, the mail sink, other)."""
    if label in SHARED_LABELS:
        return None
    if label.startswith(SECOND_PREFIX):
        return SECOND
    return FLOOR if label == FLOOR_APP else FIRST


def _own(owner):
    """The CPU seconds by label that count for a case of `owner`: its processes' and the shared ones."""
    def own(seconds):
        return {label.removeprefix(SECOND_PREFIX): value for label, value in seconds.items()
                if _owner(label) in (None, owner)}
    return own
