"""order_service: Nameko entrypoints only; rules in domain, SQL in storage."""
import logging
import uuid

from nameko.events import EventDispatcher
from nameko.rpc import RpcProxy, rpc
from nameko_sqlalchemy import Database

from common.context import RequestId
from common.db import ENGINE_OPTIONS, make_psycopg2_green, transaction
from common.errors import EXPECTED_ERRORS, NotFound, UnknownCustomer
from common.events import emit_after_commit
from common.schemas import OrderInput, OrderSchema, load_or_raise
from order_service import domain, storage

make_psycopg2_green()

log = logging.getLogger(__name__)
order_schema = OrderSchema()


class OrderService:
    name = "order_service"

    db = Database(storage.OrdersBase, engine_options=ENGINE_OPTIONS)
    dispatch = EventDispatcher()
    request_id = RequestId()
    customer_rpc = RpcProxy("customer_service")
    inventory_rpc = RpcProxy("inventory_service")

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def create_order(self, data):
        """Check the customer, reserve stock at current prices, persist, emit order_created."""
        order_input = load_or_raise(OrderInput(), data)
        lines = domain.merge_lines(order_input["items"])
        try:
            customer = self.customer_rpc.get_customer(str(order_input["customer_id"]))
        except NotFound:
            raise UnknownCustomer("No such customer.", {"customer_id": str(order_input["customer_id"])}) from None

        order_id = uuid.uuid4()
        reservation = self.inventory_rpc.reserve(str(order_id), lines)
        try:
            order_row, item_rows = domain.price_order(
                order_id, customer, lines, reservation, order_input.get("shipping_address"))
            with transaction(self.db) as session:
                order = order_schema.dump(storage.insert_order(session, order_row, item_rows))
        except BaseException:
            self._release_quietly(order_id)
            raise
        emit_after_commit(self.dispatch, "order_created", order, self.request_id)
        return order

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_order(self, order_id):
        parsed = domain.parse_order_id(order_id)
        with transaction(self.db) as session:
            order = storage.get_order(session, parsed) if parsed else None
            if order is None:
                raise NotFound("No such order.", {"id": str(order_id)})
            return order_schema.dump(order)

    @rpc
    def health(self):
        with transaction(self.db) as session:
            storage.ping(session)
        return {"service": self.name, "database": "ok"}

    def _release_quietly(self, order_id):
        # Compensation for a reservation whose order was not persisted.
        try:
            self.inventory_rpc.release(str(order_id))
        except Exception:
            log.exception("could not release the reservation of unsaved order %s", order_id)

