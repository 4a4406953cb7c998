"""Invoice rules (numbering, tax) and invoice_service's entrypoints on in-memory fakes
(no Postgres, no broker): issuing once per shipped order, gap-free numbers, ownership."""
import base64
import json
import random
import threading
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from nameko.testing.services import worker_factory

from common.contract.caller import Caller
from common.contract.errors import InvoiceNotIssued, NotFound, ServiceUnavailable, ValidationFailed
from invoice_service import domain, pdf
from invoice_service.service import InvoiceService
from tests import support
from tests.unit.fakes import SETTINGS, FakeCustomerService, FakeUnitOfWork, InMemoryInvoiceStore

ADA = {"id": str(uuid.uuid4()), "name": "Ada Lovelace", "email": "ada@example.com"}
GRACE = {"id": str(uuid.uuid4()), "name": "Grace Hopper", "email": "grace@example.com"}
ADDRESS = {"line1": "12 Analytical Way", "line2": None, "city": "London", "postal_code": "N1 9GU", "country": "GB"}
SELLER = domain.seller("Shop", "1 Street, Berlin", "DE1")


# ---- numbering -------------------------------------------------------------------

def test_numbers_have_the_year_and_six_digits():
    assert domain.invoice_number(2026, 1) == "INV-2026-000001"
    assert domain.invoice_number(2026, 999_999) == "INV-2026-999999"
    assert domain.is_invoice_number("INV-2026-000042")
    for bad in ("INV-2026-42", "inv-2026-000042", "INV-2026-000042\n", "INV-26-000042", None, 42, "x" * 500):
        assert not domain.is_invoice_number(bad), bad


def test_a_year_with_a_million_invoices_issues_no_seventh_digit():
    with pytest.raises(domain.NumberingExhausted):
        domain.invoice_number(2026, 1_000_000)
    with pytest.raises(domain.NumberingExhausted):
        domain.invoice_number(2026, 0)


def test_the_number_year_is_the_issue_times_utc_year():
    domain.check_issue_year(2026, datetime(2026, 12, 31, 23, 59, 59, tzinfo=timezone.utc))
    # 00:30 on 1 January in Berlin is still 2026 in UTC.
    domain.check_issue_year(2026, datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))))
    with pytest.raises(domain.YearTurned):
        domain.check_issue_year(2026, datetime(2027, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc))


# ---- tax -------------------------------------------------------------------------

@pytest.mark.parametrize("total, rate, subtotal, tax", [
    ("59.98", "0", "59.98", "0.00"),
    ("119.00", "0.19", "100.00", "19.00"),
    ("59.98", "0.19", "50.40", "9.58"),      # 9.5765... -> 9.58
    ("10.00", "0.07", "9.35", "0.65"),       # 0.6542... -> 0.65
    ("0.12", "0.6", "0.07", "0.05"),         # exactly 0.045: half-up gives 0.05 (half-even would give 0.04)
    ("0.04", "0.6", "0.02", "0.02"),         # exactly 0.015 -> 0.02
    ("0.01", "0.19", "0.01", "0.00"),
    ("0.00", "0.19", "0.00", "0.00"),
    ("1000000000.00", "0.9999", "500025001.25", "499974998.75"),
])
def test_tax_is_the_included_part_rounded_half_up(total, rate, subtotal, tax):
    assert domain.tax_split(total, rate) == (Decimal(subtotal), Decimal(tax))


def test_subtotal_and_tax_always_add_up_to_the_total():
    rng = random.Random(14)
    for _ in range(2000):
        total = Decimal(rng.randrange(0, 10_000_000)) / 100
        rate = Decimal(rng.randrange(0, 10_000)) / 10_000
        subtotal, tax = domain.tax_split(total, rate)
        assert subtotal + tax == total
        assert tax.as_tuple().exponent == -2 and 0 <= tax <= total
        assert abs(tax - (total - total / (1 + rate))) <= Decimal("0.005")


# ---- building an invoice ------------------------------------------------------------

