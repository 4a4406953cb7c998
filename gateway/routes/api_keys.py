"""/api/v1/api-keys: keys for machine clients (X-API-Key), kept by customer_service; admins only."""
import uuid

from flask import current_app, jsonify

from common.contract.errors import Forbidden, NotFound, UnknownCustomer
from common.contract.schemas.api_keys import ApiKeyInput
from common.contract.schemas.base import ListQuery
from gateway.calls import read, write
from gateway.http import page_args
from gateway.routes.declare import API, routes


@routes.post(f"{API}/api-keys", tag="api-keys", status=201, response="ApiKeyCreated", body=ApiKeyInput,
             errors=(Forbidden, UnknownCustomer))
def create_api_key(body):
    key_id = str(uuid.uuid4())  # fixed before the call, so a 504 can name it
    api_key = write({"api_key_id": key_id}, "customer_service", "create_api_key", body, attempt_id=key_id)
    return jsonify(api_key), 201


@routes.get(f"{API}/api-keys", tag="api-keys", response="ApiKeyPage", query=ListQuery, errors=(Forbidden,))
def list_api_keys(query):
    limit, cursor = page_args(query)
    return jsonify(read("customer_service", "list_api_keys", limit, cursor))


@routes.delete(f"{API}/api-keys/<key_id>", tag="api-keys", status=204, errors=(Forbidden, NotFound))
def revoke_api_key(key_id):
    write({"api_key_id": key_id}, "customer_service", "revoke_api_key", key_id)
    current_app.extensions["api_keys"].forget(key_id)  # here at once; other gateways within the cache period
    return "", 204
