"""/api/v1/orders: placing orders, changing them (If-Match), their status machine and history."""
import uuid

from flask import jsonify, request

from common.contract.errors import (
    Forbidden,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidTransition,
    NotFound,
    UnknownCustomer,
    UnknownSku,
    Unprocessable,
    VersionConflict,
)
from common.contract.schemas.orders import OrderInput, OrderListQuery, OrderUpdateInput, ShippingInput, StatusInput
from gateway import calls
from gateway.calls import read, write
from gateway.http import expected_version, filtered_page_args, order_response
from gateway.routes.declare import API, routes


@routes.post(f"{API}/orders", tag="orders", status=201, response="Order", body=OrderInput,
             headers=("Idempotency-Key",), etag=True, location=True,
             errors=(Forbidden, InsufficientStock, UnknownCustomer, UnknownSku, Unprocessable,
                     IdempotencyKeyReused))
def create_order(body):
    key = request.headers.get("Idempotency-Key")
    # The attempt id becomes the order's id: fixed before the call, so a 504 can name it, and a
    # second run of this call (a redelivery, or a re-drive after a lost reply) finds the first order.
    order_id = str(uuid.uuid4())
    order = calls.create_order(body, key, order_id)
    response = order_response(order, 201)
    response.headers["Location"] = f"{API}/orders/{order['id']}"
    return response


@routes.get(f"{API}/orders", tag="orders", response="OrderPage", query=OrderListQuery)
def list_orders(query):
    filters, limit, cursor = filtered_page_args(query)
    return jsonify(read("order_service", "list_orders", filters, limit, cursor))


@routes.get(f"{API}/orders/<order_id>", tag="orders", response="Order", errors=(NotFound,), etag=True)
def get_order(order_id):
    return order_response(read("order_service", "get_order", order_id))


@routes.put(f"{API}/orders/<order_id>", tag="orders", response="Order", body=OrderUpdateInput,
            headers=("If-Match",), etag=True,
            errors=(NotFound, InvalidTransition, InsufficientStock, VersionConflict, UnknownSku, Unprocessable))
def update_order(order_id, body):
    return order_response(_change("update_order", order_id, body, expected_version()))


@routes.put(f"{API}/orders/<order_id>/shipping", tag="orders", response="Order", body=ShippingInput,
            headers=("If-Match",), etag=True, errors=(Forbidden, NotFound, InvalidTransition, VersionConflict))
def update_shipping(order_id, body):
    return order_response(_change("update_shipping", order_id, body, expected_version()))


@routes.put(f"{API}/orders/<order_id>/status", tag="orders", response="Order", body=StatusInput,
            headers=("If-Match",), etag=True, errors=(Forbidden, NotFound, InvalidTransition, VersionConflict))
def update_status(order_id, body):
    return order_response(_change("update_status", order_id, body, expected_version()))


@routes.delete(f"{API}/orders/<order_id>", tag="orders", status=204, headers=("If-Match",),
               errors=(Forbidden, NotFound, InvalidTransition, VersionConflict))
def delete_order(order_id):
    _change("delete_order", order_id, expected_version())
    return "", 204


@routes.get(f"{API}/orders/<order_id>/history", tag="orders", response="OrderHistory", errors=(NotFound,))
def order_history(order_id):
    return jsonify(read("order_service", "order_history", order_id))


def _change(method, order_id, *args):
    """order_service.method(order_id, *args) as one attempt with an id of its own: every run
    of it (a redelivery, a send again after a lost reply) gives the first run's answer, so
    it is sent again while the deadline allows, and a 503 stays not done."""
    return write({"order_id": order_id}, "order_service", method, order_id, *args, attempt_id=str(uuid.uuid4()),
                 redrive=True)
