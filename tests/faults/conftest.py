"""A fresh stack per fault test: its own virtual host (or broker node), database and processes.

These tests stop the broker, restart Postgres and kill services, so they run
apart from the integration suite (`make faults`, which `make test` runs last).
"""
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests import harness, support

RPC_TIMEOUT = 5.0  # the fault stacks' gateway deadline: short, so a run takes seconds


def stack_env(amqp_uri, db_url):
    return {
        **harness.venv_env(),
        "AMQP_URI": amqp_uri, "DATABASE_URL": db_url, "JWT_SECRET": support.JWT_SECRET,
        "GATEWAY_PORT": str(harness.free_port()), "GATEWAY_WORKERS": "2", "GATEWAY_THREADS": "16",
        "RPC_TIMEOUT": str(RPC_TIMEOUT), "SERVICE_RPC_TIMEOUT": "3", "LOG_LEVEL": "WARNING",
        # Fast clocks so a run takes seconds: the order deadline stays below the grace.
        "RECONCILE_INTERVAL_SECONDS": "1", "RESERVATION_GRACE_SECONDS": "6",
        "ORDER_CREATE_DEADLINE_SECONDS": "3", "OUTBOX_RELAY_INTERVAL": "0.5",
        "EVENT_MAX_RETRIES": "3", "EVENT_RETRY_BASE_SECONDS": "0.2",
        "METRICS_PORT": str(harness.free_metrics_base()),
        # notification_service sends to a port nobody listens on: its emails wait and retry.
        "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(harness.free_port()),
        # Webhooks may reach a receiver the test runs on 127.0.0.1; a claim's lease ends soon after a crash.
        "WEBHOOK_ALLOW_HOSTS": "127.0.0.1", "WEBHOOK_TIMEOUT_SECONDS": "2", "WEBHOOK_RETRY_BASE_SECONDS": "0.2",
    }


@pytest.fixture
def make_fault_stack(request):
    """make_fault_stack(amqp_uri=None) -> a started ProcessStack on a fresh database
    (and a fresh vhost of the machine's broker unless `amqp_uri` names another)."""
    cleanups = []

    def make(amqp_uri=None):
        if amqp_uri is None:
            vhost, amqp_uri = support.create_vhost()
            cleanups.append(lambda: support.delete_vhost(vhost))
        db_name, db_url = support.create_database()
        cleanups.append(lambda: support.drop_database(db_name))
        harness.migrate(db_url)
        stack = harness.ProcessStack(stack_env(amqp_uri, db_url), support.OUTPUT / "faults" / request.node.name)
        stack.db_name, stack.amqp_uri = db_name, amqp_uri
        cleanups.append(stack.stop)
        stack.start()
        return stack

    yield make
    for cleanup in reversed(cleanups):
        cleanup()


@pytest.fixture
def fault_stack(make_fault_stack):
    return make_fault_stack()


