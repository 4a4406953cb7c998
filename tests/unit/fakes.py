"""In-memory stand-ins for a service's unit of work and stores, for fast unit tests.

They keep the contracts of common/kit/unit_of_work.py and each service's
storage module (the same method names, arguments and results), hold their
rows in plain Python, and roll back whole on an exception, so a service's
entrypoints run unchanged under nameko's `worker_factory`:

    inventory = worker_factory(InventoryService, uow=FakeUnitOfWork(InMemoryInventoryStore()), ...)
    orders = worker_factory(OrderService, uow=FakeUnitOfWork(InMemoryOrderStore()),
                            inventory_rpc=AsRpc(inventory), ...)

What they do not model is what Postgres decides under concurrency (locks,
SKIP LOCKED): the integration and fault tests cover that against the real
database.
"""
import copy
import json
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from types import SimpleNamespace

from sqlalchemy.exc import IntegrityError

from common.contract.errors import AlreadyExists, NotFound
from common.contract.schemas.customers import DEFAULT_PREFERENCES
from common.contract.settings import load_settings
from common.kit.outbox import Outbox
from inventory_service.domain import ProductRules
from order_service import domain
from webhook_service.storage import Claimed

SETTINGS = load_settings({})  # config.yml's defaults, nothing from this process's environment


def now():
    return datetime.now(timezone.utc)


def refused(constraint):
    """The IntegrityError Postgres gives for a row that breaks `constraint`."""
    orig = Exception(f"violates {constraint}")
    orig.diag = SimpleNamespace(constraint_name=constraint)
    return IntegrityError("(in memory)", None, orig)


# ---- the unit of work ----------------------------------------------------------

class FakeTransaction:
    def __init__(self, store):
        self.store = store
        self.session = None
        self.pending = []

    def collect_new_events(self):
        for aggregate in getattr(self.store, "seen", ()):
            while aggregate.events:
                yield aggregate.events.pop(0)

    def emit(self, event_type, data, request_id=None):
        self.pending.append((event_type, data))

    def emit_all(self, events):
        self.pending.extend(events)

    def event_row(self, event_type, data, request_id=None, traceparent=None):
        self.pending.append((event_type, data))
        return Outbox.row(event_type, data, request_id, traceparent)

    def first_time(self, event_id, handler):
        if event_id in self.store.tables["processed"]:
            return False
        self.store.tables["processed"].add(event_id)
        return True

    def first_times(self, event_ids, handler):
        return {event_id for event_id in dict.fromkeys(event_ids) if self.first_time(event_id, handler)}


class FakeUnitOfWork:
    """`with uow as tx:` commits the rows and events of the block, or restores
    every table as it was when an exception leaves it."""

    def __init__(self, store):
        self.store = store
        self.events = []  # committed (event type, data), in order
        self.commits = 0
        self._open = None

    def __enter__(self):
        assert self._open is None, "one unit of work at a time per worker"
        self._snapshot = copy.deepcopy(self.store.tables)
        if hasattr(self.store, "seen"):
            self.store.seen = []  # as a real store, new in each unit of work
        self._open = FakeTransaction(self.store)
        return self._open

    def __exit__(self, exc_type, exc, tb):
        tx, self._open = self._open, None
        if exc_type is None:
            self.events.extend([*tx.pending, *tx.collect_new_events()])
            self.commits += 1
        else:
            self.store.tables = self._snapshot
        return False

    @contextmanager
    def single_statement(self):
        yield self.store

    def event_types(self):
        return [event_type for event_type, _ in self.events]


class AsRpc:
    """Another service's worker (from worker_factory), called as if over RPC."""

    def __init__(self, worker):
        self._worker = worker
        self.calls = []

    @property
    def settling(self):
        return self

    def __getattr__(self, method_name):
        method = getattr(self._worker, method_name)

        def call(*args, **kwargs):
            self.calls.append(method_name)
            return method(*args, **kwargs)
        return call


class FakeCustomerService:
    """customer_service as other services call it (get_customer), with the customers given."""

    def __init__(self, *customers):
        self.customers = {customer["id"]: customer for customer in customers}
        self.calls = 0
        self.removed = []  # (customer id, push subscription id) notification_service asked to remove

    def get_customer(self, customer_id):
        self.calls += 1
        if customer_id not in self.customers:
            raise NotFound("No such customer.", {"id": customer_id})
        return self.customers[customer_id]

    def get_customers(self, customer_ids):
        self.calls += 1
        return [self.customers[customer_id] for customer_id in customer_ids if customer_id in self.customers]

    get_customer_with_contacts = get_customer

    def remove_push_subscription(self, customer_id, subscription_id):
        self.removed.append((customer_id, subscription_id))


