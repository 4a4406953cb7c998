"""InventoryStore's contract: the real store on Postgres and the in-memory fake
the unit tests use (tests/unit/fakes.py) pass the same tests.

Each `with stores.transaction() as store:` is one transaction, as a service's
unit of work is: it commits, or rolls back whole on an exception.
"""
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from uuid import uuid4

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.contract.errors import AlreadyExists
from common.kit.db import constraint_name
from common.kit.outbox import Outbox
from inventory_service import storage
from inventory_service.domain import allocate
from tests import support
from tests.unit.fakes import FakeUnitOfWork, InMemoryInventoryStore

# ---- the two kinds of store (shared with test_invoice_store.py) ------------------


@pytest.fixture(scope="session")
def store_engine():
    """An engine on a throwaway database migrated to head."""
    name, url = support.create_database()
    support.alembic(url, "upgrade", "head")
    engine = create_engine(url)
    yield engine
    engine.dispose()
    support.drop_database(name)


class PostgresStores:
    """Transactions of `layout.store` on the real database, its schema emptied first."""

    def __init__(self, engine, layout):
        self.engine, self.layout = engine, layout
        tables = ", ".join(table.fullname for table in layout.base.metadata.sorted_tables)
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {tables}"))

    @contextmanager
    def transaction(self):
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield self.layout.store(session)


class MemoryStores:
    """Transactions of an in-memory store through FakeUnitOfWork."""

    def __init__(self, store):
        self.uow = FakeUnitOfWork(store)

    @contextmanager
    def transaction(self):
        with self.uow as tx:
            yield tx.store


def stores_of(request, layout, fake):
    """The stores a fixture parametrized with ["postgres", "memory"] gives."""
    if request.param == "memory":
        return MemoryStores(fake())
    return PostgresStores(request.getfixturevalue("store_engine"), layout)


# ---- inventory ---------------------------------------------------------------------


@pytest.fixture(params=["postgres", "memory"])
def stores(request):
    return stores_of(request, storage.layout, InMemoryInventoryStore)


def product_fields(sku, stock=5, unit_price="2.50", threshold=0):
    """What ProductInput loads for a new product."""
    return {"sku": sku, "name": f"Product {sku}", "description": "", "unit_price": Decimal(unit_price),
            "currency": "EUR", "stock": stock, "low_stock_threshold": threshold}


def add_products(stores, *skus, stock=5):
    with stores.transaction() as store:
        for sku in skus:
            store.insert_product(product_fields(sku, stock=stock))


def units(stores, sku):
    with stores.transaction() as store:
        product = store.get_product(sku)
        return product.stock, product.reserved


def skus(products):
    return [product.sku for product in products]


NOW = datetime(2026, 12, 7, 8, 30, tzinfo=timezone.utc)


class Refused(Exception):
    """Raised inside a transaction to roll it back."""


def reserve(store, order_id, plan, events=(), withdrawn=()):
    """Claim `order_id` and take `plan` whole, as a reserve does; the lines taken."""
    at = datetime.now(timezone.utc)
    claimed, products = store.claim_and_lock([order_id], [sku for sku, _ in plan], at)
    assert claimed == {order_id}
    [taken] = allocate([plan], products, at)
    store.record_reservations([(order_id, taken.lines)], [], list(events), list(withdrawn), at)
    return taken.lines


def test_a_product_is_inserted_and_read_back(stores):
    with stores.transaction() as store:
        inserted = store.insert_product(product_fields("A", stock=7, threshold=2))
        assert (inserted.sku, inserted.reserved, inserted.available) == ("A", 0, 7)
    with stores.transaction() as store:
        product = store.get_product("A", lock=True)
        assert (product.name, product.description, product.unit_price, product.currency) == \
            ("Product A", "", Decimal("2.50"), "EUR")
        assert (product.stock, product.reserved, product.available, product.low_stock_threshold) == (7, 0, 7, 2)
        assert product.created_at.tzinfo is not None
        assert product.updated_at >= product.created_at
        assert store.get_product("NOPE") is None


def test_a_second_product_with_one_sku_is_refused(stores):
    add_products(stores, "A")
    with pytest.raises(AlreadyExists) as error, stores.transaction() as store:
        store.insert_product(product_fields("A"))
    assert error.value.details == {"sku": "A"}


def test_an_update_changes_the_fields_given_and_updated_at(stores):
    add_products(stores, "A")
    with stores.transaction() as store:
        before = store.get_product("A").updated_at
        updated = store.update_product(store.get_product("A", lock=True),
                                       {"unit_price": Decimal("3.10"), "stock": 9})
        assert (updated.unit_price, updated.stock, updated.name) == (Decimal("3.10"), 9, "Product A")
    with stores.transaction() as store:
        product = store.get_product("A")
        assert (product.unit_price, product.stock, product.available) == (Decimal("3.10"), 9, 9)
        assert product.updated_at > before


