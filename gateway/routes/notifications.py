"""/api/v1/notifications: the messages (email, SMS, push) sent about orders and stock, and sending a failed
one again; /api/v1/push/vapid-public-key: the key front ends subscribe to Web Push with."""
from flask import jsonify

from common.contract.errors import Forbidden, InvalidTransition, NotFound, ServiceUnavailable, UpstreamTimeout
from common.contract.schemas.notifications import NotificationListQuery
from gateway.calls import GATEWAY_CALLER, read, write
from gateway.http import filtered_page_args
from gateway.routes.declare import API, routes


@routes.get(f"{API}/notifications", tag="notifications", response="NotificationPage", query=NotificationListQuery)
def list_notifications(query):
    filters, limit, cursor = filtered_page_args(query)
    return jsonify(read("notification_service", "list_notifications", filters, limit, cursor))


@routes.get(f"{API}/notifications/<notification_id>", tag="notifications", response="Notification",
            errors=(NotFound,))
def get_notification(notification_id):
    return jsonify(read("notification_service", "get_notification", notification_id))


@routes.post(f"{API}/notifications/<notification_id>/retry", tag="notifications", status=202,
             response="Notification", errors=(Forbidden, NotFound, InvalidTransition))
def retry_notification(notification_id):
    return jsonify(write({"notification_id": notification_id}, "notification_service", "retry_notification",
                         notification_id)), 202


VAPID_PUBLIC_KEY = {"type": "object", "required": ["public_key"], "additionalProperties": False, "properties": {
    "public_key": {"type": "string", "pattern": "^[A-Za-z0-9_-]{87}$",
                   "description": "The VAPID public key (base64url, an uncompressed P-256 point): the "
                                  "`applicationServerKey` of `pushManager.subscribe`."}}}


@routes.get(f"{API}/push/vapid-public-key", tag="notifications", response=VAPID_PUBLIC_KEY, public=True,
            errors=(NotFound, ServiceUnavailable, UpstreamTimeout))
def vapid_public_key():
    # No token here: the gateway asks as itself (every RPC carries a signed caller).
    key = read("notification_service", "push_public_key", as_caller=GATEWAY_CALLER)["public_key"]
    if key is None:
        raise NotFound("Web Push is not configured (VAPID_PRIVATE_KEY).", {"setting": "VAPID_PRIVATE_KEY"})
    return jsonify({"public_key": key})
