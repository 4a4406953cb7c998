"""A local SMS provider for development: it speaks Twilio's Messages API and keeps what it receives.

    python -m scripts.sms_sink serve [--host 127.0.0.1] [--port 1026] [--file var/sms/messages.jsonl]
    python -m scripts.sms_sink list [--file var/sms/messages.jsonl] [--limit 20]      # `make sms`

`make run` starts `serve` on 127.0.0.1:SMS_SINK_PORT when SMS_API_URL is unset, which is
where notification_service then sends its SMS, so the whole stack runs without a provider.
It answers `POST /2010-04-01/Accounts/{sid}/Messages.json` (form fields To, From, Body,
HTTP Basic auth) as the real API does: 201 with the message as JSON (`sid` "SM..."), 400
for a missing field, 401 without credentials. Each message is one JSON line in the file.
"""
import argparse
import base64
import json
import re
import sys
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

DEFAULT_FILE = Path("var/sms/messages.jsonl")
MESSAGES_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>[^/]+)/Messages\.json$")
MAX_BODY = 64 * 1024


class MessagesApi(BaseHTTPRequestHandler):
    """Twilio's Messages API, as far as sending goes. The server it runs in has `accept(message)`
    (called with each message taken; it may raise Refusal) and `credentials` ((sid, token), or
    None for any)."""

    def do_POST(self):
        match = MESSAGES_PATH.match(self.path)
        if match is None:
            return self._answer(404, {"code": 20404, "message": "The requested resource was not found"})
        sid = match["sid"]
        if not self._authorized(sid):
            return self._answer(401, {"code": 20003, "message": "Authenticate"})
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
        form = {key: values[0] for key, values in parse_qs(self.rfile.read(length).decode()).items()}
        missing = [name for name in ("To", "From", "Body") if not form.get(name)]
        if missing:
            return self._answer(400, {"code": 21604, "message": f"A '{missing[0]}' parameter is required."})
        message = {"sid": "SM" + uuid.uuid4().hex, "account_sid": sid, "to": form["To"], "from": form["From"],
                   "body": form["Body"], "status": "queued",
                   "date_created": datetime.now(timezone.utc).strftime("%a, %d %b %Y %H:%M:%S +0000")}
        try:
            self.server.accept(message)
        except Refusal as refusal:
            return self._answer(refusal.status, refusal.body)
        self._answer(201, message)

    def _authorized(self, sid):
        scheme, _, encoded = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return False
        expected = self.server.credentials
        return user == sid and (expected is None or (user, password) == expected)

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


class Refusal(Exception):
    """What the provider answers instead of taking a message (an outage, a bad number)."""

    def __init__(self, status, body):
        super().__init__(status)
        self.status, self.body = status, body


class SmsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host, port, accept, credentials=None):
        super().__init__((host, port), MessagesApi)
        self.accept = accept
        self.credentials = credentials


def keep_in(path):
    """accept(): append each message to `path` as a JSON line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def accept(message):
        with lock, path.open("a") as file:
            file.write(json.dumps(message) + "\n")
    return accept


def serve(host, port, path):
    server = SmsServer(host, port, keep_in(path))
    print(f"sms sink: listening on http://{host}:{port} (Twilio's Messages API), keeping every message in {path}",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()
    return 0


def print_list(path, limit):
    lines = path.read_text().splitlines() if path.exists() else []
    if not lines:
        print(f"no SMS in {path} (the local sink keeps them there while `make run` runs without SMS_API_URL)")
        return 0
    messages = [json.loads(line) for line in lines[-limit:]][::-1]
    width = max(len(message["to"]) for message in messages)
    print(f"{'time (UTC)':<31}  {'to':<{width}}  body")
    for message in messages:
        print(f"{message['date_created']:<31}  {message['to']:<{width}}  {message['body']}")
    if len(lines) > len(messages):
        print(f"... the latest {len(messages)} of {len(lines)}; all are in {path}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m scripts.sms_sink", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="answer the Messages API on host:port and keep each message")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=1026)
    run.add_argument("--file", type=Path, default=DEFAULT_FILE)
    listing = commands.add_parser("list", help="the latest messages: time, to, body")
    listing.add_argument("--file", type=Path, default=DEFAULT_FILE)
    listing.add_argument("--limit", type=int, default=20)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.host, args.port, args.file)
    return print_list(args.file, args.limit)


if __name__ == "__main__":
    sys.exit(main())
