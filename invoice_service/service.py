"""invoice_service: Nameko entrypoints only; rules in domain, queries in storage, the PDF layout in pdf.

An invoice is issued when an order becomes `shipped` (order_service's
order_status_changed event). What the invoice needs from elsewhere is fetched
first, outside any transaction: the customer (local directory fed by customer
events, else customer_service) and the product names (inventory_service).
Then one unit of work records the event as handled, takes the year's next
number, writes the invoice and its invoice_issued event, and commits; any
failure rolls all of it back, number included, and the reliable handler
retries the event.
"""
import base64
import logging
import uuid

from eventlet import tpool

from common.contract.caller import required
from common.contract.errors import EXPECTED_ERRORS, InvoiceNotIssued, NotFound
from common.contract.schemas.base import uuid_or_none
from common.contract.schemas.invoices import InvoiceListQuery, InvoiceSchema
from common.kit.base import ServiceBase
from common.kit.consumers import reliable_event_handler
from common.kit.customer_directory import KeepsCustomerDirectory
from common.kit.paging import Listing
from common.kit.rpc import ServiceRpcProxy, rpc
from common.kit.unit_of_work import UnitOfWork
from invoice_service import domain, pdf, storage

log = logging.getLogger(__name__)
invoice_schema = InvoiceSchema()
INVOICES = Listing(InvoiceListQuery, InvoiceSchema, key_of=lambda invoice: invoice["number"],
                   parse_key=domain.parse_number_cursor, own_only=True)


class InvoiceService(KeepsCustomerDirectory, ServiceBase):
    name = "invoice_service"

    uow = UnitOfWork(storage.layout)
    customer_rpc = ServiceRpcProxy("customer_service")
    inventory_rpc = ServiceRpcProxy("inventory_service")

    @reliable_event_handler("order_service", "order_status_changed")
    def on_order_status_changed(self, envelope):
        """Issue the invoice of an order that became shipped, once however often the event comes."""
        order = envelope["data"]
        if not domain.is_shipped(order):
            return
        order_id, customer_id = uuid.UUID(order["id"]), uuid.UUID(order["customer_id"])
        with self.uow.single_statement() as store:
            if store.has_invoice_for_order(order_id):
                return  # a redelivery: nothing to fetch, nothing to do
            known = store.known_customer(customer_id)
        # Fetched before the transaction: the year's counter stays locked only while writing.
        customer = (domain.customer_from_directory(known) if known is not None
                    else self.customer_rpc.get_customer(str(customer_id)))
        products = self.inventory_rpc.get_products(sorted({item["sku"] for item in order["items"]}))
        names = {product["sku"]: product["name"] for product in products}
        seller = domain.seller(self.settings.seller_name, self.settings.seller_address, self.settings.seller_tax_id)
        with self.uow as tx:
            if not tx.first_time(envelope["event_id"], "issue_invoice"):
                return
            year, sequence, issued_at = tx.store.take_number()
            domain.check_issue_year(year, issued_at)
            invoice = domain.build_invoice(domain.invoice_number(year, sequence), issued_at, order, customer,
                                           names, seller, self.settings.tax_rate)
            tx.store.insert_invoice(year, sequence, invoice)
            tx.emit("invoice_issued", invoice_schema.dump(invoice))
        log.info("issued invoice %s for order %s", invoice["number"], order_id)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_invoice_for_order(self, order_id):
        """The order's invoice; InvoiceNotIssued (404) before it ships, and for another
        customer's order or no such order, so order ids cannot be probed."""
        return self._invoice_for_order(order_id)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_invoice_pdf(self, order_id):
        """The order's invoice as an A4 PDF: {"number", "pdf": base64 of the bytes}; the same
        InvoiceNotIssued as get_invoice_for_order."""
        invoice = self._invoice_for_order(order_id)
        cjk_font = pdf.cjk_font()  # here, not in the pool's thread: it may log
        # In a native thread: a layout of a second or so would otherwise stall every worker on this hub.
        content = tpool.execute(pdf.render_invoice, invoice, cjk_font)
        return {"number": invoice["number"], "pdf": base64.b64encode(content).decode("ascii")}

    def _invoice_for_order(self, order_id):
        caller = required(self.caller)
        parsed = uuid_or_none(order_id)
        with self.uow.single_statement() as store:
            invoice = store.invoice_for_order(parsed) if parsed else None
        if invoice is None or not caller.owns(invoice["customer_id"]):
            raise InvoiceNotIssued("This order has no invoice (yet): one is issued when it ships.",
                                   {"order_id": str(order_id)})
        return invoice_schema.dump(invoice)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_invoice(self, number):
        """One invoice by number; NotFound also for another customer's."""
        caller = required(self.caller)
        with self.uow.single_statement() as store:
            invoice = store.invoice_by_number(number) if domain.is_invoice_number(number) else None
        if invoice is None or not caller.owns(invoice["customer_id"]):
            raise NotFound("No such invoice.", {"number": str(number)})
        return invoice_schema.dump(invoice)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def list_invoices(self, filters=None, limit=20, cursor=None):
        """Newest first. filters: customer_id, issued_after, issued_before (exclusive).

        A customer lists only their own invoices.
        """
        return INVOICES.page(required(self.caller), self.uow, filters, limit, cursor,
                             lambda store, query, count, after: store.list_invoices(query, count, after))
