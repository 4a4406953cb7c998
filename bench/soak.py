"""The memory soak (BENCH_SOAK_SECONDS): POST load while the RSS of every stack process is sampled."""
import threading
import time

from bench import loadgen, machine
from bench.targets import OURS


def soak(bench):
    cfg = bench.config
    if not cfg.soak_seconds:
        return
    print(f"\nsoak: POST /api/v1/orders at {cfg.soak_connections} connections for {cfg.soak_seconds}s, "
          f"RSS every {cfg.soak_interval}s", flush=True)
    honcho = bench.processes.get("stack")
    if honcho is None:
        print("  the stack was not started by the bench (BENCH_BASE_URL): its processes are unknown, "
              "no RSS to sample")
        bench.report["soak"] = {"skipped": "BENCH_BASE_URL"}
        return
    result = {}

    def load():
        try:
            result.update(loadgen.run(bench.loadgen, bench.urls[OURS], bench.workload("post_order"),
                                      cfg.soak_connections, cfg.soak_seconds))
        except Exception as exc:
            result["failed"] = f"{exc.__class__.__name__}: {exc}"

    started = time.monotonic()
    samples = _sample_while(honcho, threading.Thread(target=load, daemon=True), cfg.soak_interval)
    elapsed = round(time.monotonic() - started, 1)
    rows = _rows(samples)
    _print(rows, result)
    if "failed" in result:
        bench.problems.append("soak: " + result["failed"])
    bench.report["soak"] = {"seconds": elapsed, "connections": cfg.soak_connections,
                            "interval_seconds": cfg.soak_interval, "processes": rows, "load": result,
                            "samples_kb": {str(pid): data for pid, data in samples.items()}}


def _sample_while(honcho, thread, interval):
    """Run `thread`, sampling the RSS of honcho's processes every `interval` s: {pid: {"label", "kb"}}."""
    samples = {}
    thread.start()
    while True:
        for pid in honcho.tree():
            name = machine.label(pid, honcho.pid)
            kb = machine.rss_kb(pid)
            if name and kb is not None:
                samples.setdefault(pid, {"label": name, "kb": []})["kb"].append(kb)
        if not thread.is_alive():
            return samples
        thread.join(timeout=interval)


def _mib(kb):
    return round(kb / 1024, 1)


def _rows(samples):
    rows = []
    for pid, data in sorted(samples.items(), key=lambda item: (item[1]["label"], item[0])):
        kb = data["kb"]
        rows.append({"process": data["label"], "pid": pid, "samples": len(kb), "first_mib": _mib(kb[0]),
                     "last_mib": _mib(kb[-1]), "max_mib": _mib(max(kb)), "growth_mib": _mib(kb[-1] - kb[0])})
    return rows


def _print(rows, result):
    print(f"  {'process':<20} {'pid':>7} {'samples':>7} {'first MiB':>10} {'last MiB':>9} {'max MiB':>8} "
          f"{'growth':>7}")
    for row in rows:
        print(f"  {row['process']:<20} {row['pid']:>7} {row['samples']:>7} {row['first_mib']:>10.1f} "
              f"{row['last_mib']:>9.1f} {row['max_mib']:>8.1f} {row['growth_mib']:>+7.1f}")
    if "failed" in result:
        return
    statuses = ", ".join(f"{code}x{n}" for code, n in result.get("statuses", {}).items())
    print(f"  load during soak: {result.get('requests', 0) - result.get('non2xx', 0)} ok requests, "
          f"{result.get('errors', 0)} errors{' (' + statuses + ')' if statuses else ''}, "
          f"p50 {result.get('p50_ms')} ms, p99 {result.get('p99_ms')} ms")
    if result.get("error_sample"):
        print(f"  first error answer: {result['error_sample'][:160]}")