# ---- inventory ------------------------------------------------------------------

@dataclass
class FakeProduct(ProductRules):
    sku: str
    name: str
    unit_price: Decimal
    currency: str
    stock: int
    reserved: int = 0
    description: str = ""
    low_stock_threshold: int = 0
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)


class InMemoryInventoryStore:
    """inventory_service.storage.InventoryStore's contract, in memory."""

    def __init__(self):
        # refusals: the unsent stock_reservation_failed rows by event id
        self.tables = {"products": {}, "reservations": {}, "items": {}, "processed": set(), "refusals": {}}

    # products
    def add_product(self, sku, stock, unit_price="10.00", currency="EUR", threshold=0):
        """Test set-up: a product as if created through the API."""
        self.tables["products"][sku] = FakeProduct(sku, f"Product {sku}", Decimal(unit_price), currency, stock,
                                                   low_stock_threshold=threshold)
        return self.tables["products"][sku]

    def insert_product(self, fields):
        if fields["sku"] in self.tables["products"]:
            raise AlreadyExists("A product with this sku exists.", {"sku": fields["sku"]})
        product = FakeProduct(**fields)
        self.tables["products"][product.sku] = product
        return product

    def get_product(self, sku, lock=False):
        return self.tables["products"].get(sku)

    def update_product(self, product, changes):
        for name, value in changes.items():
            setattr(product, name, value)
        product.updated_at = now()
        return product

    def get_products(self, skus):
        return [self.tables["products"][sku] for sku in sorted(set(skus)) if sku in self.tables["products"]]

    def list_products(self, limit, after_sku=None):
        skus = sorted(sku for sku in self.tables["products"] if after_sku is None or sku > after_sku)
        return [self.tables["products"][sku] for sku in skus[:limit]]

    def available_stock(self, skus):
        return {product.sku: product.available for product in self.get_products(skus)}

    # The table's CHECK constraints, in the order Postgres tests them (by name).
    CHECKS = (("reserved_not_negative", lambda product: product.reserved >= 0),
              ("reserved_within_stock", lambda product: product.reserved <= product.stock),
              ("stock_not_negative", lambda product: product.stock >= 0))

    def _changed(self, sku, stock=0, reserved=0):
        """The product after the change (a copy, as UPDATE ... RETURNING gives), or None if no such sku."""
        product = self.tables["products"].get(sku)
        if product is None:
            return None
        product.stock += stock
        product.reserved += reserved
        for constraint, holds in self.CHECKS:
            if not holds(product):
                raise refused(constraint)
        return copy.copy(product)

    def take_stock(self, sku, quantity):
        product = self.tables["products"].get(sku)
        if product is None or product.available < quantity:
            return None
        return self._changed(sku, reserved=quantity)

    def give_back_stock(self, sku, quantity):
        return self._changed(sku, reserved=-quantity)

    def commit_stock(self, sku, quantity):
        return self._changed(sku, stock=-quantity, reserved=-quantity)

    # reservations
    def claim_and_lock(self, order_ids, skus, at):
        claimed = {order_id for order_id in order_ids if order_id not in self.tables["reservations"]}
        for order_id in claimed:
            self.tables["reservations"][order_id] = SimpleNamespace(
                order_id=order_id, status="reserved", created_at=at, updated_at=at, checked_at=at)
        # one process, one thread: the lock has nothing to wait for
        return claimed, {product.sku: copy.copy(product) for product in self.get_products(skus)}

    def record_reservations(self, reservations, given_up, events, withdrawn, at):
        for order_id, lines in reservations:
            for product, quantity in lines:
                self._changed(product.sku, reserved=quantity)
                self.tables["products"][product.sku].updated_at = at
            self._set_items(order_id, lines)
        for order_id in given_up:
            del self.tables["reservations"][order_id]
        for event_id in withdrawn:
            self.tables["refusals"].pop(event_id, None)
        for row in events:
            if row["event_type"] == "stock_reservation_failed":
                self.tables["refusals"].setdefault(row["event_id"], row)

    def replace_reservation_items(self, order_id, new_items):
        self._set_items(order_id, new_items)

    def _set_items(self, order_id, lines):
        self.tables["items"][order_id] = [
            SimpleNamespace(order_id=order_id, sku=product.sku, quantity=quantity,
                            unit_price=product.unit_price, currency=product.currency)
            for product, quantity in sorted(lines, key=lambda line: line[0].sku)]

    def get_reservation(self, order_id, lock=False):
        return self.tables["reservations"].get(order_id)

    def reservation_items(self, order_id):
        return list(self.tables["items"].get(order_id, []))

    def set_reservation_status(self, reservation, status):
        reservation.status = status
        reservation.updated_at = now()

    def stale_reservations(self, checked_before, limit):
        held = [r for r in self.tables["reservations"].values()
                if r.status == "reserved" and r.checked_at < checked_before]
        return sorted(held, key=lambda r: r.checked_at)[:limit]

    def mark_checked(self, reservations):
        for reservation in reservations:
            reservation.checked_at = now()

    def ping(self):
        pass


