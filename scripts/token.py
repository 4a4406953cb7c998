"""Print a bearer token signed with the configured JWT_SECRET.

    python -m scripts.token --role admin [--sub alice] [--hours 12]
    python -m scripts.token --role customer --customer-id <uuid>
"""
import argparse
import sys

import common  # noqa: F401
from common.contract.caller import ADMIN, CUSTOMER, issue_token
from common.contract.settings import load_settings


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=[ADMIN, CUSTOMER], default=ADMIN)
    parser.add_argument("--customer-id")
    parser.add_argument("--sub")
    parser.add_argument("--hours", type=float, default=12)
    args = parser.parse_args(argv)
    if args.role == CUSTOMER and not args.customer_id:
        parser.error("a customer token needs --customer-id (make token ROLE=customer CUSTOMER_ID=...)")
    sub = args.sub or (f"customer:{args.customer_id}" if args.role == CUSTOMER else "admin")
    print(issue_token(load_settings().jwt_secret, sub, args.role,
                      args.customer_id if args.role == CUSTOMER else None, int(args.hours * 3600)))


if __name__ == "__main__":
    main(sys.argv[1:])
