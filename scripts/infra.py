"""Checks and set-up for what the stack needs outside itself (broker, database).

    python -m scripts.infra settings     # exit 2 naming any invalid setting
    python -m scripts.infra setting NAME # print one setting's value (nothing for an unset one)
    python -m scripts.infra check        # exit 1 naming what does not answer
    python -m scripts.infra ensure-db    # create DATABASE_URL's database if missing
    python -m scripts.infra wait-health URL [SECONDS]
"""
import sys
import time

import psycopg2
import requests
from kombu import Connection
from sqlalchemy.engine import make_url

import common  # noqa: F401
from common.contract.settings import SettingsError, load_settings


def broker_problem(amqp_uri):
    try:
        with Connection(amqp_uri, connect_timeout=3) as connection:
            connection.connect()
    except Exception as exc:  # any failure means "not usable", reported verbatim
        return f"RabbitMQ at {Connection(amqp_uri).as_uri()} does not answer ({exc.__class__.__name__}: {exc})"
    return None


def database_problem(database_url):
    try:
        _server_connection(database_url).close()
    except psycopg2.Error as exc:
        shown = make_url(database_url).render_as_string(hide_password=True)
        return f"PostgreSQL at {shown} does not answer ({str(exc).strip()})"
    return None


def ensure_database(database_url):
    """Create the database named in `database_url` if it does not exist."""
    name = make_url(database_url).database
    conn = _server_connection(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")
    conn.close()


def wait_healthy(url, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=3).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.5)
    return False


def _server_connection(database_url):
    """A connection to the server's `postgres` maintenance database."""
    url = make_url(database_url)
    return psycopg2.connect(host=url.host or "localhost", port=url.port or 5432,
                            user=url.username or "postgres", password=url.password,
                            dbname="postgres", connect_timeout=3)


def main(argv):
    command = argv[0] if argv else "check"
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    if command == "settings":
        return 0
    if command == "setting":
        value = getattr(settings, argv[1].lower())
        print("" if value is None else value)
        return 0
    if command == "check":
        problems = [p for p in (broker_problem(settings.amqp_uri),
                                database_problem(settings.database_url)) if p]
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    if command == "ensure-db":
        ensure_database(settings.database_url)
        return 0
    if command == "wait-health":
        return 0 if wait_healthy(argv[1], float(argv[2]) if len(argv) > 2 else 60) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
