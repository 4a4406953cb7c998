"""Invoices: the one an order has once it ships (JSON or PDF), and all of them by number."""
import base64

from flask import Response, jsonify, request

from common.contract.errors import InvoiceNotIssued, NotFound
from common.contract.schemas.invoices import InvoiceListQuery
from gateway.calls import read
from gateway.http import filtered_page_args
from gateway.routes.declare import API, routes

JSON, PDF = "application/json", "application/pdf"


@routes.get(f"{API}/orders/<order_id>/invoice", tag="invoices", response="Invoice",
            other_media_types={PDF: {"type": "string", "format": "binary"}}, errors=(InvoiceNotIssued,))
def get_order_invoice(order_id):
    if request.accept_mimetypes.best_match([JSON, PDF], default=JSON) == PDF:
        document = read("invoice_service", "get_invoice_pdf", order_id)  # laid out by the invoice service
        response = Response(base64.b64decode(document["pdf"]), mimetype=PDF)
        response.headers["Content-Disposition"] = f'inline; filename="{document["number"]}.pdf"'
    else:
        response = jsonify(read("invoice_service", "get_invoice_for_order", order_id))
    response.vary.add("Accept")
    return response


@routes.get(f"{API}/invoices", tag="invoices", response="InvoicePage", query=InvoiceListQuery)
def list_invoices(query):
    filters, limit, cursor = filtered_page_args(query)
    return jsonify(read("invoice_service", "list_invoices", filters, limit, cursor))


@routes.get(f"{API}/invoices/<number>", tag="invoices", response="Invoice", errors=(NotFound,))
def get_invoice(number):
    return jsonify(read("invoice_service", "get_invoice", number))
