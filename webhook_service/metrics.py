"""webhook_service's own metrics, beside those every service reports (common/observability/metrics.py).

- webhook_deliveries_total{outcome}: deliveries that ended, `delivered` or `failed`
- webhook_delivery_attempts_total{result}: every attempt, by `2xx`, `3xx`, `4xx`, `5xx` or
  `no_answer` (refused, unreachable, timed out)
- webhook_deliveries_pending, webhook_oldest_pending_seconds: pending deliveries of enabled
  webhooks and the age of the oldest, read when scraped (storage.PENDING, a
  common/observability/metrics.py Backlog)
- webhook_bound_event_types: how many event types this process last bound to its queues (those
  some webhook wants; the others never reach it, see bindings.py)
"""
from prometheus_client import Counter, Gauge

DELIVERIES = Counter("webhook_deliveries", "Webhook deliveries that ended, by outcome", ["service", "outcome"])
ATTEMPTS = Counter("webhook_delivery_attempts", "Attempts to deliver to a webhook, by result", ["service", "result"])
BOUND_EVENT_TYPES = Gauge("webhook_bound_event_types", "Event types routed to webhook_service (some webhook wants them)",
                          ["service"])


def attempt_result(status_code):
    return "no_answer" if status_code is None else f"{status_code // 100}xx"
