"""A real redis-server (Debian's package) on a port of its own, started and stopped by the test."""
import os
import shutil
import socket
import subprocess
import time

from tests.harness.ports import free_port

REDIS_SERVER = os.environ.get("REDIS_SERVER", "/usr/bin/redis-server")


def redis_server_or_skip():
    """The redis-server binary; a test without it fails under CI=true, else skips."""
    import pytest

    path = shutil.which(REDIS_SERVER) or shutil.which("redis-server")
    if path:
        return path
    message = "redis-server is not installed (apt-get install redis-server; .ci/run does it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


class RedisServer:
    """redis-server in memory only (no dump, no AOF), on 127.0.0.1:`port`; stop() and start() again
    on the same port make an outage as the gateway sees it."""

    def __init__(self, binary, port=None, log_path=None):
        self.binary, self.port, self.log_path = binary, port or free_port(), log_path
        self.process = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout=10):
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "no"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None