def test_get_products_gives_the_known_ones_once_in_sku_order(stores):
    add_products(stores, "b-2", "A-1", "C.3")
    with stores.transaction() as store:
        assert skus(store.get_products(["C.3", "NOPE", "A-1", "C.3"])) == ["A-1", "C.3"]
        assert store.get_products([]) == []


def test_products_page_by_sku(stores):
    add_products(stores, "D", "B", "a", "C", "A")
    with stores.transaction() as store:
        assert skus(store.list_products(3)) == ["A", "B", "C"]
        assert skus(store.list_products(3, after_sku="C")) == ["D", "a"]
        assert skus(store.list_products(3, after_sku="Bz")) == ["C", "D", "a"]
        assert store.list_products(3, after_sku="a") == []


def test_taking_stock_reserves_only_what_is_available(stores):
    add_products(stores, "A", stock=5)
    with stores.transaction() as store:
        taken = store.take_stock("A", 3)
        assert (taken.sku, taken.stock, taken.reserved, taken.available) == ("A", 5, 3, 2)
        assert store.take_stock("A", 3) is None
        assert store.take_stock("NOPE", 1) is None
        assert store.take_stock("A", 2).available == 0
    assert units(stores, "A") == (5, 5)


def test_a_product_read_before_shows_the_stock_taken_since(stores):
    add_products(stores, "A", "B", stock=5)
    with stores.transaction() as store:
        a, b = store.get_products(["A", "B"])
        reserve(store, uuid4(), [("A", 1), ("B", 1)])
        store.take_stock("A", 2)
        store.give_back_stock("B", 1)
        assert (a.reserved, a.available, b.reserved) == (3, 2, 0)
        store.commit_stock("A", 3)
        assert (a.stock, a.reserved, store.get_product("A").available) == (2, 0, 2)


def test_giving_back_and_committing_stock_give_the_product_after(stores):
    add_products(stores, "A", stock=5)
    with stores.transaction() as store:
        store.take_stock("A", 4)
        given_back = store.give_back_stock("A", 1)
        assert (given_back.stock, given_back.reserved, given_back.unit_price) == (5, 3, Decimal("2.50"))
        committed = store.commit_stock("A", 2)
        assert (committed.stock, committed.reserved, committed.available) == (3, 1, 2)
    assert units(stores, "A") == (3, 1)
    with stores.transaction() as store:
        assert store.available_stock(["A", "NOPE"]) == {"A": 2}


def test_stock_never_goes_below_what_is_reserved(stores):
    add_products(stores, "A", stock=5)
    with pytest.raises(IntegrityError) as given_back, stores.transaction() as store:
        store.take_stock("A", 2)
        store.give_back_stock("A", 3)
    with pytest.raises(IntegrityError) as committed, stores.transaction() as store:
        store.commit_stock("A", 1)
    assert constraint_name(given_back.value) == constraint_name(committed.value) == "reserved_not_negative"
    assert units(stores, "A") == (5, 0)
    with stores.transaction() as store:
        assert store.give_back_stock("NOPE", 1) is None and store.commit_stock("NOPE", 1) is None


def test_a_claim_is_made_once_per_order_and_locks_the_products_as_they_are(stores):
    add_products(stores, "A", "B", stock=2)
    order_id, other = uuid4(), uuid4()
    with stores.transaction() as store:
        claimed, products = store.claim_and_lock([order_id, other], ["B", "NOPE", "A", "B"], NOW)
        assert claimed == {order_id, other} and sorted(products) == ["A", "B"]
        assert (products["A"].stock, products["A"].reserved, products["A"].unit_price) == (2, 0, Decimal("2.50"))
        reservation = store.get_reservation(order_id)
        assert (reservation.order_id, reservation.status, reservation.checked_at) == (order_id, "reserved", NOW)
        assert store.reservation_items(order_id) == []
    with stores.transaction() as store:
        assert store.claim_and_lock([order_id], [], NOW)[0] == set()  # no claim twice
        assert store.claim_and_lock([], [], NOW) == (set(), {})
    with stores.transaction() as store:
        assert len(store.claim_and_lock([order_id, uuid4()], ["A"], NOW)[0]) == 1


def test_a_batch_takes_its_stock_writes_its_items_and_gives_up_its_refused_claims(stores):
    add_products(stores, "A", "B", stock=5)
    kept, refused = uuid4(), uuid4()
    with stores.transaction() as store:
        claimed, products = store.claim_and_lock([kept, refused], ["A", "B"], NOW)
        taken, refusal = allocate([[("A", 2), ("B", 1)], [("A", 9)]], products, NOW)
        store.record_reservations([(kept, taken.lines)], [refused], [], [], NOW)
    assert units(stores, "A") == (5, 2) and units(stores, "B") == (5, 1)
    with stores.transaction() as store:
        assert store.get_reservation(refused) is None and store.get_reservation(kept).status == "reserved"
        assert store.get_product("A").updated_at == NOW
        assert [(item.sku, item.quantity) for item in store.reservation_items(kept)] == [("A", 2), ("B", 1)]