def shipped_order(customer=ADA, items=(("A", 2, "29.99"), ("B", 1, "0.10")), **changes):
    lines = [{"sku": sku, "quantity": quantity, "unit_price": price,
              "line_total": str(Decimal(price) * quantity)} for sku, quantity, price in items]
    order = {"id": str(uuid.uuid4()), "customer_id": customer["id"], "status": "shipped", "items": lines,
             "total_amount": str(sum(Decimal(line["line_total"]) for line in lines)), "currency": "EUR",
             "shipping_address": ADDRESS, "carrier": "DHL", "tracking_number": "JD1", "version": 4,
             "created_at": "2026-11-02T10:20:00+00:00", "updated_at": "2026-11-03T08:00:00+00:00"}
    order.update(changes)
    return order


def test_an_invoice_has_the_orders_lines_and_total_with_names_from_inventory():
    order = shipped_order()
    issued_at = datetime(2026, 11, 3, 8, 0, tzinfo=timezone.utc)
    invoice = domain.build_invoice("INV-2026-000007", issued_at, order, ADA, {"A": "Widget"}, SELLER,
                                   Decimal("0.19"))
    assert invoice["total_amount"] == Decimal("60.08") == Decimal(order["total_amount"])
    assert invoice["subtotal"] + invoice["tax_amount"] == invoice["total_amount"]
    assert [(line["sku"], line["name"], line["quantity"], line["line_total"]) for line in invoice["lines"]] == [
        ("A", "Widget", 2, Decimal("59.98")), ("B", "B", 1, Decimal("0.10"))]  # no name known: the sku
    assert invoice["bill_to"] == {"name": "Ada Lovelace", "email": "ada@example.com", "address": ADDRESS}
    assert invoice["seller"] == SELLER and invoice["currency"] == "EUR"
    assert invoice["order_id"] == uuid.UUID(order["id"]) and invoice["issued_at"] == issued_at


def test_an_order_whose_lines_do_not_add_up_gets_no_invoice():
    order = shipped_order(total_amount="1.00")
    with pytest.raises(domain.InconsistentOrder):
        domain.build_invoice("INV-2026-000001", datetime.now(timezone.utc), order, ADA, {}, SELLER, Decimal(0))


# ---- the service ----------------------------------------------------------------------

class _Inventory:
    def __init__(self):
        self.names = {"A": "Widget", "B": "Gadget"}
        self.fail = None

    def get_products(self, skus):
        if self.fail is not None:
            raise self.fail
        return [{"sku": sku, "name": self.names[sku]} for sku in skus if sku in self.names]


class World:
    def __init__(self, clock=None, tax_rate="0.19"):
        self.store = InMemoryInvoiceStore(**({"clock": clock} if clock else {}))
        self.customers = FakeCustomerService(ADA, GRACE)
        self.inventory = _Inventory()
        self.settings = SETTINGS.model_copy(update={"tax_rate": Decimal(tax_rate)})
        self.invoices = self.as_caller(Caller("admin-1", "admin"))

    def as_caller(self, caller):
        return worker_factory(InvoiceService, uow=FakeUnitOfWork(self.store), settings=self.settings,
                              caller=caller, customer_rpc=self.customers, inventory_rpc=self.inventory)

    def ship(self, order, event_id=None):
        envelope = {"event_id": event_id or str(uuid.uuid4()), "type": "order_status_changed",
                    "occurred_at": "2026-11-03T08:00:00+00:00", "request_id": None, "data": order}
        self.invoices.on_order_status_changed(envelope)
        return envelope

    def numbers(self):
        return sorted(self.store.tables["invoices"])

    def issued_events(self):
        return [data for event_type, data in self.invoices.uow.events if event_type == "invoice_issued"]


@pytest.fixture
def world():
    return World()


def test_a_shipped_order_gets_one_invoice_and_its_event(world):
    order = shipped_order()
    world.ship(order)
    year = datetime.now(timezone.utc).year
    assert world.numbers() == [f"INV-{year}-000001"]
    [event] = world.issued_events()
    assert event == world.invoices.get_invoice_for_order(order["id"])
    assert event["total_amount"] == order["total_amount"] == "60.08"
    assert (event["subtotal"], event["tax_rate"], event["tax_amount"]) == ("50.49", "0.19", "9.59")
    assert [line["name"] for line in event["lines"]] == ["Widget", "Gadget"]
    assert event["seller"] == {"name": SETTINGS.seller_name, "address": SETTINGS.seller_address,
                               "tax_id": SETTINGS.seller_tax_id}


