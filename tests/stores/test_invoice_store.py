"""InvoiceStore's contract (numbering, the invoice and its reads, the customer
directory): the real store on Postgres and the in-memory fake pass the same tests."""
from datetime import datetime, timedelta, timezone
from uuid import uuid4

import pytest
from sqlalchemy.exc import IntegrityError

from common.kit.db import constraint_name
from invoice_service import domain, storage
from tests.stores.test_inventory_store import Refused, store_engine, stores_of  # noqa: F401
from tests.unit.fakes import InMemoryInvoiceStore

START = datetime(2025, 3, 1, 9, 30, tzinfo=timezone.utc)


@pytest.fixture(params=["postgres", "memory"])
def stores(request):
    return stores_of(request, storage.layout, InMemoryInvoiceStore)


def invoice_of(year, sequence, issued_at, order_id=None, customer_id=None):
    """An invoice as domain.build_invoice makes it: two lines, 19 % tax, a shipping address."""
    order = {"id": str(order_id or uuid4()), "customer_id": str(customer_id or uuid4()), "currency": "EUR",
             "total_amount": "12.99", "shipping_address": {"line1": "12 Analytical Way", "city": "London",
                                                          "postal_code": "N1 9GU", "country": "GB"},
             "items": [{"sku": "B", "quantity": 2, "unit_price": "2.50", "line_total": "5.00"},
                       {"sku": "A", "quantity": 1, "unit_price": "7.99", "line_total": "7.99"}]}
    return domain.build_invoice(domain.invoice_number(year, sequence), issued_at, order,
                                {"name": "Ada Lovelace", "email": "ada@example.com"}, {"B": "Bolt"},
                                domain.seller("Shop", "1 Main St", "DE123"), "0.19")


def as_read(invoice, year, sequence):
    """What the reads give for an inserted invoice: its year and sequence, the lines' money as text."""
    lines = [{**line, "unit_price": f"{line['unit_price']:.2f}", "line_total": f"{line['line_total']:.2f}"}
             for line in invoice["lines"]]
    return {**invoice, "year": year, "sequence": sequence, "lines": lines}


def insert(stores, year, sequence, issued_at, **ids):
    invoice = invoice_of(year, sequence, issued_at, **ids)
    with stores.transaction() as store:
        store.insert_invoice(year, sequence, invoice)
    return as_read(invoice, year, sequence)


def test_numbers_count_up_within_the_year_and_a_rollback_gives_one_back(stores):
    with stores.transaction() as store:
        year, first, issued_at = store.take_number()
    assert first == 1 and year == issued_at.astimezone(timezone.utc).year == datetime.now(timezone.utc).year
    with pytest.raises(Refused), stores.transaction() as store:
        assert store.take_number()[1] == 2
        raise Refused
    with stores.transaction() as store:
        (_, second, later), (_, third, latest) = store.take_number(), store.take_number()
    assert (second, third) == (2, 3) and issued_at < later <= latest


def test_an_invoice_is_read_back_by_number_and_by_order(stores):
    expected = insert(stores, 2025, 7, START)
    with stores.transaction() as store:
        assert store.invoice_by_number("INV-2025-000007") == expected
        assert store.invoice_for_order(expected["order_id"]) == expected
        assert store.has_invoice_for_order(expected["order_id"]) is True
        assert store.invoice_by_number("INV-2025-000008") is None
        assert store.invoice_for_order(uuid4()) is None
        assert store.has_invoice_for_order(uuid4()) is False
        store.ping()
    assert expected["lines"][0] == {"sku": "B", "name": "Bolt", "quantity": 2, "unit_price": "2.50",
                                    "line_total": "5.00"}
    assert expected["issued_at"].tzinfo == timezone.utc


@pytest.mark.parametrize("year, sequence, number, same_order, constraint", [
    (2025, 2, "INV-2025-000002", True, "invoices_order_id_key"),   # a second invoice for one order
    (2025, 1, "INV-2025-000001", False, "invoices_pkey"),          # a number issued twice
    (2025, 2, "INV-2025-000003", False, "invoice_number"),         # a number that is not its sequence's
])
def test_an_invoice_that_breaks_a_rule_of_the_table_is_refused(stores, year, sequence, number, same_order,
                                                                constraint):
    first = insert(stores, 2025, 1, START)
    invoice = invoice_of(year, sequence, START, order_id=first["order_id"] if same_order else None)
    with pytest.raises(IntegrityError) as error, stores.transaction() as store:
        store.insert_invoice(year, sequence, {**invoice, "number": number})
    assert constraint_name(error.value) == constraint
    with stores.transaction() as store:
        assert [invoice["number"] for invoice in store.list_invoices({}, 10)] == ["INV-2025-000001"]


def test_invoices_list_newest_first_with_filters_and_a_cursor(stores):
    ada, bob = uuid4(), uuid4()
    one, two, three, four = (insert(stores, 2025, sequence, START + timedelta(hours=sequence), customer_id=who)
                             for sequence, who in [(1, ada), (2, bob), (3, ada), (4, ada)])
    with stores.transaction() as store:
        assert store.list_invoices({}, 10) == [four, three, two, one]
        assert store.list_invoices({}, 2) == [four, three]
        assert store.list_invoices({}, 2, after_number=three["number"]) == [two, one]
        assert store.list_invoices({"customer_id": ada}, 10, after_number=four["number"]) == [three, one]
        assert store.list_invoices({"issued_after": two["issued_at"]}, 10) == [four, three]
        assert store.list_invoices({"issued_before": three["issued_at"]}, 10) == [two, one]
        assert store.list_invoices({"customer_id": bob, "issued_after": one["issued_at"],
                                    "issued_before": three["issued_at"]}, 10) == [two]
        assert store.list_invoices({"customer_id": uuid4()}, 10) == []


def test_the_customer_directory_keeps_the_newest_it_was_told(stores):
    customer_id = uuid4()
    with stores.transaction() as store:
        assert store.known_customer(customer_id) is None
        store.remember_customer(customer_id, "Ada", "ada@example.com", START)
        store.remember_customer(customer_id, "Older", "older@example.com", START - timedelta(seconds=1))
        store.remember_customer(customer_id, "Same time", "same@example.com", START)
    with stores.transaction() as store:
        assert store.known_customer(customer_id) == {"id": customer_id, "name": "Ada", "email": "ada@example.com",
                                                     "updated_at": START}
        store.remember_customer(customer_id, "Ada L.", "ada@example.org", START + timedelta(days=1))
    with stores.transaction() as store:
        assert store.known_customer(customer_id)["name"] == "Ada L."
        assert store.known_customer(uuid4()) is None