# ---- orders ------------------------------------------------------------------

ORDER_FIELDS = ("id", "customer_id", "status", "currency", "total_amount", "shipping_address", "carrier",
                "tracking_number", "version", "created_at", "updated_at")


class AppendOnly(list):
    """The history collection of an order in memory (storage maps a write-only relationship)."""
    add = list.append


class FakeOrder(domain.Order):
    """order_service.storage.Order in memory: the same aggregate, plain attributes."""

    def __init__(self, items=(), **fields):
        vars(self).update(fields)
        self.items = [self.item_type(**item) for item in sorted(items, key=lambda item: item["sku"])]
        self.status_changes = AppendOnly()


class InMemoryOrderStore:
    """order_service.storage.OrderStore's contract, in memory."""

    def __init__(self):
        self.tables = {"orders": {}, "keys": {}, "customers": {}, "processed": set(), "failed": {},
                       "changes": {}}
        self.seen = []
        self.fail_on_insert = None  # an exception insert_new_orders raises (a failed persist)
        self.fail_on_record = None  # an exception record_failed_attempt raises (the database went away)
        self.on_lock = None  # called on lock_attempts: another run of the attempt, between two of ours

    def know_customer(self, customer_id, shipping_address=None):
        """Test set-up: a customer as the customer_created event would have recorded it."""
        self.remember_customer(uuid.UUID(str(customer_id)), shipping_address, now())

    def create_contexts(self, wanted):
        return {order_id: (*self.attempt_outcome(order_id)[:2], self.tables["customers"].get(customer_id))
                for order_id, customer_id in wanted}

    def attempt_outcome(self, attempt_id):
        failed, changed = self.tables["failed"].get(attempt_id), self.tables["changes"].get(attempt_id)
        return (attempt_id in self.tables["orders"], failed.error if failed is not None else None,
                copy.deepcopy(changed.answer) if changed is not None else None)

    def record_failed_attempt(self, attempt_id, error, at):
        if self.fail_on_record is not None:
            raise self.fail_on_record
        self.tables["failed"].setdefault(attempt_id, SimpleNamespace(error=error, failed_at=at))

    def record_change(self, attempt_id, order_id, answer, at):
        if attempt_id in self.tables["changes"]:
            raise IntegrityError("INSERT INTO orders.change_attempts", None, Exception("change_attempts_pkey"))
        # As JSONB keeps it: JSON, not the Python objects.
        self.tables["changes"][attempt_id] = SimpleNamespace(order_id=order_id, answer=json.loads(json.dumps(answer)),
                                                             changed_at=at)

    def lock_attempts(self, attempt_ids):
        if self.on_lock is not None and attempt_ids:
            self.on_lock()

    def insert_new_orders(self, new_orders):
        if self.fail_on_insert is not None:
            raise self.fail_on_insert
        for order_fields, item_fields, changed_by, _ in new_orders:
            if order_fields["id"] in self.tables["orders"]:
                raise IntegrityError("INSERT INTO orders.orders", None, Exception("orders_pkey"))
            order = FakeOrder(item_fields, **order_fields)
            order.status_changes.add(order.status_change_type(
                order_id=order.id, from_status=None, to_status=order.status, changed_at=order.created_at,
                changed_by=changed_by))
            self.tables["orders"][order.id] = order

    def get_order(self, order_id, lock=False):
        order = self.tables["orders"].get(order_id)
        if order is not None:
            self.seen.append(order)
        return order

    def order_view(self, order_id):
        order = self.tables["orders"].get(order_id)
        if order is None:
            return None
        view = {name: getattr(order, name) for name in ORDER_FIELDS}
        view["items"] = [{"sku": item.sku, "quantity": item.quantity, "unit_price": str(item.unit_price),
                          "line_total": str(item.line_total)} for item in sorted(order.items, key=_sku)]
        return view

    def list_orders(self, filters, limit, after=None):
        def keep(order):
            return all([filters.get("status", order.status) == order.status,
                        filters.get("customer_id", order.customer_id) == order.customer_id,
                        "created_after" not in filters or order.created_at > filters["created_after"],
                        "created_before" not in filters or order.created_at < filters["created_before"],
                        after is None or (order.created_at, order.id) < tuple(after)])
        orders = sorted((o for o in self.tables["orders"].values() if keep(o)),
                        key=lambda o: (o.created_at, o.id), reverse=True)
        return [self.order_view(order.id) for order in orders[:limit]]

    def status_history(self, order_id):
        order = self.tables["orders"].get(order_id)
        return list(order.status_changes) if order is not None else []

    def delete_order(self, order):
        del self.tables["orders"][order.id]

    def claim_idempotency_key(self, key, request_hash, order_id, at):
        if key in self.tables["keys"]:
            return self.tables["keys"][key]
        self.tables["keys"][key] = SimpleNamespace(key=key, request_hash=request_hash, order_id=order_id,
                                                   response=None, created_at=at)
        return None

    def unclaim_idempotency_key(self, key, order_id):
        if key in self.tables["keys"] and self.tables["keys"][key].order_id == order_id:
            del self.tables["keys"][key]

    def remember_response(self, key, response):
        self.tables["keys"][key].response = json.dumps(response)

    def remember_customer(self, customer_id, shipping_address, updated_at):
        known = self.tables["customers"].get(customer_id)
        if known is None or known.updated_at < updated_at:
            self.tables["customers"][customer_id] = SimpleNamespace(
                id=customer_id, shipping_address=shipping_address, updated_at=updated_at)

    def order_states(self, order_ids):
        return {str(order_id): self.tables["orders"][order_id].status
                for order_id in order_ids if order_id in self.tables["orders"]}

    def prune_attempts(self, kind, older_than):
        table, moment = {"idempotency_keys": ("keys", "created_at"), "failed_attempts": ("failed", "failed_at"),
                         "change_attempts": ("changes", "changed_at")}[kind]
        kept = {k: v for k, v in self.tables[table].items() if getattr(v, moment) >= older_than}
        pruned, self.tables[table] = len(self.tables[table]) - len(kept), kept
        return pruned

    def ping(self):
        pass


