"""What the bench starts and owns: its database, its virtual host, its processes.

The database is the bench's own (its name must contain "bench"); it is
recreated at the start of a run and dropped at the end. Processes are
started in their own sessions and stopped by pid, children included.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg2
import requests
from sqlalchemy.engine import make_url

from tests.support import free_metrics_base, free_port  # noqa: F401 (the same ports the tests pick)

ROOT = Path(__file__).resolve().parent.parent
PRODUCT_STOCK = 1_000_000_000  # common.schemas.MAX_STOCK: never runs out during a run
SKU_PREFIX = "BENCH-"
ADDRESS = {"line1": "1 Bench Street", "city": "Benchton", "postal_code": "B3 NCH", "country": "GB"}


# ---- database ----------------------------------------------------------------

def bench_database_url(base_url, name):
    """`base_url` (the developer's DATABASE_URL: same server, same user) pointed at `name`."""
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def _check_ours(name):
    if "bench" not in name:
        raise RuntimeError(f"refusing to touch database {name!r}: the bench only creates and drops "
                           "databases whose name contains 'bench'")


def _server_connection(database_url, dbname="postgres"):
    url = make_url(database_url)
    conn = psycopg2.connect(host=url.host or "localhost", port=url.port or 5432,
                            user=url.username or "postgres", password=url.password,
                            dbname=dbname, connect_timeout=5)
    conn.autocommit = True
    return conn


def recreate_database(database_url):
    drop_database(database_url)
    _on_server(database_url, 'CREATE DATABASE "{name}"')


def drop_database(database_url):
    _check_ours(make_url(database_url).database)
    _on_server(database_url, 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _on_server(database_url, statement):
    """Run `statement`, with {name} the database of `database_url`, from the server's postgres database."""
    conn = _server_connection(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute(statement.format(name=make_url(database_url).database))
    finally:
        conn.close()


def migrate(database_url):
    env = {**os.environ, "DATABASE_URL": database_url}
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env,
                   check=True, capture_output=True, text=True)


def connect(database_url):
    url = make_url(database_url)
    return _server_connection(database_url, dbname=url.database)


def server_version(database_url):
    conn = connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            return cur.fetchone()[0]
    finally:
        conn.close()


def seed(database_url, customers, products, orders, sample_ids=20000, run_tag="bench"):
    """Customers, products with huge stock, and `orders` orders (2 items each) straight in SQL.

    Returns {"customers": [ids], "skus": [skus], "order_ids": [a random sample of the seeded ids],
    "orders": count, "seconds": time taken}. Seeded orders are `pending` without a reservation
    row: they exist to be read.
    """
    if products < 2:
        raise ValueError("BENCH_PRODUCTS must be at least 2 (orders have two distinct skus)")
    started = time.monotonic()
    conn = connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(
                "INSERT INTO customers.customers (id, name, email, shipping_address, created_at, updated_at) "
                "SELECT gen_random_uuid(), 'Bench Customer ' || g, "
                "       'bench-' || %(tag)s || '-' || g || '@example.com', %(address)s::jsonb, now(), now() "
                "FROM generate_series(1, %(n)s) g RETURNING id",
                {"tag": run_tag, "n": customers, "address": _json(ADDRESS)})
            customer_ids = [str(row[0]) for row in cur.fetchall()]
            # What the customer_created events would have put in order_service's
            # customer directory (customers made through the API always get there).
            cur.execute(
                "INSERT INTO orders.known_customers (id, shipping_address, updated_at) "
                "SELECT id, shipping_address, updated_at FROM customers.customers WHERE id = ANY(%(ids)s::uuid[])",
                {"ids": customer_ids})
            # And into notification_service's (name and email: whom its emails go to).
            cur.execute(
                "INSERT INTO notifications.known_customers (id, name, email, updated_at) "
                "SELECT id, name, email, updated_at FROM customers.customers WHERE id = ANY(%(ids)s::uuid[])",
                {"ids": customer_ids})
            skus = [f"{SKU_PREFIX}{i:04d}" for i in range(1, products + 1)]
            cur.execute(
                "INSERT INTO inventory.products (sku, name, description, unit_price, currency, stock, reserved, "
                "                                low_stock_threshold, created_at, updated_at) "
                "SELECT sku, 'Bench product ' || sku, 'Seeded by make bench', "
                "       round((1 + (n * 137) %% 9900) / 100.0, 2), 'EUR', %(stock)s, 0, 0, now(), now() "
                "FROM unnest(%(skus)s::text[]) WITH ORDINALITY AS p(sku, n) "
                "ON CONFLICT (sku) DO UPDATE SET stock = GREATEST(inventory.products.stock, EXCLUDED.stock), "
                "                                currency = 'EUR'",
                {"stock": PRODUCT_STOCK, "skus": skus})
            cur.execute(
                "CREATE TEMP TABLE bench_seed ON COMMIT DROP AS "
                "SELECT gen_random_uuid() AS id, "
                "       (%(customers)s::uuid[])[1 + g %% %(nc)s] AS customer_id, "
                "       now() - make_interval(secs => g) AS at, "
                "       (%(skus)s::text[])[1 + g %% %(np)s] AS sku_a, "
                "       (%(skus)s::text[])[1 + (g %% %(np)s + 1 + (g / %(np)s) %% (%(np)s - 1)) %% %(np)s] AS sku_b, "
                "       1 + g %% 3 AS qty_a, 1 + g %% 2 AS qty_b "
                "FROM generate_series(1, %(n)s) g",
                {"customers": customer_ids, "nc": len(customer_ids), "skus": skus, "np": len(skus), "n": orders})
            cur.execute(
                "INSERT INTO orders.orders (id, customer_id, status, currency, total_amount, shipping_address, "
                "                           version, created_at, updated_at) "
                "SELECT s.id, s.customer_id, 'pending', 'EUR', a.unit_price * s.qty_a + b.unit_price * s.qty_b, "
                "       %(address)s::jsonb, 1, s.at, s.at "
                "FROM bench_seed s JOIN inventory.products a ON a.sku = s.sku_a "
                "JOIN inventory.products b ON b.sku = s.sku_b",
                {"address": _json(ADDRESS)})
            cur.execute(
                "INSERT INTO orders.order_items (order_id, sku, quantity, unit_price, line_total) "
                "SELECT s.id, s.sku_a, s.qty_a, a.unit_price, a.unit_price * s.qty_a "
                "FROM bench_seed s JOIN inventory.products a ON a.sku = s.sku_a "
                "UNION ALL "
                "SELECT s.id, s.sku_b, s.qty_b, b.unit_price, b.unit_price * s.qty_b "
                "FROM bench_seed s JOIN inventory.products b ON b.sku = s.sku_b")
            cur.execute("INSERT INTO orders.order_status_history (order_id, from_status, to_status, changed_at, "
                        "changed_by) SELECT id, NULL, 'pending', at, 'bench-seed' FROM bench_seed")
            cur.execute("SELECT id FROM bench_seed ORDER BY random() LIMIT %s", (sample_ids,))
            order_ids = [str(row[0]) for row in cur.fetchall()]
            cur.execute("COMMIT")
            for table in ("customers.customers", "inventory.products", "orders.orders", "orders.order_items",
                          "orders.order_status_history"):
                cur.execute(f"ANALYZE {table}")
    finally:
        conn.close()
    return {"customers": customer_ids, "skus": skus, "order_ids": order_ids, "orders": orders,
            "seconds": round(time.monotonic() - started, 2)}


def _json(value):
    return json.dumps(value)


# ---- broker ------------------------------------------------------------------

def create_vhost(amqp_base_uri):
    """A throwaway RabbitMQ virtual host, so no other stack on this broker answers our RPCs.

    Same user and host as `amqp_base_uri`; made with rabbitmqctl, as the tests do. (name, amqp uri)
    """
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise RuntimeError("rabbitmqctl is needed to make the bench's own RabbitMQ virtual host "
                           "(or run a stack yourself and set BENCH_BASE_URL)")
    name = f"oms-bench-{uuid.uuid4().hex[:8]}"
    parts = urlsplit(amqp_base_uri)
    user = unquote(parts.username or "guest")
    _rabbitmqctl(ctl, "add_vhost", name)
    _rabbitmqctl(ctl, "set_permissions", "-p", name, user, ".*", ".*", ".*")
    return name, urlunsplit(parts._replace(path="/" + quote(name, safe="")))


def _rabbitmqctl(ctl, *args, patience=30):
    """Run rabbitmqctl, retrying while the broker is (re)starting; RuntimeError with its words."""
    deadline = time.monotonic() + patience
    while True:
        out = subprocess.run([ctl, "-q", *args], capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            return out.stdout
        if time.monotonic() > deadline:
            raise RuntimeError(f"rabbitmqctl {args[0]} failed ({out.returncode}): "
                               f"{(out.stderr or out.stdout).strip()[:500]}")
        time.sleep(1)


def delete_vhost(name):
    subprocess.run([shutil.which("rabbitmqctl") or "rabbitmqctl", "-q", "delete_vhost", name],
                   capture_output=True, timeout=60)


def rpc_consumers(vhost, queue):
    """How many consumers `queue` has in `vhost` (rabbitmqctl), or None if unknown."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "consumers"],
                         capture_output=True, text=True)
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue and parts[1].isdigit():
            return int(parts[1])
    return None


# ---- processes ---------------------------------------------------------------

def venv_env(**overrides):
    """The environment with this interpreter's bin first (the Procfile says `python`, `gunicorn`)."""
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update({key: str(value) for key, value in overrides.items()})
    return env


class Process:
    """One command in its own session, output to a log file; stopped by pid, descendants included."""

    def __init__(self, name, cmd, env, log_path, stop_signal=signal.SIGTERM):
        self.name, self.cmd, self.env, self.log_path = name, cmd, env, log_path
        self.stop_signal = stop_signal
        self.process = None
        self._known = {}  # pid -> start time

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=log,
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
        # Children in sessions of their own (honcho starts each in one) that outlived it:
        # the same pid *and* start time, so a pid reused by someone else is never touched.
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


def _start_time(pid):
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _exists(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_http(url, timeout, process=None, ok=(200,)):
    """Poll `url` until it answers one of `ok`; RuntimeError naming the log otherwise."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise RuntimeError(f"{process.name} exited; see {process.log_path}")
        try:
            response = requests.get(url, timeout=5)
            if response.status_code in ok:
                return
            last = f"{response.status_code} {response.text[:300]}"
        except requests.RequestException as exc:
            last = exc.__class__.__name__
        time.sleep(0.3)
    where = f"; see {process.log_path}" if process is not None else ""
    raise RuntimeError(f"{url} not ready after {timeout}s: {last}{where}")


# ---- /proc -------------------------------------------------------------------

def _children_map():
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid):
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def rss_kb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cmdline(pid):
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


SHELLS = {"sh", "bash", "dash"}


def _comm(pid):
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _ppid(pid):
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def label(pid, root_pid):
    """A readable name for a stack process: 'order_service', 'gateway worker', 'honcho', ...

    None for the shells honcho puts between itself and each command (not worth sampling).
    """
    if pid == root_pid:
        return "honcho"
    if _comm(pid) in SHELLS:
        return None
    cmd = cmdline(pid)
    for service in ("customer_service", "inventory_service", "order_service", "notification_service",
                    "invoice_service"):
        if f"{service}.service" in cmd:
            return service
    if "gunicorn" in cmd:
        parent = _ppid(pid)
        parent_is_gunicorn = parent is not None and "gunicorn" in cmdline(parent) and _comm(parent) not in SHELLS
        return "gateway worker" if parent_is_gunicorn else "gateway master"
    if "honcho" in cmd:
        return "honcho"
    return _comm(pid) or None


def machine():
    info = {"nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)), "cpu_model": "unknown",
            "ram_gib": None, "kernel": os.uname().release, "python": sys.version.split()[0]}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    return info
