"""/api/v1/customers: customers with a unique email, a default shipping address, a phone, the channels
they hear about their orders on, and their browsers' Web Push subscriptions."""
import uuid

from flask import jsonify

from common.contract.errors import AlreadyExists, Forbidden, NotFound
from common.contract.schemas.base import ListQuery
from common.contract.schemas.customers import CustomerInput, CustomerPatch, PushSubscriptionInput
from gateway.calls import read, write
from gateway.http import created, page_args
from gateway.routes.declare import API, routes


@routes.post(f"{API}/customers", tag="customers", status=201, response="Customer", body=CustomerInput,
             errors=(Forbidden, AlreadyExists), location=True)
def create_customer(body):
    customer_id = str(uuid.uuid4())  # fixed before the call, so a 504 can name it
    customer = write({"customer_id": customer_id}, "customer_service", "create_customer", body,
                     attempt_id=customer_id)
    return created(customer, f"{API}/customers/{customer['id']}")


@routes.get(f"{API}/customers/<customer_id>", tag="customers", response="Customer", errors=(NotFound,))
def get_customer(customer_id):
    return jsonify(read("customer_service", "get_customer", customer_id))


@routes.get(f"{API}/customers", tag="customers", response="CustomerPage", query=ListQuery)
def list_customers(query):
    limit, cursor = page_args(query)
    return jsonify(read("customer_service", "list_customers", limit, cursor))


@routes.patch(f"{API}/customers/<customer_id>", tag="customers", response="Customer", body=CustomerPatch,
              errors=(NotFound, AlreadyExists))
def update_customer(customer_id, body):
    return jsonify(write({"customer_id": customer_id}, "customer_service", "update_customer", customer_id, body))


@routes.post(f"{API}/customers/<customer_id>/push-subscriptions", tag="customers", status=201,
             response="PushSubscription", body=PushSubscriptionInput, errors=(NotFound,))
def add_push_subscription(customer_id, body):
    return jsonify(write({"customer_id": customer_id}, "customer_service", "add_push_subscription", customer_id,
                         body)), 201


@routes.delete(f"{API}/customers/<customer_id>/push-subscriptions/<subscription_id>", tag="customers", status=204,
               errors=(NotFound,))
def remove_push_subscription(customer_id, subscription_id):
    write({"customer_id": customer_id, "subscription_id": subscription_id}, "customer_service",
          "remove_push_subscription", customer_id, subscription_id)
    return "", 204
