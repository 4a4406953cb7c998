"""inventory_service: Nameko entrypoints only; rules in domain, SQL in storage.

reserve / replace_reservation / release / commit are idempotent per order id
and each runs in one transaction with its stock_* events in the outbox.
"""
import logging
import os
from datetime import datetime, timedelta, timezone

from nameko.exceptions import UnknownService
from nameko.timer import timer
from nameko_sqlalchemy import Database

from common.auth import ADMIN, SERVICE, CallerProvider, ServiceRpcProxy, required
from common.context import RequestId
from common.db import ENGINE_OPTIONS, make_psycopg2_green, transaction
from common.entrypoints import configure_nameko, rpc
from common.errors import EXPECTED_ERRORS, NotFound, UpstreamTimeout
from common.log import RequestLogContext
from common.outbox import OutboxRelay
from common.paging import decode_cursor, split_page
from common.schemas import ListQuery, ProductInput, ProductPatch, ProductSchema, load_or_raise
from inventory_service import domain, storage

make_psycopg2_green()
configure_nameko()

log = logging.getLogger(__name__)
RECONCILE_INTERVAL_SECONDS = float(os.environ.get("RECONCILE_INTERVAL_SECONDS", "30"))
# Longer than order_service's ORDER_CREATE_DEADLINE_SECONDS: an order still being
# created can never lose its reservation to the reconciler.
RESERVATION_GRACE = timedelta(seconds=float(os.environ.get("RESERVATION_GRACE_SECONDS", "120")))

product_schema = ProductSchema()


