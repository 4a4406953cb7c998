"""GET /api/v1/orders/{id}/invoice on a bare app with a fake RPC pool: the invoice service lays out
the PDF (get_invoice_pdf), the gateway only decodes it; JSON is get_invoice_for_order."""
import base64
import time

import pytest
from flask import Flask, g

from common.contract.errors import InvoiceNotIssued
from gateway.errors import register_error_handlers
from gateway.routes import routes

PDF_BYTES = b"%PDF-1.7 an invoice"
INVOICE = {"number": "INV-2026-000042", "order_id": "o-1"}


class FakePool:
    def __init__(self):
        self.calls = []

    def call(self, service, method, args=(), kwargs=None, **options):
        self.calls.append((service, method, *args))
        if args[0] == "not-shipped":
            raise InvoiceNotIssued("This order has no invoice (yet): one is issued when it ships.",
                                   {"order_id": args[0]})
        if method == "get_invoice_pdf":
            return {"number": INVOICE["number"], "pdf": base64.b64encode(PDF_BYTES).decode("ascii")}
        return INVOICE


@pytest.fixture
def client_and_pool():
    pool = FakePool()
    app = Flask(__name__)
    app.config["RPC_TIMEOUT"] = 5
    app.extensions["rpc_pool"] = pool
    register_error_handlers(app)

    @app.before_request
    def request_context():  # what gateway.app's hooks set
        g.request_id, g.deadline, g.caller = "test", time.time() + 5, None

    routes.register(app)
    return app.test_client(), pool


def test_a_pdf_is_the_invoice_service_s_decoded(client_and_pool):
    client, pool = client_and_pool
    response = client.get("/api/v1/orders/o-1/invoice", headers={"Accept": "application/pdf"})
    assert response.status_code == 200
    assert response.data == PDF_BYTES
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.headers["Content-Disposition"] == 'inline; filename="INV-2026-000042.pdf"'
    assert response.headers["Vary"] == "Accept"
    assert pool.calls == [("invoice_service", "get_invoice_pdf", "o-1")]


@pytest.mark.parametrize("accept", ["*/*", "application/json", "application/json, application/pdf;q=0.5"])
def test_json_is_get_invoice_for_order(client_and_pool, accept):
    client, pool = client_and_pool
    response = client.get("/api/v1/orders/o-1/invoice", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.json == INVOICE and response.headers["Vary"] == "Accept"
    assert pool.calls == [("invoice_service", "get_invoice_for_order", "o-1")]


@pytest.mark.parametrize("accept", ["application/pdf", "application/json"])
def test_no_invoice_yet_is_404_in_either_type(client_and_pool, accept):
    client, _ = client_and_pool
    response = client.get("/api/v1/orders/not-shipped/invoice", headers={"Accept": accept})
    assert response.status_code == 404
    assert response.json["error"]["code"] == "invoice_not_issued"