class Load:
    """POST /orders from many threads; remembers what every request got."""

    def __init__(self, stack, customer, product, concurrency=16):
        self.url = stack.base_url + "/api/v1/orders"
        self.body = {"customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 1}]}
        self.headers = support.bearer()
        self.results = []  # (status, order id or None)
        self.pool = ThreadPoolExecutor(max_workers=concurrency)

    def _one(self, _):
        try:
            response = requests.post(self.url, json=self.body, headers=self.headers, timeout=30)
        except requests.RequestException as exc:
            self.results.append((type(exc).__name__, None))
            return
        order_id = response.json().get("id") if response.status_code == 201 else None
        self.results.append((response.status_code, order_id))

    def start(self, count, pause=0.0):
        """Send `count` requests, one every `pause` seconds, from the background."""
        def submit_all():
            futures = [self._submit(i, pause) for i in range(count)]
            for future in futures:
                future.result()

        self._submitter = threading.Thread(target=submit_all)
        self._submitter.start()

    def _submit(self, i, pause):
        future = self.pool.submit(self._one, i)
        time.sleep(pause)
        return future

    def wait(self):
        self._submitter.join()

    def statuses(self):
        return [status for status, _ in self.results]

    def created(self):
        return [order_id for status, order_id in self.results if status == 201]


class Answer:
    """One HTTP answer: what the client was told, and when."""

    def __init__(self, status, body, started, finished):
        self.status, self.body, self.started, self.finished = status, body, started, finished

    @property
    def seconds(self):
        return self.finished - self.started

    @property
    def named_id(self):
        """The order this answer names: the 201's order, or the one a 504 says it cannot tell about."""
        if self.status == 201:
            return self.body.get("id")
        if self.status == 504:
            return (self.body.get("error") or {}).get("details", {}).get("order_id")
        return None


def call(method, url, **kwargs):
    started = time.monotonic()
    try:
        response = requests.request(method, url, timeout=60, **kwargs)
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = {"raw": response.text[:200]}
    except requests.RequestException as exc:
        status, body = type(exc).__name__, {}
    return Answer(status, body, started, time.monotonic())


class CreateStream:
    """`clients` threads each POSTing orders one after another until stopped,
    spread over the gateways at `base_urls`."""

    def __init__(self, base_urls, customer, product, clients=8):
        self.urls = [base_url + "/api/v1/orders" for base_url in base_urls]
        self.body = {"customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 1}]}
        self.headers = support.bearer()
        self.answers = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(self.urls[i % len(self.urls)],), daemon=True)
                         for i in range(clients)]

    def _client(self, url):
        while not self._stop.is_set():
            self.answers.append(call("POST", url, json=self.body, headers=self.headers))

    def start(self):
        for thread in self._threads:
            thread.start()
        return self

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def statuses(self):
        return [answer.status for answer in self.answers]


def seed(stack, stock=100_000):
    session = requests.Session()
    session.headers.update(support.bearer())
    customer = session.post(stack.base_url + "/api/v1/customers", json={
        "name": "Fault Tester", "email": f"fault-{uuid.uuid4().hex}@example.com"}).json()
    product = session.post(stack.base_url + "/api/v1/products", json={
        "sku": f"F-{uuid.uuid4().hex[:8]}", "name": "Fault", "unit_price": "1.00", "stock": stock}).json()
    return customer, product


def counts(stack, customer, product):
    """(orders in the database, orders counted by the order_created consumer,
    units reserved, units that live (pending or processing) orders hold) for the
    test's customer and product."""
    [(in_db,)] = support.query(stack.db_name, "SELECT count(*) FROM orders.orders WHERE customer_id = %s",
                               customer["id"])
    [(consumed,)] = support.query(stack.db_name, "SELECT orders_count FROM customers.customers WHERE id = %s",
                                  customer["id"])
    [(reserved,)] = support.query(stack.db_name, "SELECT reserved FROM inventory.products WHERE sku = %s",
                                  product["sku"])
    [(live_units,)] = support.query(
        stack.db_name, "SELECT coalesce(sum(i.quantity), 0) FROM orders.order_items i JOIN orders.orders o "
                       "ON o.id = i.order_id WHERE o.status IN ('pending', 'processing') AND i.sku = %s",
        product["sku"])
    return in_db, consumed, reserved, int(live_units)


def settled(stack, customer, product):
    """Everything caught up: events consumed for every order, reservations match live orders."""
    def check():
        in_db, consumed, reserved, live_units = counts(stack, customer, product)
        return consumed == in_db and reserved == live_units
    return check


def summary(name, load, stack, customer, product):
    """A summary line of a `Load` run; returns the numbers for assertions."""
    statuses = load.statuses()
    created = load.created()
    in_db, consumed, reserved, pending_units = counts(stack, customer, product)
    numbers = {
        "sent": len(statuses), "201": statuses.count(201), "503": statuses.count(503),
        "504": statuses.count(504), "other": len([s for s in statuses if s not in (201, 503, 504)]),
        "in_db": in_db, "events_consumed": consumed, "duplicates": len(created) - len(set(created)),
        "leaked_units": reserved - pending_units,
    }
    print(f"\n[{name}] sent={numbers['sent']} 201={numbers['201']} 503={numbers['503']} 504={numbers['504']} "
          f"other={numbers['other']} orders_in_db={in_db} events_consumed={consumed} "
          f"duplicates={numbers['duplicates']} leaked_units={numbers['leaked_units']}")
    return numbers


def order_ids_in_db(stack, customer):
    return {row[0] for row in support.query(
        stack.db_name, "SELECT id::text FROM orders.orders WHERE customer_id = %s", customer["id"])}


