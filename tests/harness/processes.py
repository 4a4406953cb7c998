"""Processes of a throwaway stack: started in sessions of their own, logged to a file each, stopped
by pid with their descendants; the Procfile's processes under honcho, a gateway alone, or one by one.
"""
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.harness.ports import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
HONCHO = [sys.executable, "-m", "honcho", "start", "-f", "Procfile"]
GATEWAY = [sys.executable, "-m", "gunicorn", "-c", "gateway/gunicorn_conf.py", "gateway.wsgi:app"]


def venv_env(base=None, **overrides):
    """`base` (default: this environment) with this interpreter's bin first on PATH, since the
    Procfile says `python` and `gunicorn`; `overrides` on top, as strings."""
    base = os.environ if base is None else base
    env = {**base, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"}
    env.update({key: str(value) for key, value in overrides.items()})
    return env


def wait_http(url, timeout, process=None, ok=(200,), request_timeout=5):
    """Poll `url` until it answers a status in `ok` (None: any); RuntimeError naming the log otherwise."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise RuntimeError(f"{process.name} exited; see {process.log_path}")
        try:
            response = requests.get(url, timeout=request_timeout)
            if ok is None or response.status_code in ok:
                return
            last = f"{response.status_code} {response.text[:300]}"
        except requests.RequestException as exc:
            last = exc.__class__.__name__
        time.sleep(0.3)
    where = f"; see {process.log_path}" if process is not None else ""
    raise RuntimeError(f"{url} not ready after {timeout}s: {last}{where}")


class Process:
    """One command in its own session, output to a log file; stopped by pid, descendants included."""

    def __init__(self, name, cmd, env, log_path, stop_signal=signal.SIGTERM, cwd=ROOT, append=True):
        self.name, self.cmd, self.env, self.log_path = name, cmd, env, Path(log_path)
        self.stop_signal, self.cwd, self.append = stop_signal, cwd, append
        self.process = None
        self._known = {}  # pid -> start time

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab" if self.append else "wb") as log:
            self.process = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def tree(self):
        """pids of this process and its descendants (remembered, so stop() can reach orphans)."""
        if not self.alive():
            return []
        pids = [self.pid] + descendants(self.pid)
        for pid in pids:
            self._known.setdefault(pid, _start_time(pid))
        return pids

    def stop(self, timeout=20):
        if self.process is None:
            return
        self.tree()
        if self.alive():
            try:
                self.process.send_signal(self.stop_signal)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill(self.pid)
                self.process.wait(timeout=5)
        self._stop_leftovers()

    def _stop_leftovers(self):
        """Children in sessions of their own (honcho starts each in one) that outlived it: the same
        pid *and* start time, so a pid reused by someone else is never touched."""
        def ours_and_alive(pid):
            return _exists(pid) and _start_time(pid) == self._known[pid]

        leftovers = [pid for pid in self._known if pid != self.pid and ours_and_alive(pid)]
        deadline = time.monotonic() + 5
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.2)
            leftovers = [pid for pid in leftovers if ours_and_alive(pid)]
        for pid in leftovers:
            _kill(pid)
        self._known.clear()


class Stack(Process):
    """The Procfile's processes under honcho (exactly what `make run` starts), of the checkout at `cwd`."""

    def __init__(self, env, log_path, name="stack", cwd=ROOT, append=True):
        super().__init__(name, HONCHO, env, log_path, stop_signal=signal.SIGINT, cwd=cwd, append=append)
        self.base_url = f"http://127.0.0.1:{env['GATEWAY_PORT']}"

    def start(self, timeout=60):
        super().start()
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout=60):
        wait_http(self.base_url + "/health", timeout, self)


class Gateway(Process):
    """A gateway alone (no services), for testing what it does when parts are missing."""

    def __init__(self, env, log_path):
        env = {**env, "GATEWAY_PORT": str(free_port()), "GATEWAY_WORKERS": "1"}
        super().__init__("gateway", GATEWAY, env, log_path)
        self.base_url = f"http://127.0.0.1:{env['GATEWAY_PORT']}"

    def __enter__(self):
        self.start()
        wait_http(self.base_url + "/health", 30, self, ok=None, request_timeout=15)
        return self

    def __exit__(self, *exc):
        self.stop()


class ProcessStack:
    """The Procfile's processes started one by one, so a test can kill and restart any of them."""

    def __init__(self, env, log_dir):
        self.env = env
        self.log_dir = log_dir
        self.base_url = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
        self.commands = procfile()
        self.envs = {}
        self.processes = {}

    def add(self, name, like, **env):
        """Another instance of process `like` (a Procfile name), with `env` on top of the stack's."""
        self.commands[name] = self.commands[like]
        self.envs[name] = {key: str(value) for key, value in env.items()}

    def start(self, *names, timeout=60):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in names or self.commands:
            with open(self.log_dir / f"{name}.log", "ab") as log:
                self.processes[name] = subprocess.Popen(
                    shlex.split(self.commands[name]), cwd=ROOT, env={**self.env, **self.envs.get(name, {})},
                    stdout=log, stderr=subprocess.STDOUT)
        if not names:
            self.wait_healthy(timeout)

    def wait_healthy(self, timeout=60):
        wait_http(self.base_url + "/health", timeout)

    def kill(self, name, sig=signal.SIGKILL):
        process = self.processes[name]
        process.send_signal(sig)
        return process

    def stop(self, grace=20):
        """SIGTERM to every process, then SIGKILL to those still running `grace` seconds later
        (one deadline for all: a stack whose broker is gone does not wait 20 s per process)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def procfile(root=ROOT):
    """{process name: command} of the Procfile."""
    commands = {}
    for line in (Path(root) / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            commands[name.strip()] = command.strip()
    return commands


# ---- /proc -------------------------------------------------------------------

def _stat_fields(pid):
    """The fields of /proc/<pid>/stat after the command name (state is [0], ppid [1]), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid):
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def _exists(pid):
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


def ppid(pid):
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def descendants(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = ppid(entry)
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out