def _sku(item):
    return item.sku


# ---- customers ------------------------------------------------------------------

class InMemoryCustomerStore:
    """customer_service.storage.CustomerStore's contract, in memory."""

    def __init__(self):
        self.tables = {"customers": {}, "processed": set(), "api_keys": {}}

    def lock_customer_id(self, customer_id):
        pass

    def insert_api_key(self, key_id, fields, prefix, digest, now):
        if any(other.key_digest == digest for other in self.tables["api_keys"].values()):
            raise AssertionError("a digest is unique")
        api_key = SimpleNamespace(**{"customer_id": None, **fields}, id=key_id, prefix=prefix, key_digest=digest,
                                  created_at=now, last_used_at=None, revoked_at=None)
        self.tables["api_keys"][key_id] = api_key
        return api_key

    def get_api_key(self, key_id, lock=False):
        return self.tables["api_keys"].get(key_id)

    def list_api_keys(self, limit, after=None):
        keys = sorted((k for k in self.tables["api_keys"].values()
                       if after is None or (k.created_at, k.id) > tuple(after)), key=lambda k: (k.created_at, k.id))
        return keys[:limit]

    def live_api_keys_with_prefix(self, prefix):
        return [k for k in self.tables["api_keys"].values() if k.prefix == prefix and k.revoked_at is None]

    def mark_api_key_used(self, key_id, now, not_since):
        api_key = self.tables["api_keys"][key_id]
        if api_key.last_used_at is None or api_key.last_used_at < not_since:
            api_key.last_used_at = now

    def insert_customer(self, customer_id, fields, now):
        self._check_unique_email(customer_id, fields.get("email"))
        customer = SimpleNamespace(**{"shipping_address": None, "phone": None,
                                      "notification_preferences": dict(DEFAULT_PREFERENCES), **fields},
                                   id=customer_id, orders_count=0, created_at=now, updated_at=now, push_subscriptions=[])
        self.tables["customers"][customer_id] = customer
        return customer

    def update_customer(self, customer, changes, now):
        self._check_unique_email(customer.id, changes.get("email"))
        for name, value in changes.items():
            setattr(customer, name, value)
        customer.updated_at = now
        return customer

    def save_push_subscription(self, customer, endpoint, keys, now):
        subscription = next((sub for sub in customer.push_subscriptions if sub.endpoint == endpoint), None)
        if subscription is None:
            subscription = SimpleNamespace(id=uuid.uuid4(), customer_id=customer.id, endpoint=endpoint,
                                           created_at=now, **keys)
            customer.push_subscriptions.append(subscription)
        else:
            subscription.p256dh, subscription.auth = keys["p256dh"], keys["auth"]
        customer.updated_at = now
        return subscription

    def remove_push_subscription(self, customer, subscription_id, now):
        kept = [sub for sub in customer.push_subscriptions if sub.id != subscription_id]
        if len(kept) == len(customer.push_subscriptions):
            return False
        customer.push_subscriptions, customer.updated_at = kept, now
        return True

    def _check_unique_email(self, customer_id, email):
        if any(other.email == email and other.id != customer_id for other in self.tables["customers"].values()):
            raise AlreadyExists("A customer with this email exists.", {"email": email})

    def get_customer(self, customer_id, lock=False):
        return self.tables["customers"].get(customer_id)

    def get_customers(self, customer_ids):
        return [self.tables["customers"][i] for i in customer_ids if i in self.tables["customers"]]

    def list_customers(self, limit, after=None, only_id=None):
        def keep(customer):
            return ((only_id is None or customer.id == only_id)
                    and (after is None or (customer.created_at, customer.id) > tuple(after)))
        customers = sorted((c for c in self.tables["customers"].values() if keep(c)),
                           key=lambda c: (c.created_at, c.id))
        return customers[:limit]

    def ping(self):
        pass

    def count_orders_once(self, orders, handler):
        for event_id, customer_id in orders:
            if event_id in self.tables["processed"]:
                continue
            self.tables["processed"].add(event_id)
            if customer_id in self.tables["customers"]:
                self.tables["customers"][customer_id].orders_count += 1


