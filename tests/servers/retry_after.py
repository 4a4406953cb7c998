"""An HTTP server that sheds as the gateway does, once, and the bench's Python load generator against it.

The server answers its first request 503 `overloaded` with `Retry-After` (as gateway/edge/refusal.py
does under overload) and every later one 201, and notes when each request arrived.

    python -m tests.servers.retry_after --seconds 3 --honour

runs one, drives it with bench/loadgen.py (one connection, honouring Retry-After or not) and prints
one JSON line: the load generator's result and the arrival times (time.monotonic()). A process of
its own: the unit tests run under eventlet (tests/conftest.py), whose green threads and the load
generator's forked workers do not mix; the bench runs without it, as this does.
"""
import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench import loadgen

OVERLOADED = b'{"error": {"code": "overloaded", "message": "The gateway is at capacity: try again shortly."}}'


class SheddingOnce(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, retry_after):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.retry_after, self.arrivals, self.lock = retry_after, [], threading.Lock()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the gateway's
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed ACK between them

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.arrivals.append(time.monotonic())
            first = len(self.server.arrivals) == 1
        if first:
            self._answer(503, OVERLOADED, {"Retry-After": str(self.server.retry_after)})
        else:
            self._answer(201, b'{"id": "x"}', {})

    def _answer(self, status, body, headers):
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet: the arrivals are what is kept
        pass


def drive(seconds, honour, retry_after=1):
    """The load generator's result for one connection for `seconds` against a SheddingOnce, and its arrivals."""
    server = SheddingOnce(retry_after)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    workload = loadgen.Workload(kind="post_order", token="t", customers=["c1"], skus=["a", "b"],
                                honour_retry_after=honour)
    try:
        result = loadgen.run("python", server.url, workload, connections=1, seconds=seconds)
    finally:
        server.shutdown()
        server.server_close()
    return {"result": result, "arrivals": server.arrivals}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--retry-after", type=int, default=1)
    parser.add_argument("--honour", action="store_true", help="the load generator honours Retry-After")
    args = parser.parse_args()
    print(json.dumps(drive(args.seconds, args.honour, args.retry_after)), flush=True)


if __name__ == "__main__":
    main()
