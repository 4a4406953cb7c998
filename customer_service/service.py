"""customer_service: Nameko entrypoints only; rules in domain, queries in storage.

It owns identity: customers, and the API keys machine clients authenticate
with. Keys live here because a customer key is bound to a customer (which
must exist, and which this service alone can check in its own schema), and
because the gateway holds no database: it asks this service which key a
digest names and keeps the answer for API_KEY_CACHE_SECONDS.

Every change to a customer, its phone, notification preferences and Web Push
subscriptions included, emits customer_created / customer_updated with the
whole customer (and the subscriptions' keys), which is how the other services'
customer directories learn where to reach them.
"""
import hmac
import socket
from datetime import datetime, timedelta, timezone

from common.contract.caller import ADMIN, SERVICE, api_key_digest, api_key_prefix, new_api_key, required
from common.contract.errors import EXPECTED_ERRORS, NotFound, Unauthenticated, UnknownCustomer
from common.contract.schemas.api_keys import ApiKeyInput, ApiKeySchema
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
from common.kit.consumers import batch_event_handler
from common.kit.paging import Listing
from common.kit.rpc import rpc
from common.kit.unit_of_work import UnitOfWork
from customer_service import domain, storage

customer_schema = CustomerSchema()
event_schema = CustomerEventSchema()
subscription_schema = PushSubscriptionSchema()
CUSTOMERS = Listing(ListQuery, CustomerSchema)
api_key_schema = ApiKeySchema()
API_KEYS = Listing(ListQuery, ApiKeySchema)


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

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def create_api_key(self, data, attempt_id=None):
        """A new key (admins only); the answer carries the key itself, which is stored only as its digest.
        A second run of the same attempt answers the key made by the first, without the secret."""
        required(self.caller).require(ADMIN)
        fields = load_or_raise(ApiKeyInput, data)
        key_id = id_of_attempt(attempt_id)
        with self.uow as tx:
            if attempt_id is not None:
                tx.store.lock_customer_id(key_id)
                made_before = tx.store.get_api_key(key_id)
                if made_before is not None:
                    return api_key_schema.dump(made_before)
            if fields.get("customer_id") and tx.store.get_customer(fields["customer_id"]) is None:
                raise UnknownCustomer("No such customer.", {"customer_id": str(fields["customer_id"])})
            key = new_api_key()
            row = tx.store.insert_api_key(key_id, fields, api_key_prefix(key), api_key_digest(key), _now())
            return {**api_key_schema.dump(row), "key": key}  # the one answer that carries the key

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def list_api_keys(self, limit=20, cursor=None):
        """Every key, revoked ones too, oldest first; never a secret (admins only)."""
        caller = required(self.caller)
        caller.require(ADMIN)
        return API_KEYS.page(caller, self.uow, None, limit, cursor,
                             lambda store, _, count, after: store.list_api_keys(count, after))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def revoke_api_key(self, key_id):
        """From now on the key is refused (gateways within API_KEY_CACHE_SECONDS); revoking twice is a no-op."""
        required(self.caller).require(ADMIN)
        parsed = uuid_or_none(key_id)
        with self.uow as tx:
            row = tx.store.get_api_key(parsed, lock=True) if parsed else None
            if row is None:
                raise NotFound("No such API key.", {"id": str(key_id)})
            if row.revoked_at is None:
                row.revoked_at = _now()
            return api_key_schema.dump(row)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def verify_api_key(self, prefix, digest):
        """Who the live key with this digest acts as: {"id", "role", "customer_id"}; Unauthenticated if none.

        A gateway asks once per key per API_KEY_CACHE_SECONDS, so last_used_at
        is written here, at most once per that period.
        """
        required(self.caller).require(SERVICE, ADMIN)
        now = _now()
        with self.uow as tx:
            candidates = tx.store.live_api_keys_with_prefix(str(prefix)[:8])
            match = next((row for row in candidates
                          if hmac.compare_digest(row.key_digest.encode(), str(digest).encode())), None)
            if match is None:
                raise Unauthenticated("The API key is not valid.", {"api_key": "unknown or revoked"})
            period = timedelta(seconds=self.settings.api_key_cache_seconds)
            tx.store.mark_api_key_used(match.id, now, now - period)
            return {"id": str(match.id), "role": match.role,
                    "customer_id": str(match.customer_id) if match.customer_id else None}

    @batch_event_handler("order_service", "order_created")
    def on_order_created(self, envelopes):
        """Count each customer's orders, once per event however often it is delivered."""
        orders = [(envelope["event_id"], uuid_or_none(envelope["data"]["customer_id"])) for envelope in envelopes]
        with self.uow.single_statement() as store:
            store.count_orders_once(orders, "count_order")

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