# ---- the customer directory of notifications and invoices ---------------------------

class InMemoryCustomerDirectory:
    """common.kit.customer_directory.CustomerDirectory's contract, in memory (in `tables["customers"]`)."""

    def known_customer(self, customer_id):
        return self.known_customers_among([customer_id]).get(customer_id)

    def known_customers_among(self, customer_ids):
        return {customer_id: dict(self.tables["customers"][customer_id])
                for customer_id in customer_ids if customer_id in self.tables["customers"]}

    keeps_contacts = False  # the notifications' directory keeps them (known_customer_model(with_contacts=True))

    def remember_customer(self, customer_id, name, email, updated_at, contacts=None):
        known = self.tables["customers"].get(customer_id)
        if known is None or known["updated_at"] < updated_at:
            self.tables["customers"][customer_id] = {"id": customer_id, "name": name, "email": email,
                                                     "updated_at": updated_at}
            if self.keeps_contacts:
                self.tables["customers"][customer_id]["contacts"] = contacts


# ---- invoices ------------------------------------------------------------------

class InMemoryInvoiceStore(InMemoryCustomerDirectory):
    """invoice_service.storage.InvoiceStore's contract, in memory.

    The counter behaves as the real one within a transaction: take_number
    counts up in `tables`, so FakeUnitOfWork's rollback gives the number back.
    `clock` stands in for the database's clock (read once the counter is held).
    """

    def __init__(self, clock=now):
        self.tables = {"invoices": {}, "counters": {}, "customers": {}, "processed": set()}
        self.clock = clock
        self.fail_on_insert = None  # an exception insert_invoice raises (after the number was taken)

    def take_number(self):
        year = self.clock().astimezone(timezone.utc).year
        self.tables["counters"][year] = self.tables["counters"].get(year, 0) + 1
        return year, self.tables["counters"][year], self.clock()

    def insert_invoice(self, year, sequence, invoice):
        if self.fail_on_insert is not None:
            raise self.fail_on_insert
        invoices = self.tables["invoices"].values()
        for constraint, breaks in [
            ("invoice_number", invoice["number"] != f"INV-{year}-{sequence:06d}"),
            ("invoices_pkey", any(other["number"] == invoice["number"] for other in invoices)),
            ("invoices_order_id_key", any(other["order_id"] == invoice["order_id"] for other in invoices)),
        ]:
            if breaks:
                raise refused(constraint)
        # Lines read back as the store's json_agg gives them: money as text with its two decimals.
        lines = [{**line, "unit_price": f"{line['unit_price']:.2f}", "line_total": f"{line['line_total']:.2f}"}
                 for line in invoice["lines"]]
        self.tables["invoices"][invoice["number"]] = {**copy.deepcopy(invoice), "lines": lines,
                                                      "year": year, "sequence": sequence}

    def has_invoice_for_order(self, order_id):
        return self.invoice_for_order(order_id) is not None

    def invoice_for_order(self, order_id):
        return next((copy.deepcopy(i) for i in self.tables["invoices"].values() if i["order_id"] == order_id), None)

    def invoice_by_number(self, number):
        return copy.deepcopy(self.tables["invoices"].get(number))

    def list_invoices(self, filters, limit, after_number=None):
        def keep(invoice):
            return all([filters.get("customer_id", invoice["customer_id"]) == invoice["customer_id"],
                        "issued_after" not in filters or invoice["issued_at"] > filters["issued_after"],
                        "issued_before" not in filters or invoice["issued_at"] < filters["issued_before"],
                        after_number is None or invoice["number"] < after_number])
        numbers = sorted((n for n, i in self.tables["invoices"].items() if keep(i)), reverse=True)
        return [copy.deepcopy(self.tables["invoices"][number]) for number in numbers[:limit]]

    def ping(self):
        pass


