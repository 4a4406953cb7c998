"""The development VAPID key for Web Push: made once, kept under var/, its public key printed.

    python -m scripts.push_key ensure [--file var/vapid_private.pem]

`make run` calls it when VAPID_PRIVATE_KEY is unset and points VAPID_PRIVATE_KEY at the file.
It prints the public key front ends subscribe with (GET /api/v1/push/vapid-public-key gives it too).
"""
import argparse
import sys
from pathlib import Path

from notification_service.channels import load_vapid, public_key


def ensure(path):
    from py_vapid import Vapid

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Vapid()
        key.generate_keys()
        key.save_key(str(path))
        path.chmod(0o600)
    print(public_key(load_vapid(str(path))))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m scripts.push_key", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("ensure", help="make the key file if missing; print its public key")
    make.add_argument("--file", type=Path, default=Path("var/vapid_private.pem"))
    args = parser.parse_args(argv)
    return ensure(args.file)


if __name__ == "__main__":
    sys.exit(main())
