"""What the bench reads of this machine and its processes from /proc: the machine, a process's label and RSS."""
import os
import sys
from pathlib import Path

from common.contract.services import SERVICE_NAMES
from tests.harness.processes import ppid

SHELLS = {"sh", "bash", "dash"}


def machine():
    info = {"nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)), "cpu_model": "unknown",
            "ram_gib": None, "kernel": os.uname().release, "python": sys.version.split()[0]}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    return info


def rss_kb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cmdline(pid):
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def _comm(pid):
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def label(pid, root_pid):
    """A readable name for a stack process: 'order_service', 'gateway worker', 'honcho', ...

    None for the shells honcho puts between itself and each command (not worth sampling).
    """
    if pid == root_pid:
        return "honcho"
    if _comm(pid) in SHELLS:
        return None
    cmd = cmdline(pid)
    for service in SERVICE_NAMES:
        if f"{service}.service" in cmd:
            return service
    if "gunicorn" in cmd:
        parent = ppid(pid)
        parent_is_gunicorn = parent is not None and "gunicorn" in cmdline(parent) and _comm(parent) not in SHELLS
        return "gateway worker" if parent_is_gunicorn else "gateway master"
    if "honcho" in cmd:
        return "honcho"
    return _comm(pid) or None