def test_a_rolled_back_claim_leaves_no_reservation(stores):
    add_products(stores, "A", stock=2)
    order_id = uuid4()
    with pytest.raises(Refused), stores.transaction() as store:
        reserve(store, order_id, [("A", 2)])
        raise Refused
    with stores.transaction() as store:
        assert store.get_reservation(order_id, lock=True) is None
        reserve(store, order_id, [("A", 2)])
    assert units(stores, "A") == (2, 2)


def item_tuples(items):
    return [(item.order_id, item.sku, item.quantity, item.unit_price, item.currency) for item in items]


def test_a_reservation_keeps_its_items_at_the_prices_taken(stores):
    add_products(stores, "B", "A", "C")
    order_id = uuid4()
    with stores.transaction() as store:
        reserve(store, order_id, [("A", 2), ("B", 1)], [Outbox.row("stock_reserved", {"order_id": str(order_id)})])
    with stores.transaction() as store:
        assert item_tuples(store.reservation_items(order_id)) == [
            (order_id, "A", 2, Decimal("2.50"), "EUR"), (order_id, "B", 1, Decimal("2.50"), "EUR")]
        store.update_product(store.get_product("C", lock=True), {"unit_price": Decimal("7.00")})
    with stores.transaction() as store:
        store.replace_reservation_items(order_id, [(store.get_product("C"), 4), (store.get_product("A"), 1)])
    with stores.transaction() as store:
        assert item_tuples(store.reservation_items(order_id)) == [
            (order_id, "A", 1, Decimal("2.50"), "EUR"), (order_id, "C", 4, Decimal("7.00"), "EUR")]
        assert store.reservation_items(uuid4()) == []


def unsent_refusals(stores):
    """{event id: next_attempt_at} of the unsent stock_reservation_failed rows."""
    if isinstance(stores, MemoryStores):
        return {event_id: row["next_attempt_at"] for event_id, row in stores.uow.store.tables["refusals"].items()}
    with stores.engine.connect() as connection:
        return dict(connection.execute(text(
            "SELECT event_id, next_attempt_at FROM inventory.outbox "
            "WHERE event_type = 'stock_reservation_failed' AND sent_at IS NULL")).all())


def test_a_refusal_is_kept_once_until_a_reservation_withdraws_it(stores):
    add_products(stores, "A")
    refused, other = uuid4(), uuid4()
    due = datetime(2030, 1, 1, tzinfo=timezone.utc)
    for event_id in (refused, refused, other):
        with stores.transaction() as store:
            store.record_reservations([], [], [{**Outbox.row("stock_reservation_failed", {"order_id": "x"}),
                                                "event_id": event_id, "next_attempt_at": due}], [], NOW)
    assert unsent_refusals(stores) == {refused: due, other: due}
    with stores.transaction() as store:
        reserve(store, uuid4(), [("A", 1)], withdrawn=[refused])
    assert unsent_refusals(stores) == {other: due}


def test_a_reservation_status_is_set_and_kept(stores):
    add_products(stores, "A")
    order_id = uuid4()
    with stores.transaction() as store:
        reserve(store, order_id, [("A", 1)])
    with stores.transaction() as store:
        reservation = store.get_reservation(order_id, lock=True)
        created = reservation.updated_at
        store.set_reservation_status(reservation, "released")
    with stores.transaction() as store:
        reservation = store.get_reservation(order_id)
        assert reservation.status == "released" and reservation.updated_at > created
        assert store.get_reservation(uuid4()) is None


def test_stale_reservations_are_the_held_ones_unchecked_since_oldest_first(stores):
    add_products(stores, "A", stock=10)
    first, second, third, settled = uuid4(), uuid4(), uuid4(), uuid4()
    for order_id in (settled, first, second, third):
        with stores.transaction() as store:
            reserve(store, order_id, [("A", 1)])
    with stores.transaction() as store:
        store.set_reservation_status(store.get_reservation(settled, lock=True), "committed")
    later = datetime.now(timezone.utc) + timedelta(minutes=1)
    with stores.transaction() as store:
        assert store.stale_reservations(later - timedelta(hours=1), 10) == []
        stale = store.stale_reservations(later, 2)
        assert [reservation.order_id for reservation in stale] == [first, second]
        before_the_check = datetime.now(timezone.utc)
        store.mark_checked(stale)
    with stores.transaction() as store:
        assert [r.order_id for r in store.stale_reservations(later, 10)] == [third, first, second]
        assert [r.order_id for r in store.stale_reservations(before_the_check, 10)] == [third]
        store.ping()
