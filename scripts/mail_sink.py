"""A local SMTP sink for development: every message it receives is kept as an .eml file.

    python -m scripts.mail_sink serve [--host 127.0.0.1] [--port 1025] [--dir var/mail | --discard]
    python -m scripts.mail_sink list [--dir var/mail] [--limit 20]      # `make mail`

`make run` starts `serve` on 127.0.0.1:MAIL_SINK_PORT when SMTP_HOST is unset,
which is where notification_service then sends its email, so the whole stack
runs without a mail server. Each message is written as it was received, one
file per message, named by the time it arrived (UTC), so `ls var/mail` sorts
them and any mail client opens them. `list` prints the latest: when, to whom,
and the subject. `--discard` accepts and drops every message (`make bench`'s
relay: what it costs to send, not to keep).
"""
import argparse
import itertools
import signal
import sys
import threading
from datetime import datetime, timezone
from email import policy
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from pathlib import Path

DEFAULT_DIR = Path("var/mail")


class Sink:
    """aiosmtpd handler: keeps each message as <arrival time>-<n>.eml in `directory`
    (or, with no directory, only counts it)."""

    def __init__(self, directory):
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._numbers = itertools.count(1)

    async def handle_DATA(self, server, session, envelope):
        if self.directory is None:
            next(self._numbers)
        else:
            self.keep(envelope.original_content or envelope.content)
        return "250 Message accepted for delivery"

    def keep(self, content):
        arrived = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.directory / f"{arrived}-{next(self._numbers):06d}.eml"
        partial = path.with_suffix(".part")
        partial.write_bytes(content)
        partial.replace(path)  # a reader never sees half a message
        return path


def serve(host, port, directory):
    from aiosmtpd.controller import Controller

    controller = Controller(Sink(directory), hostname=host, port=port)
    controller.start()
    kept = f"keeping every message under {directory}/" if directory is not None else "dropping every message"
    print(f"mail sink: listening on {host}:{port}, {kept}", flush=True)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    controller.stop()
    return 0


def messages(directory, limit):
    """The latest `limit` messages under `directory`, newest first: [{time, to, subject, path}]."""
    paths = sorted(Path(directory).glob("*.eml"), reverse=True)[:limit]
    found = []
    for path in paths:
        with path.open("rb") as handle:
            headers = BytesParser(policy=policy.default).parse(handle, headersonly=True)
        try:
            sent = parsedate_to_datetime(headers["Date"]) if headers["Date"] else None
        except (TypeError, ValueError):
            sent = None
        when = sent or datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
        found.append({"time": when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                      "to": str(headers["To"] or ""), "subject": str(headers["Subject"] or ""), "path": path})
    return found


def print_list(directory, limit):
    found = messages(directory, limit)
    if not found:
        print(f"no messages under {directory}/ (the local sink keeps them there while `make run` runs "
              "without SMTP_HOST)")
        return 0
    width = max(len(message["to"]) for message in found)
    print(f"{'time (UTC)':<19}  {'to':<{width}}  subject")
    for message in found:
        print(f"{message['time']:<19}  {message['to']:<{width}}  {message['subject']}")
    total = len(list(Path(directory).glob("*.eml")))
    if total > len(found):
        print(f"... the latest {len(found)} of {total}; the files are under {directory}/")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m scripts.mail_sink", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="accept mail on host:port and keep it as .eml files")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=1025)
    run.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    run.add_argument("--discard", action="store_true", help="accept every message and keep none")
    listing = commands.add_parser("list", help="the latest messages: time, to, subject")
    listing.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    listing.add_argument("--limit", type=int, default=20)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.host, args.port, None if args.discard else args.dir)
    return print_list(args.dir, args.limit)


if __name__ == "__main__":
    sys.exit(main())
