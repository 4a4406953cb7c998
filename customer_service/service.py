"""customer_service: Nameko entrypoints only; rules in domain, queries in storage."""
from datetime import datetime, timezone

from common.contract.caller import ADMIN, SERVICE, required
from common.contract.errors import EXPECTED_ERRORS, NotFound
from common.contract.schemas.base import ListQuery, id_of_attempt, load_or_raise, uuid_or_none
from common.contract.schemas.customers import CustomerInput, CustomerPatch, CustomerSchema
from common.kit.base import ServiceBase
from common.kit.consumers import batch_event_handler
from common.kit.paging import Listing
from common.kit.rpc import rpc
from common.kit.unit_of_work import UnitOfWork
from customer_service import domain, storage

customer_schema = CustomerSchema()
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
            customer = customer_schema.dump(tx.store.insert_customer(customer_id, fields, _now()))
            tx.emit("customer_created", customer)
            return customer

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def update_customer(self, customer_id, data):
        caller = required(self.caller)
        changes = domain.normalize(load_or_raise(CustomerPatch, data))
        with self.uow as tx:
            customer = self._customer(tx.store, caller, customer_id, lock=True)
            updated = customer_schema.dump(tx.store.update_customer(customer, changes, _now()))
            tx.emit("customer_updated", updated)
        return updated

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_customer(self, customer_id):
        caller = required(self.caller)
        with self.uow as tx:
            return customer_schema.dump(self._customer(tx.store, caller, customer_id))

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
