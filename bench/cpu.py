"""Where the CPU went during a case, from /proc: per part of the system, and for the whole machine.

A snapshot reads utime+stime of every process of interest, grouped by a
label ("gateway", "order_service", "postgres", ...); the difference of two
snapshots is CPU seconds per label. The machine's busy time (/proc/stat)
minus everything labelled is "other": another load on the machine (a test
run, a build) that makes the case's numbers less true. Interrupt and softirq
time (the kernel delivering loopback packets, charged to no process) is
labelled "kernel (irq)" instead: it grows with the messages and round trips
of the system under test, so it is the case's own cost, not another load. On a virtual machine
the hypervisor may also run someone else on our CPUs ("steal" in
/proc/stat): that is counted apart, since no process here used that time.
"""
import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
SHARED = {"postgres": "postgres", "beam.smp": "rabbitmq"}  # by process name: shared servers
KERNEL = "kernel (irq)"


def _stat(pid):
    """(comm, utime+stime ticks) of `pid`, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    fields = raw.rsplit(")", 1)[1].split()
    return comm, int(fields[11]) + int(fields[12])


def _cpu_ticks():
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal


def machine_busy_ticks():
    """Ticks our processes ran (steal excluded: then nothing here ran)."""
    values = _cpu_ticks()
    return sum(values) - values[3] - values[4] - values[7]


def steal_ticks():
    return _cpu_ticks()[7]


def irq_ticks():
    """Ticks spent in interrupts and softirqs, which /proc/<pid>/stat charges to no process."""
    values = _cpu_ticks()
    return values[5] + values[6]


def snapshot(labelled_pids):
    """labelled_pids: {pid: label} of our own processes; shared servers are found by name."""
    ticks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        stat = _stat(pid)
        if stat is None:
            continue
        comm, used = stat
        label = labelled_pids.get(pid) or SHARED.get(comm)
        if label:
            ticks[pid] = (label, used)
    times = os.times()
    return {"pids": ticks, "machine": machine_busy_ticks(), "steal": steal_ticks(), "irq": irq_ticks(),
            "bench": times.user + times.system + times.children_user + times.children_system}


def usage(before, after, seconds, cpus):
    """{"seconds": {label: cpu seconds}, "machine_busy": fraction of all CPUs, ...}."""
    per_label = {}
    for pid, (label, used) in after["pids"].items():
        start = before["pids"].get(pid, (label, 0))[1]  # a process born during the case counts whole
        per_label[label] = per_label.get(label, 0) + max(0, used - start) / TICK
    per_label["load generator"] = max(0.0, after["bench"] - before["bench"])
    per_label[KERNEL] = max(0, after["irq"] - before["irq"]) / TICK
    machine = max(0, after["machine"] - before["machine"]) / TICK
    per_label["other"] = max(0.0, machine - sum(per_label.values()))
    steal = max(0, after["steal"] - before["steal"]) / TICK
    capacity = seconds * cpus
    return {"seconds": {label: round(value, 3) for label, value in sorted(per_label.items())},
            "machine_busy": round(machine / capacity, 3) if capacity else None,
            "other_share": round(per_label["other"] / capacity, 3) if capacity else None,
            "steal_share": round(steal / capacity, 3) if capacity else None}


def machine_busy_share(seconds=1.0):
    """Share of all CPUs busy over the next `seconds` (before the bench starts anything)."""
    import time

    before = machine_busy_ticks()
    time.sleep(seconds)
    return round((machine_busy_ticks() - before) / TICK / (seconds * len(os.sched_getaffinity(0))), 3)