# ---- notifications ------------------------------------------------------------------

class InMemoryNotificationStore(InMemoryCustomerDirectory):
    """notification_service.storage.NotificationStore's contract, in memory."""
    keeps_contacts = True

    def __init__(self):
        self.tables = {"notifications": {}, "customers": {}, "processed": set()}

    def know_customer(self, customer_id, name="Ada Lovelace", email="ada@example.com"):
        """Test set-up: a customer as the customer_created event would have recorded it."""
        self.remember_customer(uuid.UUID(str(customer_id)), name, email, now())

    def queue_once(self, events, handler, at):
        queued = []
        for event_id, event_type, rows in events:
            if not rows or str(event_id) in self.tables["processed"]:
                continue
            self.tables["processed"].add(str(event_id))
            queued += [self._queue(uuid.UUID(str(event_id)), event_type, row, at) for row in rows
                       if not any(n.event_id == uuid.UUID(str(event_id)) and (n.channel, n.recipient) ==
                                  (row["channel"], row["recipient"]) for n in self.tables["notifications"].values())]
        return queued

    def _queue(self, event_id, event_type, row, at):
        notification = SimpleNamespace(
            **{**row, "order_id": uuid.UUID(str(row["order_id"])) if row["order_id"] else None,
               "customer_id": uuid.UUID(str(row["customer_id"])) if row["customer_id"] else None},
            event_id=event_id, event_type=event_type, status="queued", attempts=0,
            last_error=None, next_attempt_at=at, created_at=at, updated_at=at, sent_at=None,
            claim_token=None, claimed_until=None)
        self.tables["notifications"][notification.id] = notification
        return notification.id

    def claim_due(self, at, until, limit):
        due = [n for n in self.tables["notifications"].values()
               if n.status == "queued" and n.next_attempt_at <= at
               and (n.claimed_until is None or n.claimed_until <= at)]
        token = uuid.uuid4()
        claimed = []
        for notification in sorted(due, key=lambda n: n.next_attempt_at)[:limit]:
            notification.claim_token, notification.claimed_until = token, until
            claimed.append(copy.copy(notification))  # as the real store's: the row as claimed, not the row
        return claimed

    def record_attempt(self, notification, outcome, at):
        if notification.claim_token is None:
            raise ValueError("only a claimed notification has an outcome to record")
        row = self.tables["notifications"].get(notification.id)
        if row is None or row.claim_token != notification.claim_token:
            return None
        row.status = outcome.status
        row.attempts = outcome.attempts
        row.last_error = outcome.last_error
        row.next_attempt_at = outcome.next_attempt_at
        row.sent_at = outcome.sent_at
        row.updated_at = at
        row.claim_token = row.claimed_until = None
        return copy.copy(row)

    def record_attempts(self, attempts, at):
        if any(notification.claim_token is None for notification, _ in attempts):
            raise ValueError("only a claimed notification has an outcome to record")
        return [self.record_attempt(notification, outcome, at) for notification, outcome in attempts]

    def requeue(self, notification, at):
        notification.status, notification.attempts, notification.next_attempt_at = "queued", 0, at
        notification.updated_at = at

    def get_notification(self, notification_id, lock=False):
        return self.tables["notifications"].get(notification_id)

    def list_notifications(self, filters, limit, after=None):
        def keep(n):
            return all([filters.get("status", n.status) == n.status,
                        filters.get("order_id", n.order_id) == n.order_id,
                        filters.get("customer_id", n.customer_id) == n.customer_id,
                        after is None or (n.created_at, n.id) < tuple(after)])
        rows = sorted((n for n in self.tables["notifications"].values() if keep(n)),
                      key=lambda n: (n.created_at, n.id), reverse=True)
        return rows[:limit]

    def ping(self):
        pass


# ---- webhooks ----------------------------------------------------------------------

