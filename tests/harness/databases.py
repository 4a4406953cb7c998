"""Throwaway Postgres databases: made on the server a URL names, migrated, read, dropped."""
import os
import subprocess
import sys

import psycopg2
from sqlalchemy.engine import make_url

from tests.harness.processes import ROOT


def database_url(server_url, name):
    """`server_url` (same server, same user) pointed at database `name`."""
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def connect(url, dbname=None):
    """An autocommit connection to `url`'s database (or to `dbname` on its server)."""
    parts = make_url(url)
    conn = psycopg2.connect(host=parts.host or "localhost", port=parts.port or 5432,
                            user=parts.username or "postgres", password=parts.password,
                            dbname=dbname or parts.database, connect_timeout=5)
    conn.autocommit = True
    return conn


def _on_server(url, statement):
    """Run `statement`, with {name} the database of `url`, from the server's postgres database."""
    conn = connect(url, dbname="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute(statement.format(name=make_url(url).database))
    finally:
        conn.close()


def create_database(server_url, name):
    """A new, empty database `name` on the server of `server_url` (an old one of that name is dropped); its URL."""
    url = database_url(server_url, name)
    drop_database(url)
    _on_server(url, 'CREATE DATABASE "{name}"')
    return url


def drop_database(url):
    _on_server(url, 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def alembic(url, *args, cwd=ROOT):
    """`alembic *args` against `url`, with the migrations of the checkout at `cwd`."""
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "alembic", *args], cwd=cwd, env=env,
                          check=True, capture_output=True, text=True)


def migrate(url, cwd=ROOT):
    alembic(url, "upgrade", "head", cwd=cwd)


def query(url, sql, *params):
    """Rows of `sql` in `url`'s database, read directly (not through any service)."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()
