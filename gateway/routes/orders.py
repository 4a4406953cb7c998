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
from gateway.calls import read, write
from gateway.http import expected_version, order_response
from gateway.routes.declare import API, routes


@routes.post(f"{API}/orders", "Place an order", tag="orders", status=201, response="Order", body=OrderInput,
             headers=("Idempotency-Key",), etag=True, location=True,
             errors=(Forbidden, InsufficientStock, UnknownCustomer, UnknownSku, Unprocessable,
                     IdempotencyKeyReused),
             description="Reserves stock for every item or none (409 `insufficient_stock`), at the prices in force "
                         "now; a client-sent `unit_price` / `total_amount` is ignored. Without `shipping_address` "
                         "the customer's default is copied. A customer may order only for themself (403).")
def create_order(body):
    key = request.headers.get("Idempotency-Key")
    # The attempt id becomes the order's id: fixed before the call, so a 504 can name it, and a
    # second run of this call (a redelivery, or a re-drive after a lost reply) finds the first order.
    order_id = str(uuid.uuid4())
    order = write({"order_id": order_id}, "order_service", "create_order", body, idempotency_key=key,
                  attempt_id=order_id, redrive=True)
    response = order_response(order, 201)
    response.headers["Location"] = f"{API}/orders/{order['id']}"
    return response


@routes.get(f"{API}/orders", "List orders, newest first", tag="orders", response="OrderPage", query=OrderListQuery,
            description="`created_after` / `created_before` are exclusive; a time without an offset is UTC. "
                        "A customer lists only their own orders.")
def list_orders(query):
    limit, cursor = query.pop("limit", 20), query.pop("cursor", None)
    # What is left of the query are the filters.
    return jsonify(read("order_service", "list_orders", query, int(limit), cursor))


@routes.get(f"{API}/orders/<order_id>", "Read an order", tag="orders", response="Order", errors=(NotFound,),
            etag=True, description="The ETag is the order's `version`; send it back in `If-Match`.")
def get_order(order_id):
    return order_response(read("order_service", "get_order", order_id))


@routes.put(f"{API}/orders/<order_id>", "Replace the items and/or shipping address of a pending order",
            tag="orders", response="Order", body=OrderUpdateInput, headers=("If-Match",), etag=True,
            errors=(NotFound, InvalidTransition, InsufficientStock, VersionConflict, UnknownSku, Unprocessable),
            description="New items are re-reserved all-or-nothing and the whole order is re-priced at current "
                        "prices; if they cannot be reserved (409) the old items stand. Only while `pending`.")
def update_order(order_id, body):
    version = expected_version()
    return order_response(write({"order_id": order_id}, "order_service", "update_order", order_id, body, version))


@routes.put(f"{API}/orders/<order_id>/shipping", "Set shipping address, carrier and/or tracking number",
            tag="orders", response="Order", body=ShippingInput, headers=("If-Match",), etag=True,
            errors=(Forbidden, NotFound, InvalidTransition, VersionConflict),
            description="Admins only; while `pending` or `processing`. Fields not sent are kept.")
def update_shipping(order_id, body):
    version = expected_version()
    return order_response(write({"order_id": order_id}, "order_service", "update_shipping", order_id, body,
                                version))


@routes.put(f"{API}/orders/<order_id>/status", "Move an order along its status machine", tag="orders",
            response="Order", body=StatusInput, headers=("If-Match",), etag=True,
            errors=(Forbidden, NotFound, InvalidTransition, VersionConflict),
            description="Only `pending -> processing -> shipped -> delivered` and `pending|processing -> "
                        "cancelled` (409 otherwise, naming the allowed next ones). `shipped` needs a carrier and "
                        "tracking number and turns the reservation into a stock decrement; `cancelled` releases "
                        "it. Customers may only cancel (403).")
def update_status(order_id, body):
    version = expected_version()
    return order_response(write({"order_id": order_id}, "order_service", "update_status", order_id, body,
                                version))


@routes.delete(f"{API}/orders/<order_id>", "Delete a pending or cancelled order", tag="orders", status=204,
               headers=("If-Match",), errors=(Forbidden, NotFound, InvalidTransition, VersionConflict),
               description="Admins only. Releases the reservation and removes the order with its history.")
def delete_order(order_id):
    version = expected_version()
    write({"order_id": order_id}, "order_service", "delete_order", order_id, version)
    return "", 204


@routes.get(f"{API}/orders/<order_id>/history", "Every status change of an order", tag="orders",
            response="OrderHistory", errors=(NotFound,))
def order_history(order_id):
    return jsonify(read("order_service", "order_history", order_id))
