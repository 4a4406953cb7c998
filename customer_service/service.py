"""customer_service: Nameko entrypoints only; rules in domain, queries in storage.

Every change to a customer, its phone, notification preferences and Web Push
subscriptions included, emits customer_created / customer_updated with the
whole customer (and the subscriptions' keys), which is how the other services'
customer directories learn where to reach them.
"""
import socket
from datetime import datetime, timezone

from common.contract.caller import ADMIN, SERVICE, required
from common.contract.errors import EXPECTED_ERRORS, NotFound
from common.contract.schemas.base import ListQuery, id_of_attempt, load_or_raise, uuid_or_none
from common.contract.schemas.customers import (
    CustomerEventSchema,
    CustomerInput,
    CustomerPatch,
    CustomerSchema,
    PushSubscriptionInput,
    PushSubscriptionSchema,
)
from common.kit.base import ServiceBase
from common.kit.consumers import reliable_event_handler
from common.kit.paging import Listing
from common.kit.rpc import rpc
from common.kit.unit_of_work import UnitOfWork
from customer_service import domain, storage

customer_schema = CustomerSchema()
event_schema = CustomerEventSchema()
subscription_schema = PushSubscriptionSchema()
CUSTOMERS = Listing(ListQuery, CustomerSchema)


def _now():
    return datetime.now(timezone.utc)


class CustomerService(ServiceBase):
    name = "customer_service"

    uow = UnitOfWork(storage.layout)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def create_customer(self, data, attempt_id=None):
        """A new customer; attempt_id (the gateway sends one per HTTP request)
        becomes its id, and a second run of the same attempt returns the first."""
        required(self.caller).require(ADMIN, SERVICE)
        fields = domain.normalize(load_or_raise(CustomerInput, data))
        customer_id = id_of_attempt(attempt_id)
        with self.uow as tx:
            if attempt_id is not None:
                tx.store.lock_customer_id(customer_id)
                made_before = tx.store.get_customer(customer_id)
                if made_before is not None:
                    return customer_schema.dump(made_before)
            customer = tx.store.insert_customer(customer_id, fields, _now())
            tx.emit("customer_created", event_schema.dump(customer))
            return customer_schema.dump(customer)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def update_customer(self, customer_id, data):
        caller = required(self.caller)
        changes = load_or_raise(CustomerPatch, data)
        with self.uow as tx:
            customer = self._customer(tx.store, caller, customer_id, lock=True)
            changes = domain.normalize(changes, customer.notification_preferences)
            updated = tx.store.update_customer(customer, changes, _now())
            tx.emit("customer_updated", event_schema.dump(updated))
            return customer_schema.dump(updated)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def add_push_subscription(self, customer_id, data):
        """Register a browser's PushSubscription for the customer (the customer or an admin); the same
        endpoint again replaces its keys and keeps its id. Its endpoint follows the webhooks' URL rules."""
        caller = required(self.caller)
        subscription = load_or_raise(PushSubscriptionInput, data)
        domain.check_push_endpoint(subscription["endpoint"], _addresses(subscription["endpoint"]),
                                   self.settings.webhook_allow_hosts)
        with self.uow as tx:
            customer = self._customer(tx.store, caller, customer_id, lock=True)
            saved = tx.store.save_push_subscription(customer, subscription["endpoint"], subscription["keys"], _now())
            tx.emit("customer_updated", event_schema.dump(customer))
            return subscription_schema.dump(saved)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def remove_push_subscription(self, customer_id, subscription_id):
        """Remove a push subscription (the customer, an admin, or notification_service when the push
        service answered that it is gone)."""
        caller = required(self.caller)
        with self.uow as tx:
            customer = self._customer(tx.store, caller, customer_id, lock=True)
            parsed = uuid_or_none(subscription_id)
            if parsed is None or not tx.store.remove_push_subscription(customer, parsed, _now()):
                raise NotFound("No such push subscription.", {"id": str(subscription_id)})
            tx.emit("customer_updated", event_schema.dump(customer))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_customer(self, customer_id):
        caller = required(self.caller)
        with self.uow as tx:
            return customer_schema.dump(self._customer(tx.store, caller, customer_id))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_customer_with_contacts(self, customer_id):
        """The customer as its events carry it (push subscriptions with their keys): for the services
        that keep a directory and missed its events (admins and services only)."""
        caller = required(self.caller)
        caller.require(ADMIN, SERVICE)
        with self.uow as tx:
            return event_schema.dump(self._customer(tx.store, caller, customer_id))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_customers(self, customer_ids):
        """The customers among `customer_ids` that exist; unknown ids are left out."""
        caller = required(self.caller)
        parsed = [p for p in map(uuid_or_none, customer_ids) if p and caller.owns(p)]
        with self.uow as tx:
            return customer_schema.dump(tx.store.get_customers(parsed), many=True)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def list_customers(self, limit=20, cursor=None):
        """Oldest first; a customer sees only their own record."""
        caller = required(self.caller)
        only_id = uuid_or_none(caller.customer_id) if caller.is_customer else None
        return CUSTOMERS.page(caller, self.uow, None, limit, cursor,
                              lambda store, _, count, after: store.list_customers(count, after, only_id))

    @reliable_event_handler("order_service", "order_created")
    def on_order_created(self, envelope):
        """Count the customer's orders, once per event however often it is delivered."""
        order = envelope["data"]
        with self.uow.single_statement() as store:
            store.count_order_once(envelope["event_id"], "count_order", uuid_or_none(order["customer_id"]))

    def _customer(self, store, caller, customer_id, lock=False):
        """The customer, or NotFound: also for another customer's record, so ids cannot be probed."""
        parsed = uuid_or_none(customer_id)
        visible = parsed is not None and caller.owns(parsed)
        customer = store.get_customer(parsed, lock=lock) if visible else None
        if customer is None:
            raise NotFound("No such customer.", {"id": str(customer_id)})
        return customer


def _addresses(url):
    """The addresses the endpoint's host resolves to (none if it does not)."""
    _, host, port = domain.endpoint_host(url)
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
    except (socket.gaierror, UnicodeError):
        return []