@pytest.mark.parametrize("status", ["pending", "processing", "delivered", "cancelled"])
def test_other_status_changes_issue_nothing(world, status):
    world.ship(shipped_order(status=status))
    assert world.numbers() == [] and world.store.tables["counters"] == {}


def test_a_redelivered_event_issues_nothing_new(world):
    order = shipped_order()
    envelope = world.ship(order)
    world.invoices.on_order_status_changed(envelope)
    world.ship(order)  # even another event for the same order
    assert len(world.numbers()) == 1 and len(world.issued_events()) == 1
    assert world.store.tables["counters"] == {datetime.now(timezone.utc).year: 1}


def test_numbers_are_consecutive(world):
    for _ in range(5):
        world.ship(shipped_order())
    assert [int(number[-6:]) for number in world.numbers()] == [1, 2, 3, 4, 5]


def test_a_failure_after_taking_a_number_leaves_no_number_used(world):
    world.ship(shipped_order())
    world.store.fail_on_insert = RuntimeError("disk full")
    failing = shipped_order()
    with pytest.raises(RuntimeError):
        world.ship(failing)
    assert world.store.tables["counters"] == {datetime.now(timezone.utc).year: 1}
    assert len(world.issued_events()) == 1
    world.store.fail_on_insert = None
    world.ship(failing)  # the reliable handler's retry
    world.ship(shipped_order())
    assert [int(number[-6:]) for number in world.numbers()] == [1, 2, 3]


def test_a_failed_rpc_writes_nothing_and_the_retry_issues(world):
    world.inventory.fail = ServiceUnavailable("inventory_service is not running.", {"service": "inventory_service"})
    order = shipped_order()
    envelope = {"event_id": str(uuid.uuid4()), "data": order}
    with pytest.raises(ServiceUnavailable):
        world.invoices.on_order_status_changed(envelope)
    assert world.store.tables["counters"] == {} and world.store.tables["processed"] == set()
    world.inventory.fail = None
    world.invoices.on_order_status_changed(envelope)
    assert len(world.numbers()) == 1


def test_each_year_counts_from_one():
    moments = iter([datetime(2026, 12, 31, 23, 59, tzinfo=timezone.utc)] * 4
                   + [datetime(2027, 1, 1, 0, 1, tzinfo=timezone.utc)] * 2)
    world = World(clock=lambda: next(moments))
    for _ in range(3):
        world.ship(shipped_order())
    assert world.numbers() == ["INV-2026-000001", "INV-2026-000002", "INV-2027-000001"]


def test_a_year_that_turns_while_the_counter_is_awaited_rolls_back():
    moments = iter([datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc),
                    datetime(2027, 1, 1, tzinfo=timezone.utc)])
    world = World(clock=lambda: next(moments))
    with pytest.raises(domain.YearTurned):
        world.ship(shipped_order())
    assert world.store.tables["counters"] == {} and world.numbers() == []


def test_bill_to_comes_from_the_directory_else_from_customer_service(world):
    world.ship(shipped_order())
    assert world.customers.calls == 1
    world.invoices.on_customer_updated({"event_id": str(uuid.uuid4()), "data": {
        **ADA, "name": "Ada King", "updated_at": "2026-11-04T00:00:00+00:00"}})
    order = shipped_order()
    world.ship(order)
    assert world.customers.calls == 1
    assert world.invoices.get_invoice_for_order(order["id"])["bill_to"]["name"] == "Ada King"
    # An older event never overwrites a newer one.
    world.invoices.on_customer_created({"event_id": str(uuid.uuid4()), "data": {
        **ADA, "updated_at": "2026-11-01T00:00:00+00:00"}})
    assert world.store.known_customer(uuid.UUID(ADA["id"]))["name"] == "Ada King"


