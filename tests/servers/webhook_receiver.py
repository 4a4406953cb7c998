"""A real HTTP server that receives webhook deliveries, for the tests of webhook_service.

It keeps every request (path, headers, body, when), answers 200 unless told otherwise for a
path: `respond(path, 500, 500)` answers the next requests to `path` with those statuses, then
200; `hang(path, seconds)` holds each answer to `path` that long (a subscriber past its
timeout). One server serves many webhooks: give each its own path.

    python -m tests.servers.webhook_receiver --port 8090 --status 204 --discard

runs one as a process that keeps nothing (`make bench`'s subscriber: what a delivery costs to
send, not to keep), answering every request with `--status`.
"""
import argparse
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from requests.structures import CaseInsensitiveDict

from tests.harness.ports import free_port


@dataclass(frozen=True)
class Received:
    path: str
    headers: CaseInsensitiveDict
    body: bytes
    at: float  # time.monotonic()


class WebhookReceiver:
    def __init__(self, host="127.0.0.1", port=None, status=200, discard=False):
        self.host, self.port = host, port or free_port()
        self.status, self.discard = status, discard  # the answer unless told otherwise; keep nothing
        self._received = []
        self._statuses = {}  # path -> statuses still to answer
        self._hangs = {}  # path -> seconds
        self._lock = threading.Lock()
        self._server = None

    def url(self, path):
        return f"http://{self.host}:{self.port}{path}"

    def respond(self, path, *statuses):
        with self._lock:
            self._statuses[path] = list(statuses)

    def hang(self, path, seconds):
        self._hangs[path] = seconds

    def requests(self, path=None):
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def wait_for(self, path, count=1, timeout=20):
        """The requests to `path` once there are `count` of them (or what came within `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.requests(path)) < count:
            time.sleep(0.05)
        return self.requests(path)

    def start(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path
                with receiver._lock:
                    if not receiver.discard:
                        receiver._received.append(Received(path, CaseInsensitiveDict(self.headers.items()), body,
                                                           time.monotonic()))
                    statuses = receiver._statuses.get(path)
                    status = statuses.pop(0) if statuses else receiver.status
                time.sleep(receiver._hangs.get(path, 0))
                answer = b"" if status == 204 else b"ok"  # a 204 has no body, nor a Content-Length
                try:
                    self.send_response(status)
                    if 300 <= status < 400:
                        self.send_header("Location", receiver.url(path + "/elsewhere"))
                    if status != 204:
                        self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender gave up on a hanging answer, as it should

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def main(argv):
    parser = argparse.ArgumentParser(prog="python -m tests.servers.webhook_receiver",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--status", type=int, default=200, help="the answer to every request")
    parser.add_argument("--discard", action="store_true", help="keep nothing of what is received")
    args = parser.parse_args(argv)
    receiver = WebhookReceiver(port=args.port, status=args.status, discard=args.discard).start()
    print(f"webhook receiver on {receiver.url('/')}, answering {args.status}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