class InventoryService:
    name = "inventory_service"

    db = Database(storage.InventoryBase, engine_options=ENGINE_OPTIONS)
    outbox = storage.outbox
    outbox_relay = OutboxRelay(storage.outbox)
    request_id = RequestId()
    log_context = RequestLogContext()
    caller = CallerProvider()
    order_rpc = ServiceRpcProxy("order_service")

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def create_product(self, data):
        required(self.caller).require(ADMIN)
        fields = load_or_raise(ProductInput, data)
        with transaction(self.db) as session:
            return product_schema.dump(storage.insert_product(session, fields))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def update_product(self, sku, data):
        """Change price, name, description, threshold or stock (never below reserved)."""
        required(self.caller).require(ADMIN)
        changes = load_or_raise(ProductPatch, data)
        with transaction(self.db) as session:
            product = self._product(session, sku, lock=True)
            domain.check_stock_covers_reserved(product, changes)
            before = (product.available, product.low_stock_threshold)
            product = storage.update_product(session, product, changes)
            self._record_low_stock(session, [(product, *before)])
            updated = product_schema.dump(product)
        self.outbox_relay.wake()
        return updated

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_product(self, sku):
        required(self.caller)
        with transaction(self.db) as session:
            return product_schema.dump(self._product(session, sku))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_products(self, skus):
        """The products among `skus` that exist, in sku order; unknown skus are left out."""
        required(self.caller)
        with transaction(self.db) as session:
            skus = [str(sku) for sku in skus if domain.is_sku(sku)]
            return product_schema.dump(storage.get_products(session, skus), many=True)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def list_products(self, limit=20, cursor=None):
        """By sku."""
        required(self.caller)
        query = load_or_raise(ListQuery, {"limit": limit, "cursor": cursor})
        after_sku = decode_cursor(query["cursor"], domain.parse_sku)
        with transaction(self.db) as session:
            rows = storage.list_products(session, query["limit"] + 1, after_sku)
            page, next_cursor = split_page(rows, query["limit"], lambda product: product.sku)
            return {"items": product_schema.dump(page, many=True), "next_cursor": next_cursor}

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def reserve(self, order_id, items):
        """Reserve every item for `order_id`, or none; the reserved lines with their prices.

        Idempotent per order_id: a repeated call returns the first reservation.
        """
        required(self.caller).require(ADMIN, SERVICE)
        order_uuid, plan = domain.reservation_plan(order_id, items)
        with transaction(self.db) as session:
            taken = storage.claim_and_take_stock(session, order_uuid, plan)
            if taken is None:
                existing = storage.get_reservation(session, order_uuid)
                return domain.reservation_view(existing, storage.reservation_items(session, order_uuid))
            not_taken = domain.first_not_taken(plan, taken)
            if not_taken is not None:
                raise self._shortage(session, plan, not_taken)
            lines = [(taken[sku], quantity) for sku, quantity in plan]
            changed = [(product, product.available + quantity, product.low_stock_threshold)
                       for product, quantity in lines]
            view = domain.new_reservation_view(order_uuid, lines)
            events = [self._stock_event("stock_reserved", view, changed), *self._low_stock_events(changed)]
            storage.record_reservation(session, order_uuid, lines, [self.outbox.row(**event) for event in events])
        self.outbox_relay.wake()
        return view

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def replace_reservation(self, order_id, items):
        """Make the order's reservation exactly `items`, all-or-nothing, at current prices.

        If the new items cannot be reserved the old reservation stands.
        """
        required(self.caller).require(ADMIN, SERVICE)
        order_uuid, plan = domain.reservation_plan(order_id, items)
        with transaction(self.db) as session:
            reservation = self._reservation(session, order_uuid)
            domain.check_can_replace(reservation)
            skus = [sku for sku, _ in plan]
            domain.check_all_known(plan, {product.sku for product in storage.get_products(session, skus)})
            old_items = storage.reservation_items(session, order_uuid)
            held = {item.sku: item.quantity for item in old_items}
            changed = []
            for sku, delta in domain.replacement_deltas(old_items, plan):
                if delta > 0:
                    product = self._take(session, plan, sku, delta, already_held=held)
                else:
                    product = storage.give_back_stock(session, sku, -delta)
                changed.append((product, product.available + delta, product.low_stock_threshold))
            products = {product.sku: product for product in storage.get_products(session, skus)}
            storage.replace_reservation_items(session, order_uuid, [(products[sku], qty) for sku, qty in plan])
            view = self._view(session, order_uuid)
            self._record_stock_event(session, "stock_reserved", view, changed)
            self._record_low_stock(session, changed)
        self.outbox_relay.wake()
        return view

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def release(self, order_id):
        """Give the order's reserved stock back. Idempotent per order_id."""
        required(self.caller).require(ADMIN, SERVICE)
        return self._settle(order_id, "released", domain.check_can_release,
                            storage.give_back_stock, "stock_released")

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def commit(self, order_id):
        """Make the order's reservation a permanent stock decrement. Idempotent per order_id."""
        required(self.caller).require(ADMIN, SERVICE)
        return self._settle(order_id, "committed", domain.check_can_commit,
                            storage.commit_stock, "stock_committed")

    @timer(interval=RECONCILE_INTERVAL_SECONDS)
    def reconcile_reservations(self):
        """Settle reservations whose order is gone, never committed, or already moved on.

        Covers an order_service that died between reserve and commit, and a
        release or commit that failed after the order changed.
        """
        with transaction(self.db) as session:
            stale = storage.stale_reservations(session, datetime.now(timezone.utc) - RESERVATION_GRACE, 200)
            order_ids = [str(reservation.order_id) for reservation in stale]
            storage.mark_checked(session, stale)
        if not order_ids:
            return
        try:
            states = self.order_rpc.order_states(order_ids)
        except UnknownService:
            log.warning("reconciler: order_service is not running; will retry")
            return
        except UpstreamTimeout:
            log.warning("reconciler: order_service did not answer in time; will retry")
            return
        for order_id in order_ids:
            action = domain.reconcile_action(states.get(order_id))
            if action == "release":
                self._settle(order_id, "released", domain.check_can_release, storage.give_back_stock,
                             "stock_released")
            elif action == "commit":
                self._settle(order_id, "committed", domain.check_can_commit, storage.commit_stock,
                             "stock_committed")
            if action:
                log.info("reconciler: %s reservation of order %s (order: %s)", action, order_id,
                         states.get(order_id, "missing"))

    @rpc
    def health(self):
        with transaction(self.db) as session:
            storage.ping(session)
        return {"service": self.name, "database": "ok"}

    # -- helpers (no entrypoints) ------------------------------------------

    def _settle(self, order_id, final_status, check_allowed, apply_to_stock, event_type):
        order_uuid = domain.parse_order_id(order_id)
        with transaction(self.db) as session:
            reservation = self._reservation(session, order_uuid)
            items = storage.reservation_items(session, order_uuid)
            if reservation.status != final_status:
                check_allowed(reservation)
                # Neither releasing nor committing lowers available stock: no stock_low here.
                changed = [(apply_to_stock(session, item.sku, item.quantity), None, None) for item in items]
                storage.set_reservation_status(session, reservation, final_status)
                self._record_stock_event(session, event_type, domain.reservation_view(reservation, items),
                                         changed)
            view = domain.reservation_view(reservation, items)
        self.outbox_relay.wake()
        return view

    def _take(self, session, plan, sku, quantity, already_held=None):
        product = storage.take_stock(session, sku, quantity)
        if product is None:
            raise self._shortage(session, plan, sku, already_held)
        return product

    def _shortage(self, session, plan, failed_sku, already_held=None):
        """The error for a reservation that could not take `failed_sku`: UnknownSku
        if any sku names no product, else InsufficientStock. The transaction rolls
        back whole, so nothing stays reserved."""
        skus = [sku for sku, _ in plan]
        domain.check_all_known(plan, {known.sku for known in storage.get_products(session, skus)})
        available = storage.available_stock(session, skus)
        for held_sku, held in (already_held or {}).items():
            available[held_sku] = available.get(held_sku, 0) + held
        return domain.shortage(plan, failed_sku, available)

    def _record_stock_event(self, session, event_type, view, changed):
        self.outbox.add(session, **self._stock_event(event_type, view, changed))

    def _record_low_stock(self, session, changed):
        for event in self._low_stock_events(changed):
            self.outbox.add(session, **event)

    def _stock_event(self, event_type, view, changed):
        """A stock_reserved/released/committed event with the products after the change."""
        products = product_schema.dump([product for product, _, _ in changed], many=True)
        return {"event_type": event_type, "data": domain.stock_event(view, products), "request_id": self.request_id}

    def _low_stock_events(self, changed):
        """stock_low for each changed product that just fell below its threshold."""
        return [{"event_type": "stock_low", "data": product_schema.dump(product), "request_id": self.request_id}
                for product, available_before, threshold_before in changed
                if domain.fell_below_threshold(available_before, threshold_before, product)]

    def _view(self, session, order_uuid):
        return domain.reservation_view(storage.get_reservation(session, order_uuid),
                                       storage.reservation_items(session, order_uuid))

    def _reservation(self, session, order_uuid):
        reservation = storage.get_reservation(session, order_uuid, lock=True)
        if reservation is None:
            raise NotFound("No reservation for this order.", {"order_id": str(order_uuid)})
        return reservation

    def _product(self, session, sku, lock=False):
        # A string that cannot be a sku names no product (and never reaches SQL).
        product = storage.get_product(session, str(sku), lock=lock) if domain.is_sku(sku) else None
        if product is None:
            raise NotFound("No such product.", {"sku": str(sku)})
        return product
