"""The services of the system, in one place: name, class, process, metrics port.

The gateway's health check, the metrics ports, the Procfile, docker-compose,
the bench and the tests read this list (or a test holds them to it:
tests/unit/test_registry.py), so adding a service is one entry here plus its
folder.
"""
from dataclasses import dataclass

GATEWAY = "gateway"


@dataclass(frozen=True)
class Service:
    name: str  # the Nameko service name (and its folder)
    process: str  # its name in the Procfile and in logs
    metrics_offset: int  # its Prometheus port is METRICS_PORT + this
    nice: int = 0  # off the order path: runs at a lower priority

    @property
    def module(self):
        """`package.module:Class` for `python -m common.kit.runner run`."""
        class_name = "".join(part.capitalize() for part in self.name.split("_"))
        return f"{self.name}.service:{class_name}"

    @property
    def command(self):
        """How the Procfile and docker-compose start it."""
        run = f"python -m common.kit.runner run {self.module}"
        return f"nice -n {self.nice} {run}" if self.nice else run


SERVICES = (
    Service("customer_service", "customers", 1),
    Service("inventory_service", "inventory", 2),
    Service("order_service", "orders", 3),
    Service("notification_service", "notifications", 4, nice=10),
    Service("invoice_service", "invoices", 5, nice=10),
    Service("webhook_service", "webhooks", 6, nice=10),
)
SERVICE_NAMES = tuple(service.name for service in SERVICES)
BY_NAME = {service.name: service for service in SERVICES}


def metrics_port(service_name, base_port):
    """The Prometheus port of `service_name` for METRICS_PORT `base_port` (None: off, or not a service)."""
    service = BY_NAME.get(service_name)
    if not base_port or service is None:
        return None
    return base_port + service.metrics_offset
