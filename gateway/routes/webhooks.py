"""/api/v1/webhooks: admins subscribe URLs to events, read each webhook's delivery log and re-send a delivery."""
import uuid

from flask import jsonify

from common.contract.errors import Forbidden, InvalidTransition, NotFound
from common.contract.schemas.base import ListQuery
from common.contract.schemas.webhooks import DeliveryListQuery, WebhookInput, WebhookPatch
from gateway.calls import read, write
from gateway.http import created, filtered_page_args, page_args
from gateway.routes.declare import API, routes


@routes.post(f"{API}/webhooks", tag="webhooks", status=201, response="CreatedWebhook", body=WebhookInput,
             errors=(Forbidden,), location=True)
def create_webhook(body):
    webhook_id = str(uuid.uuid4())  # fixed before the call, so a 504 can name it
    webhook = write({"webhook_id": webhook_id}, "webhook_service", "create_webhook", body, attempt_id=webhook_id)
    return created(webhook, f"{API}/webhooks/{webhook['id']}")


@routes.get(f"{API}/webhooks", tag="webhooks", response="WebhookPage", query=ListQuery, errors=(Forbidden,))
def list_webhooks(query):
    limit, cursor = page_args(query)
    return jsonify(read("webhook_service", "list_webhooks", limit, cursor))


@routes.get(f"{API}/webhooks/<webhook_id>", tag="webhooks", response="Webhook", errors=(Forbidden, NotFound))
def get_webhook(webhook_id):
    return jsonify(read("webhook_service", "get_webhook", webhook_id))


@routes.patch(f"{API}/webhooks/<webhook_id>", tag="webhooks", response="Webhook", body=WebhookPatch,
              errors=(Forbidden, NotFound))
def update_webhook(webhook_id, body):
    return jsonify(write({"webhook_id": webhook_id}, "webhook_service", "update_webhook", webhook_id, body))


@routes.delete(f"{API}/webhooks/<webhook_id>", tag="webhooks", status=204, errors=(Forbidden, NotFound))
def delete_webhook(webhook_id):
    write({"webhook_id": webhook_id}, "webhook_service", "delete_webhook", webhook_id)
    return "", 204


@routes.get(f"{API}/webhooks/<webhook_id>/deliveries", tag="webhooks", response="DeliveryPage",
            query=DeliveryListQuery, errors=(Forbidden, NotFound))
def list_deliveries(webhook_id, query):
    filters, limit, cursor = filtered_page_args(query)
    return jsonify(read("webhook_service", "list_deliveries", webhook_id, filters, limit, cursor))


@routes.post(f"{API}/webhooks/<webhook_id>/deliveries/<delivery_id>/retry", tag="webhooks", status=202,
             response="Delivery", errors=(Forbidden, NotFound, InvalidTransition))
def retry_delivery(webhook_id, delivery_id):
    return jsonify(write({"webhook_id": webhook_id, "delivery_id": delivery_id}, "webhook_service",
                         "retry_delivery", webhook_id, delivery_id)), 202