def test_a_tax_rate_of_zero_shows_no_tax():
    world = World(tax_rate="0")
    order = shipped_order()
    world.ship(order)
    invoice = world.invoices.get_invoice_for_order(order["id"])
    assert (invoice["subtotal"], invoice["tax_rate"], invoice["tax_amount"]) == ("60.08", "0", "0.00")


# ---- reading ----------------------------------------------------------------------------

def test_customers_read_only_their_own_invoices(world):
    ada_order, grace_order = shipped_order(ADA), shipped_order(GRACE)
    world.ship(ada_order)
    world.ship(grace_order)
    ada = world.as_caller(Caller(f"customer:{ADA['id']}", "customer", ADA["id"]))
    mine = ada.get_invoice_for_order(ada_order["id"])
    assert ada.get_invoice(mine["number"]) == mine
    with pytest.raises(InvoiceNotIssued):
        ada.get_invoice_for_order(grace_order["id"])
    theirs = world.invoices.get_invoice_for_order(grace_order["id"])["number"]
    with pytest.raises(NotFound):
        ada.get_invoice(theirs)
    assert [i["number"] for i in ada.list_invoices()["items"]] == [mine["number"]]
    assert ada.list_invoices({"customer_id": GRACE["id"]}) == {"items": [], "next_cursor": None}
    assert len(world.invoices.list_invoices()["items"]) == 2


@pytest.mark.parametrize("order_id", [str(uuid.uuid4()), "not-an-id", "", "\x00"])
def test_no_invoice_yet_is_invoice_not_issued(world, order_id):
    for method in (world.invoices.get_invoice_for_order, world.invoices.get_invoice_pdf):
        with pytest.raises(InvoiceNotIssued) as error:
            method(order_id)
        assert (error.value.http_status, error.value.code) == (404, "invoice_not_issued")


def test_the_pdf_is_base64_in_json_and_only_for_the_owner(world, tmp_path):
    ada_order, grace_order = shipped_order(ADA), shipped_order(GRACE)
    world.ship(ada_order)
    world.ship(grace_order)
    ada = world.as_caller(Caller(f"customer:{ADA['id']}", "customer", ADA["id"]))
    answer = json.loads(json.dumps(ada.get_invoice_pdf(ada_order["id"])))
    invoice = ada.get_invoice_for_order(ada_order["id"])
    assert set(answer) == {"number", "pdf"} and answer["number"] == invoice["number"]
    content = base64.b64decode(answer["pdf"], validate=True)
    assert content.startswith(b"%PDF-")
    text = support.pdf_text(content, tmp_path)
    assert invoice["number"] in text and "Ada Lovelace" in text and "60.08 EUR" in text, text
    with pytest.raises(InvoiceNotIssued):
        ada.get_invoice_pdf(grace_order["id"])


def test_the_pdf_is_laid_out_off_the_calling_thread(world, monkeypatch):
    order = shipped_order()
    world.ship(order)
    threads = []
    render = pdf.render_invoice
    monkeypatch.setattr(pdf, "render_invoice", lambda *args: threads.append(threading.get_ident()) or render(*args))
    world.invoices.get_invoice_pdf(order["id"])
    assert threads and threads[0] != threading.get_ident()


@pytest.mark.parametrize("number", ["INV-2026-000001", "nope", "INV-2026-000001\x00", "%" * 300])
def test_an_unknown_number_is_not_found(world, number):
    with pytest.raises(NotFound):
        world.invoices.get_invoice(number)


def test_lists_page_newest_first_with_a_cursor(world):
    for _ in range(5):
        world.ship(shipped_order())
    first = world.invoices.list_invoices(limit=2)
    second = world.invoices.list_invoices(limit=2, cursor=first["next_cursor"])
    third = world.invoices.list_invoices(limit=2, cursor=second["next_cursor"])
    numbers = [i["number"][-6:] for page in (first, second, third) for i in page["items"]]
    assert numbers == ["000005", "000004", "000003", "000002", "000001"] and third["next_cursor"] is None
    with pytest.raises(ValidationFailed):
        world.invoices.list_invoices(cursor="bm9wZQ")
    with pytest.raises(ValidationFailed):
        world.invoices.list_invoices({"issued_after": "yesterday"})
