"""The event envelope every service emits (see the contract's Events section)."""
import uuid
from datetime import datetime, timezone


def make_envelope(event_type, data, request_id=None):
    return {
        "event_id": str(uuid.uuid4()),
        "type": event_type,
        "occurred_at": datetime.now(timezone.utc).isoformat(),
        "request_id": request_id,
        "data": data,
    }


# Every event of the contract, by the service that emits it (on its exchange `<service>.events`).
EVENTS_BY_SERVICE = {
    "order_service": ("order_created", "order_updated", "order_status_changed", "order_deleted",
                      "order_processing", "order_shipped", "order_delivered", "order_cancelled"),
    "inventory_service": ("stock_reserved", "stock_released", "stock_committed", "stock_low", "stock_back",
                          "product_created", "product_updated", "stock_reservation_failed"),
    "customer_service": ("customer_created", "customer_updated"),
    "notification_service": ("notification_sent", "notification_failed"),
    "invoice_service": ("invoice_issued",),
    "webhook_service": ("webhook_disabled",),
}
# What a webhook can subscribe to: every event but webhook_service's own (a hook that is being
# disabled could not hear of it, and the others would hear of each other's troubles).
WEBHOOK_EVENTS = {service: types for service, types in EVENTS_BY_SERVICE.items() if service != "webhook_service"}
WEBHOOK_EVENT_TYPES = tuple(event_type for types in WEBHOOK_EVENTS.values() for event_type in types)
