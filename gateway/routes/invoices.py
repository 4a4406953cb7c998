"""Invoices: the one an order has once it ships (JSON or PDF), and all of them by number."""
from flask import Response, jsonify, request

from common.contract.errors import InvoiceNotIssued, NotFound
from common.contract.schemas.invoices import InvoiceListQuery
from gateway.calls import read
from gateway.invoice_pdf import render_invoice
from gateway.routes.declare import API, routes

PDF = "application/pdf"


@routes.get(f"{API}/orders/<order_id>/invoice", tag="invoices", response="Invoice",
            other_media_types={PDF: {"type": "string", "format": "binary"}}, errors=(InvoiceNotIssued,))
def get_order_invoice(order_id):
    invoice = read("invoice_service", "get_invoice_for_order", order_id)
    if request.accept_mimetypes.best_match(["application/json", PDF], default="application/json") == PDF:
        response = Response(render_invoice(invoice), mimetype=PDF)
        response.headers["Content-Disposition"] = f'inline; filename="{invoice["number"]}.pdf"'
    else:
        response = jsonify(invoice)
    response.vary.add("Accept")
    return response


@routes.get(f"{API}/invoices", tag="invoices", response="InvoicePage", query=InvoiceListQuery)
def list_invoices(query):
    limit, cursor = query.pop("limit", 20), query.pop("cursor", None)
    return jsonify(read("invoice_service", "list_invoices", query, int(limit), cursor))


@routes.get(f"{API}/invoices/<number>", tag="invoices", response="Invoice", errors=(NotFound,))
def get_invoice(number):
    return jsonify(read("invoice_service", "get_invoice", number))
