"""customer_service: Nameko entrypoints only; rules in domain, SQL in storage."""
from nameko.events import EventDispatcher
from nameko.rpc import rpc
from nameko_sqlalchemy import Database

from common.context import RequestId
from common.db import ENGINE_OPTIONS, make_psycopg2_green, transaction
from common.errors import EXPECTED_ERRORS, NotFound
from common.events import emit_after_commit
from common.paging import decode_cursor, split_page
from common.schemas import CustomerInput, CustomerSchema, ListQuery, load_or_raise
from customer_service import domain, storage

make_psycopg2_green()

customer_schema = CustomerSchema()


class CustomerService:
    name = "customer_service"

    db = Database(storage.CustomersBase, engine_options=ENGINE_OPTIONS)
    dispatch = EventDispatcher()
    request_id = RequestId()

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def create_customer(self, data):
        fields = domain.normalize_new_customer(load_or_raise(CustomerInput(), data))
        with transaction(self.db) as session:
            customer = customer_schema.dump(storage.insert_customer(session, fields))
        emit_after_commit(self.dispatch, "customer_created", customer, self.request_id)
        return customer

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_customer(self, customer_id):
        parsed = domain.parse_customer_id(customer_id)
        with transaction(self.db) as session:
            customer = storage.get_customer(session, parsed) if parsed else None
            if customer is None:
                raise NotFound("No such customer.", {"id": str(customer_id)})
            return customer_schema.dump(customer)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_customers(self, customer_ids):
        """The customers among `customer_ids` that exist; unknown ids are left out."""
        parsed = [p for p in map(domain.parse_customer_id, customer_ids) if p]
        with transaction(self.db) as session:
            return customer_schema.dump(storage.get_customers(session, parsed), many=True)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def list_customers(self, limit=20, cursor=None):
        query = load_or_raise(ListQuery(), {"limit": limit, "cursor": cursor})
        after = decode_cursor(query["cursor"], domain.parse_list_key)
        with transaction(self.db) as session:
            rows = storage.list_customers(session, query["limit"] + 1, after)
            page, next_cursor = split_page(rows, query["limit"], domain.list_key)
            return {"items": customer_schema.dump(page, many=True), "next_cursor": next_cursor}

    @rpc
    def health(self):
        with transaction(self.db) as session:
            storage.ping(session)
        return {"service": self.name, "database": "ok"}