def settle_named(stack, answers, rpc_timeout=RPC_TIMEOUT, apart=10.0):
    """Ids named by 504s whose GET does not give one lasting answer: read each
    RPC_TIMEOUT after its 504, then `apart` seconds later; both must be the same
    200 or 404 (a read answered 503 is read again, for up to 30 s)."""
    named = [answer for answer in answers if answer.status == 504 and answer.named_id]
    if not named:
        return [], {}
    wait = max(answer.finished for answer in named) + rpc_timeout - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    headers = support.bearer()

    def read(order_id):
        # A 503 (a circuit still open, a broker still recovering) says nothing of the order: read again.
        deadline = time.monotonic() + 30
        while True:
            status = call("GET", f"{stack.base_url}/api/v1/orders/{order_id}", headers=headers).status
            if status != 503 or time.monotonic() > deadline:
                return status
            time.sleep(1)

    def read_all():
        return {answer.named_id: read(answer.named_id) for answer in named}
    first = read_all()
    time.sleep(apart)
    second = read_all()
    unsettled = [order_id for order_id in first
                 if first[order_id] not in (200, 404) or second[order_id] != first[order_id]]
    return unsettled, first


def first_201_after(stack, customer, product, started, limit=30):
    """Seconds from `started` until a create answers 201 again (None: not within `limit`).
    The probe orders for its own customer, so the stream's accounting is not touched."""
    body = {"customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 1}]}
    while time.monotonic() - started < limit:
        answer = call("POST", stack.base_url + "/api/v1/orders", json=body, headers=support.bearer())
        if answer.status == 201:
            return round(time.monotonic() - started, 1)
        time.sleep(0.5)
    return None


def create_load_through(name, stack, fault, gateways=None):
    """Stream creates from 8 clients (through `gateways`, base URLs, default the
    stack's one), run `fault()` (it returns when the fault has ended), and check
    every answer against the database. Returns the numbers."""
    customer, product = seed(stack)
    probe_customer, _ = seed(stack)
    stream = CreateStream(gateways or [stack.base_url], customer, product).start()
    time.sleep(2)
    fault()
    ended = time.monotonic()
    time.sleep(3)
    stream.stop()
    recovered = first_201_after(stack, probe_customer, product, ended)
    unsettled, reads = settle_named(stack, stream.answers)
    support.wait_until(settled(stack, customer, product), timeout=60)

    answers = stream.answers
    statuses = stream.statuses()
    created = [a.named_id for a in answers if a.status == 201]
    told_201 = set(created)
    named_504 = {a.named_id for a in answers if a.status == 504 and a.named_id}
    in_db = order_ids_in_db(stack, customer)
    in_db_total, consumed, reserved, live_units = counts(stack, customer, product)
    numbers = {
        "sent": len(answers), "201": statuses.count(201), "503": statuses.count(503), "504": statuses.count(504),
        "other": len([s for s in statuses if s not in (201, 503, 504)]), "orders_in_db": in_db_total,
        "events_consumed": consumed, "duplicates": len(created) - len(told_201),
        "ghosts": len(in_db - told_201 - named_504), "lost": len(told_201 - in_db),
        "unsettled": len(unsettled), "leaked_units": reserved - live_units,
        "slowest_s": round(max(a.seconds for a in answers), 1),
        "slowest_503_s": round(max([a.seconds for a in answers if a.status == 503], default=0), 1),
        "recovered_s": recovered,
    }
    print(f"\n[{name}] " + " ".join(f"{key}={value}" for key, value in numbers.items()))
    assert numbers["other"] == 0, sorted({str(s) for s in statuses})
    assert numbers["201"] > 0
    assert numbers["duplicates"] == 0
    assert numbers["ghosts"] == 0, "an order exists that its client was told failed"
    assert numbers["lost"] == 0, "an order that got 201 is missing"
    assert numbers["unsettled"] == 0, {order_id: reads[order_id] for order_id in unsettled}
    assert numbers["events_consumed"] == in_db_total, "order_created not consumed exactly once in effect"
    assert numbers["leaked_units"] == 0
    assert numbers["slowest_s"] <= RPC_TIMEOUT + 5, "a request hung past RPC_TIMEOUT + 5 s"
    assert recovered is not None, "the stack did not take orders again within 30 s of the fault's end"
    return numbers