class InMemoryWebhookStore:
    """webhook_service.storage.WebhookStore's contract, in memory. Its two statements in Python:
    `record_deliveries` (the webhooks as they were when the event occurred, the event's id as its
    dedup) and `claim_due` (due rows of enabled webhooks, a scan of 4 x limit, at most per_host per
    host counting those in flight)."""

    def __init__(self):
        self.tables = {"webhooks": {}, "versions": [], "events": {}, "deliveries": {}}

    # -- the event path

    def record_deliveries(self, event_type, events, now):
        return [recorded for event_id, occurred_at, body in events
                for recorded in self._record(uuid.UUID(str(event_id)), event_type, occurred_at, body, now)]

    def _record(self, event_id, event_type, occurred_at, body, now):
        matching = [webhook_id for webhook_id, version in self._in_force(occurred_at).items()
                    if version["enabled"] and event_type in version["event_types"]]
        if not matching or event_id in self.tables["events"]:
            return []
        self.tables["events"][event_id] = SimpleNamespace(event_id=event_id, event_type=event_type,
                                                          occurred_at=occurred_at, body=body, received_at=now)
        recorded = []
        for webhook_id in matching:
            delivery = SimpleNamespace(
                id=uuid.uuid4(), event_id=event_id, webhook_id=webhook_id, event_type=event_type, status="pending",
                attempts=0, attempts_before_resend=0, last_status_code=None, last_error=None, next_attempt_at=now,
                delivered_at=None, created_at=now, updated_at=now, claim_token=None, claimed_until=None)
            self.tables["deliveries"][delivery.id] = delivery
            recorded.append(delivery.id)
        return recorded

    def _in_force(self, at):
        """{webhook id: its version in force at `at`} (the latest from before it; ties: the last written)."""
        in_force = {}
        for version in self.tables["versions"]:  # in the order written
            current = in_force.get(version["webhook_id"])
            if version["valid_from"] <= at and (current is None or version["valid_from"] >= current["valid_from"]):
                in_force[version["webhook_id"]] = version
        return in_force

    def lock_bindings(self):
        pass  # one process, one thread: nothing runs alongside

    def wanted_event_types(self, since):
        """Types of enabled versions no later version of their webhook took over from by `since`
        (later: in (valid_from, order written), as `_in_force` has it)."""
        versions = list(enumerate(self.tables["versions"]))
        return {event_type for index, version in versions if version["enabled"]
                and not any(later["webhook_id"] == version["webhook_id"] and later["valid_from"] <= since
                            and (later["valid_from"], other) > (version["valid_from"], index)
                            for other, later in versions)
                for event_type in version["event_types"]}

    # -- webhooks

    def insert_webhook(self, webhook_id, fields, host, secret_encrypted, now):
        if webhook_id in self.tables["webhooks"]:
            raise refused("webhooks_pkey")
        webhook = SimpleNamespace(id=webhook_id, host=host, secret_encrypted=secret_encrypted, disabled_reason=None,
                                  failing_since=None, created_at=now, updated_at=now,
                                  **{**fields, "event_types": list(fields["event_types"])})
        self.tables["webhooks"][webhook_id] = webhook
        self._new_version(webhook, now)
        return webhook

    def get_webhook(self, webhook_id, lock=False):
        return self.tables["webhooks"].get(webhook_id)

    def lock_webhook_id(self, webhook_id):
        pass  # one process, one thread: nothing runs alongside

    def list_webhooks(self, filters, limit, after=None):
        rows = sorted((w for w in self.tables["webhooks"].values()
                       if after is None or (w.created_at, w.id) < tuple(after)),
                      key=lambda w: (w.created_at, w.id), reverse=True)
        return rows[:limit]

    def update_webhook(self, webhook, changes, now):
        subscribed = (webhook.enabled, list(webhook.event_types))
        for name, value in changes.items():
            setattr(webhook, name, value)
        webhook.updated_at = now
        if (webhook.enabled, list(webhook.event_types)) != subscribed:
            self._new_version(webhook, now)
        return webhook

    def delete_webhook(self, webhook):
        """Its versions and deliveries go with it (ON DELETE CASCADE); its events stay."""
        self.tables["webhooks"].pop(webhook.id, None)
        self.tables["versions"] = [v for v in self.tables["versions"] if v["webhook_id"] != webhook.id]
        self.tables["deliveries"] = {i: d for i, d in self.tables["deliveries"].items() if d.webhook_id != webhook.id}

    def _new_version(self, webhook, now):
        self.tables["versions"].append({"webhook_id": webhook.id, "valid_from": now, "enabled": webhook.enabled,
                                        "event_types": list(webhook.event_types)})

    def note_delivered(self, webhook_id):
        webhook = self.tables["webhooks"].get(webhook_id)
        if webhook is not None:
            webhook.failing_since = None

    def note_failed(self, webhook_id, now):
        webhook = self.tables["webhooks"].get(webhook_id)
        if webhook is not None and webhook.failing_since is None:
            webhook.failing_since = now
        return webhook

    # -- deliveries

    def get_delivery(self, webhook_id, delivery_id, lock=False):
        delivery = self.tables["deliveries"].get(delivery_id)
        return delivery if delivery is not None and delivery.webhook_id == webhook_id else None

    def list_deliveries(self, webhook_id, filters, limit, after=None):
        rows = sorted((d for d in self.tables["deliveries"].values()
                       if d.webhook_id == webhook_id and filters.get("status", d.status) == d.status
                       and (after is None or (d.created_at, d.id) < tuple(after))),
                      key=lambda d: (d.created_at, d.id), reverse=True)
        return rows[:limit]

    def resend(self, delivery, now):
        delivery.status, delivery.attempts_before_resend, delivery.next_attempt_at = "pending", delivery.attempts, now
        delivery.claim_token = delivery.claimed_until = None
        delivery.updated_at = now
        return delivery

    # -- the sender

    def claim_due(self, now, until, limit, per_host, in_flight):
        webhooks = self.tables["webhooks"]
        due = sorted((d for d in self.tables["deliveries"].values()
                      if d.status == "pending" and d.next_attempt_at <= now
                      and (d.claimed_until is None or d.claimed_until <= now) and webhooks[d.webhook_id].enabled
                      and in_flight.get(webhooks[d.webhook_id].host, 0) < per_host),
                     key=lambda d: d.next_attempt_at)[:limit * 4]
        taken, token, claimed = dict(in_flight), uuid.uuid4(), []
        for delivery in due:
            webhook = webhooks[delivery.webhook_id]
            if len(claimed) == limit or taken.get(webhook.host, 0) >= per_host:
                continue
            taken[webhook.host] = taken.get(webhook.host, 0) + 1
            delivery.claim_token, delivery.claimed_until = token, until
            claimed.append(Claimed(
                id=delivery.id, webhook_id=webhook.id, event_id=delivery.event_id, attempts=delivery.attempts,
                attempts_before_resend=delivery.attempts_before_resend, next_attempt_at=delivery.next_attempt_at,
                claim_token=token, url=webhook.url, host=webhook.host, secret_encrypted=webhook.secret_encrypted,
                body=self.tables["events"][delivery.event_id].body))
        return claimed

    def record_attempt(self, claimed, attempt, now):
        delivery = self.tables["deliveries"].get(claimed.id)
        if delivery is None or delivery.claim_token != claimed.claim_token:
            return None
        delivery.status, delivery.attempts = attempt.status, attempt.attempts
        delivery.last_status_code, delivery.last_error = attempt.last_status_code, attempt.last_error
        delivery.next_attempt_at, delivery.delivered_at = attempt.next_attempt_at, attempt.delivered_at
        delivery.updated_at, delivery.claim_token, delivery.claimed_until = now, None, None
        return delivery

    # -- retention

    def prune_deliveries(self, before, limit):
        ended = sorted((d for d in self.tables["deliveries"].values()
                        if d.status != "pending" and d.updated_at < before), key=lambda d: d.updated_at)[:limit]
        for delivery in ended:
            del self.tables["deliveries"][delivery.id]
        return len(ended)

    def prune_events(self, before, limit):
        needed = {d.event_id for d in self.tables["deliveries"].values()}
        old = sorted((e for e in self.tables["events"].values()
                      if e.received_at < before and e.event_id not in needed), key=lambda e: e.received_at)[:limit]
        for event in old:
            del self.tables["events"][event.event_id]
        return len(old)

    def ping(self):
        pass


class FakeMailer:
    """notification_service.mail.Mailer's contract: keeps what it sends; `refuse` maps a
    recipient to the exception sending to it raises (as smtplib would)."""

    def __init__(self):
        self.sent = []  # EmailMessage objects, in order
        self.refuse = {}
        self.down = None  # an exception every send raises (the relay is unreachable)

    @contextmanager
    def session(self):
        yield self

    def close_idle(self):
        pass

    def send(self, message):
        if self.down is not None:
            raise self.down
        error = self.refuse.get(message["To"])
        if error is not None:
            raise error
        self.sent.append(message)


class FakeProvider:
    """notification_service.channels' SmsClient / WebPusher contract: keeps what it sends; `answers`
    is a list of exceptions the next sends raise, in order (then they succeed)."""

    def __init__(self):
        self.sent = []  # (recipient, body) / (endpoint, keys, payload)
        self.answers = []

    def _attempt(self, *message):
        if self.answers:
            raise self.answers.pop(0)
        self.sent.append(message)

    def send(self, *message):
        self._attempt(*message)

    def public_key(self):
        return "BPublicKeyForTests"
