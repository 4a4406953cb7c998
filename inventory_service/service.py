"""inventory_service: Nameko entrypoints only; rules in domain, SQL in storage."""
from nameko.events import EventDispatcher
from nameko.rpc import rpc
from nameko_sqlalchemy import Database

from common.context import RequestId
from common.db import ENGINE_OPTIONS, make_psycopg2_green, transaction
from common.errors import EXPECTED_ERRORS, NotFound
from common.paging import decode_cursor, split_page
from common.schemas import ListQuery, ProductInput, ProductSchema, load_or_raise
from inventory_service import domain, storage

make_psycopg2_green()

product_schema = ProductSchema()


class InventoryService:
    name = "inventory_service"

    db = Database(storage.InventoryBase, engine_options=ENGINE_OPTIONS)
    dispatch = EventDispatcher()
    request_id = RequestId()

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def create_product(self, data):
        fields = load_or_raise(ProductInput(), data)
        with transaction(self.db) as session:
            return product_schema.dump(storage.insert_product(session, fields))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_product(self, sku):
        with transaction(self.db) as session:
            product = storage.get_product(session, str(sku))
            if product is None:
                raise NotFound("No such product.", {"sku": str(sku)})
            return product_schema.dump(product)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_products(self, skus):
        """The products among `skus` that exist, in sku order; unknown skus are left out."""
        with transaction(self.db) as session:
            return product_schema.dump(storage.get_products(session, [str(s) for s in skus]), many=True)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def list_products(self, limit=20, cursor=None):
        query = load_or_raise(ListQuery(), {"limit": limit, "cursor": cursor})
        after_sku = decode_cursor(query["cursor"], str)
        with transaction(self.db) as session:
            rows = storage.list_products(session, query["limit"] + 1, after_sku)
            page, next_cursor = split_page(rows, query["limit"], lambda product: product.sku)
            return {"items": product_schema.dump(page, many=True), "next_cursor": next_cursor}

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def reserve(self, order_id, items):
        """Reserve every item for `order_id`, or none; the reserved lines with their prices.

        Idempotent per order_id: a repeated call returns the first reservation.
        """
        order_uuid, plan = domain.reservation_plan(order_id, items)
        with transaction(self.db) as session:
            if not storage.start_reservation(session, order_uuid):
                existing = storage.get_reservation(session, order_uuid)
                return domain.reservation_view(existing, storage.reservation_items(session, order_uuid))
            skus = [sku for sku, _ in plan]
            domain.check_all_known(plan, {product.sku for product in storage.get_products(session, skus)})
            for sku, quantity in plan:
                product = storage.take_stock(session, sku, quantity)
                if product is None:
                    # The transaction rolls back whole: nothing stays reserved.
                    raise domain.shortage(plan, sku, storage.available_stock(session, skus))
                storage.add_reservation_item(session, order_uuid, product, quantity)
            session.flush()
            reservation = storage.get_reservation(session, order_uuid)
            return domain.reservation_view(reservation, storage.reservation_items(session, order_uuid))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def release(self, order_id):
        """Give the order's reserved stock back. Idempotent per order_id."""
        return self._settle(order_id, "released", domain.check_can_release, storage.give_back_stock)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def commit(self, order_id):
        """Make the order's reservation a permanent stock decrement. Idempotent per order_id."""
        return self._settle(order_id, "committed", domain.check_can_commit, storage.commit_stock)

    def _settle(self, order_id, final_status, check_allowed, apply_to_stock):
        order_uuid = domain.parse_order_id(order_id)
        with transaction(self.db) as session:
            reservation = storage.get_reservation(session, order_uuid, lock=True)
            if reservation is None:
                raise NotFound("No reservation for this order.", {"order_id": str(order_id)})
            items = storage.reservation_items(session, order_uuid)
            if reservation.status != final_status:
                check_allowed(reservation)
                for item in items:
                    apply_to_stock(session, item.sku, item.quantity)
                storage.set_reservation_status(session, reservation, final_status)
            return domain.reservation_view(reservation, items)

    @rpc
    def health(self):
        with transaction(self.db) as session:
            storage.ping(session)
        return {"service": self.name, "database": "ok"}
