"""/api/v1/notifications: the emails customers get about their orders, and sending a failed one again."""
from flask import jsonify

from common.contract.errors import Forbidden, InvalidTransition, NotFound
from common.contract.schemas.notifications import NotificationListQuery
from gateway.calls import read, write
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
