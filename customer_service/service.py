"""customer_service: Nameko entrypoints only; rules in domain, SQL in storage."""
from nameko_sqlalchemy import Database

from common.auth import ADMIN, SERVICE, CallerProvider, required
from common.consumers import reliable_event_handler
from common.context import RequestId
from common.db import ENGINE_OPTIONS, make_psycopg2_green, single_statement, transaction
from common.entrypoints import configure_nameko, rpc
from common.errors import EXPECTED_ERRORS, NotFound
from common.log import RequestLogContext
from common.outbox import OutboxRelay
from common.paging import created_id_key, decode_cursor, parse_created_id_key, split_page
from common.schemas import CustomerInput, CustomerPatch, CustomerSchema, ListQuery, load_or_raise, uuid_or_none
from customer_service import domain, storage

make_psycopg2_green()
configure_nameko()

customer_schema = CustomerSchema()


class CustomerService:
    name = "customer_service"

    db = Database(storage.CustomersBase, engine_options=ENGINE_OPTIONS)
    outbox = storage.outbox
    outbox_relay = OutboxRelay(storage.outbox)
    request_id = RequestId()
    log_context = RequestLogContext()
    caller = CallerProvider()

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def create_customer(self, data):
        required(self.caller).require(ADMIN, SERVICE)
        fields = domain.normalize(load_or_raise(CustomerInput, data))
        with transaction(self.db) as session:
            customer = customer_schema.dump(storage.insert_customer(session, fields))
            self.outbox.add(session, "customer_created", customer, self.request_id)
        self.outbox_relay.wake()
        return customer

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def update_customer(self, customer_id, data):
        caller = required(self.caller)
        changes = domain.normalize(load_or_raise(CustomerPatch, data))
        with transaction(self.db) as session:
            customer = self._customer(session, caller, customer_id, lock=True)
            updated = customer_schema.dump(storage.update_customer(session, customer, changes))
            self.outbox.add(session, "customer_updated", updated, self.request_id)
        self.outbox_relay.wake()
        return updated

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_customer(self, customer_id):
        caller = required(self.caller)
        with transaction(self.db) as session:
            return customer_schema.dump(self._customer(session, caller, customer_id))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_customers(self, customer_ids):
        """The customers among `customer_ids` that exist; unknown ids are left out."""
        caller = required(self.caller)
        parsed = [p for p in map(uuid_or_none, customer_ids) if p and caller.owns(p)]
        with transaction(self.db) as session:
            return customer_schema.dump(storage.get_customers(session, parsed), many=True)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def list_customers(self, limit=20, cursor=None):
        """Oldest first; a customer sees only their own record."""
        caller = required(self.caller)
        query = load_or_raise(ListQuery, {"limit": limit, "cursor": cursor})
        after = decode_cursor(query["cursor"], parse_created_id_key)
        only_id = uuid_or_none(caller.customer_id) if caller.is_customer else None
        with transaction(self.db) as session:
            rows = storage.list_customers(session, query["limit"] + 1, after, only_id)
            page, next_cursor = split_page(rows, query["limit"], created_id_key)
            return {"items": customer_schema.dump(page, many=True), "next_cursor": next_cursor}

    @reliable_event_handler("order_service", "order_created")
    def on_order_created(self, envelope):
        """Count the customer's orders, once per event however often it is delivered."""
        order = envelope["data"]
        with single_statement(self.db) as session:
            storage.count_order_once(session, envelope["event_id"], "count_order",
                                     uuid_or_none(order["customer_id"]))

    @rpc
    def health(self):
        with transaction(self.db) as session:
            storage.ping(session)
        return {"service": self.name, "database": "ok"}

    def _customer(self, session, caller, customer_id, lock=False):
        """The customer, or NotFound: also for another customer's record, so ids cannot be probed."""
        parsed = uuid_or_none(customer_id)
        visible = parsed is not None and caller.owns(parsed)
        customer = storage.get_customer(session, parsed, lock=lock) if visible else None
        if customer is None:
            raise NotFound("No such customer.", {"id": str(customer_id)})
        return customer
