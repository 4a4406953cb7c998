"""inventory_service: Nameko entrypoints only; rules in domain, queries in storage.

reserve / replace_reservation / release / commit are idempotent per order id
and each runs in one unit of work with its stock_* events; product_created
and product_updated come from the product's own writes, stock_low and
stock_back from any change that takes a product's available stock across
its threshold or back from 0.

stock_reservation_failed: a create refused for stock reserves nothing, so
its event is the refusal's own record: reserve (a batch of one) and
reserve_many undo the refused order's savepoint and write its outbox row in
the batch's transaction, which commits, as the outbox row of the attempt
(the order id: its event id is derived from it, so a second refusal of the
same attempt writes nothing more), due only at the attempt's deadline (the
caller's, from the context data; without one, ORDER_CREATE_DEADLINE_SECONDS
from now, past which order_service abandons a create). Until then a run of
the same attempt may still succeed (a re-drive after FailureNotRecorded):
its successful reserve deletes the unsent row in the reserve's own
transaction. No run can commit past the deadline, so when the row falls due
the attempt's outcome is settled: the event leaves once per refused attempt
and never for one that succeeded. Should the refusal's row not be written
(the database went away), the answer is that error (503), not the refusal:
a refusal the client hears of always has its event.
"""
import logging
import uuid
from datetime import datetime, timedelta, timezone

from common.contract.caller import ADMIN, SERVICE, required
from common.contract.context import DEADLINE_KEY
from common.contract.errors import (
    EXPECTED_ERRORS,
    DomainError,
    InsufficientStock,
    NotFound,
    ServiceUnavailable,
    UpstreamTimeout,
    from_outcome,
    to_outcome,
)
from common.contract.schemas.base import ListQuery, load_or_raise
from common.contract.schemas.products import ProductInput, ProductPatch, ProductSchema
from common.kit.base import ServiceBase
from common.kit.paging import Listing
from common.kit.providers import ContextData
from common.kit.rpc import ServiceRpcProxy, rpc
from common.kit.timers import every
from common.kit.unit_of_work import UnitOfWork
from common.observability import tracing
from inventory_service import domain, storage

log = logging.getLogger(__name__)

product_schema = ProductSchema()
PRODUCTS = Listing(ListQuery, ProductSchema, key_of=lambda product: product.sku, parse_key=domain.parse_sku)
# How each way of ending a reservation is checked, applied to stock, and announced.
SETTLEMENTS = {
    "released": (domain.check_can_release, "give_back_stock", "stock_released"),
    "committed": (domain.check_can_commit, "commit_stock", "stock_committed"),
}
SETTLEMENT_OF_ACTION = {"release": "released", "commit": "committed"}
# The event id of an attempt's stock_reservation_failed: one per order id.
REFUSAL_EVENTS = uuid.UUID("6f1d7c52-1b0e-4d5a-9a43-3c8e2f7b9d10")


def refusal_event_id(order_uuid):
    return uuid.uuid5(REFUSAL_EVENTS, str(order_uuid))


class InventoryService(ServiceBase):
    name = "inventory_service"

    uow = UnitOfWork(storage.layout)
    order_rpc = ServiceRpcProxy("order_service")
    context_data = ContextData()

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def create_product(self, data):
        required(self.caller).require(ADMIN)
        fields = load_or_raise(ProductInput, data)
        with self.uow as tx:
            product = product_schema.dump(tx.store.insert_product(fields))
            tx.emit("product_created", product)
            return product

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def update_product(self, sku, data):
        """Change price, name, description, threshold or stock (never below reserved)."""
        required(self.caller).require(ADMIN)
        changes = load_or_raise(ProductPatch, data)
        with self.uow as tx:
            product = self._product(tx.store, sku, lock=True)
            product.check_stock_change(changes)
            before = (product.available, product.low_stock_threshold)
            product = tx.store.update_product(product, changes)
            updated = product_schema.dump(product)
            tx.emit("product_updated", updated)
            self._emit_stock_levels(tx, [(product, *before)])
            return updated

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_product(self, sku):
        required(self.caller)
        with self.uow as tx:
            return product_schema.dump(self._product(tx.store, sku))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_products(self, skus):
        """The products among `skus` that exist, in sku order; unknown skus are left out."""
        required(self.caller)
        with self.uow as tx:
            skus = [str(sku) for sku in skus if domain.is_sku(sku)]
            return product_schema.dump(tx.store.get_products(skus), many=True)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def list_products(self, limit=20, cursor=None):
        """By sku."""
        return PRODUCTS.page(required(self.caller), self.uow, None, limit, cursor,
                             lambda store, _, count, after: store.list_products(count, after))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def reserve(self, order_id, items):
        """Reserve every item for `order_id`, or none; the reserved lines with their prices.

        Idempotent per order_id: a repeated call returns the first reservation.
        A reserve_many of one.
        """
        required(self.caller).require(ADMIN, SERVICE)
        [outcome] = self._reserve_all([{"order_id": order_id, "items": items}])
        if "reservation" in outcome:
            return outcome["reservation"]
        raise from_outcome(outcome)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def reserve_many(self, reservations):
        """reserve for each {order_id, items, request_id?, traceparent?} in one transaction, a
        savepoint each, so one order's shortage or unknown sku fails that order alone; each
        order's outcome, in order: {"reservation": view} or {"error": {...}, "kind": ...}."""
        required(self.caller).require(ADMIN, SERVICE)
        traceparents = [wanted.get("traceparent") for wanted in reservations]
        with tracing.entry_spans("inventory_service.reserve", traceparents) as own:
            return self._reserve_all([{**wanted, "traceparent": traceparent}
                                      for wanted, traceparent in zip(reservations, own)])

    def _reserve_all(self, reservations):
        outcomes, plans = [None] * len(reservations), []
        for position, wanted in enumerate(reservations):
            try:
                plans.append((position, wanted, *domain.reservation_plan(wanted.get("order_id"), wanted.get("items"))))
            except DomainError as error:
                outcomes[position] = to_outcome(error)
        if plans:
            with self.uow as tx:
                if len(plans) > 1:
                    tx.store.lock_products([sku for *_, plan in plans for sku, _ in plan])
                for position, wanted, order_uuid, plan in plans:
                    outcomes[position] = self._reserve_one(tx, wanted, order_uuid, plan)
        return outcomes

    def _reserve_one(self, tx, wanted, order_uuid, plan):
        try:
            with tx.savepoint():  # a shortage undoes this order's takes alone
                return {"reservation": self._take(tx, wanted, order_uuid, plan)}
        except _NotTaken as short:
            try:
                refusal = self._shortage(tx.store, plan, short.sku)
            except DomainError as unknown_sku:
                refusal = unknown_sku
            log.warning("(expected) no reservation for order %s: %s", order_uuid, refusal,
                        extra={"request_id": wanted.get("request_id")})
            if isinstance(refusal, InsufficientStock):
                self._record_refusal(tx, wanted, order_uuid, plan, refusal)
            return to_outcome(refusal)

    def _take(self, tx, wanted, order_uuid, plan):
        taken = tx.store.claim_and_take_stock(order_uuid, plan)
        if taken is None:
            existing = tx.store.get_reservation(order_uuid)
            return domain.reservation_view(existing, tx.store.reservation_items(order_uuid))
        not_taken = domain.first_not_taken(plan, taken)
        if not_taken is not None:
            raise _NotTaken(not_taken)
        lines = [(taken[sku], quantity) for sku, quantity in plan]
        changed = [(product, product.available + quantity, product.low_stock_threshold)
                   for product, quantity in lines]
        view = domain.new_reservation_view(order_uuid, lines)
        events = [self._stock_event("stock_reserved", view, changed), *self._stock_level_events(changed)]
        tx.store.record_reservation(order_uuid, lines, [
            tx.event_row(*event, request_id=wanted.get("request_id"), traceparent=wanted.get("traceparent"))
            for event in events], refusal_event_id(order_uuid))
        return view

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def replace_reservation(self, order_id, items):
        """Make the order's reservation exactly `items`, all-or-nothing, at current prices.

        If the new items cannot be reserved the old reservation stands.
        """
        required(self.caller).require(ADMIN, SERVICE)
        order_uuid, plan = domain.reservation_plan(order_id, items)
        with self.uow as tx:
            store = tx.store
            reservation = self._reservation(store, order_uuid)
            domain.check_can_replace(reservation)
            skus = [sku for sku, _ in plan]
            domain.check_all_known(plan, {product.sku for product in store.get_products(skus)})
            old_items = store.reservation_items(order_uuid)
            held = {item.sku: item.quantity for item in old_items}
            changed = []
            for sku, delta in domain.replacement_deltas(old_items, plan):
                if delta > 0:
                    product = store.take_stock(sku, delta)
                    if product is None:
                        raise self._shortage(store, plan, sku, already_held=held)
                else:
                    product = store.give_back_stock(sku, -delta)
                changed.append((product, product.available + delta, product.low_stock_threshold))
            products = {product.sku: product for product in store.get_products(skus)}
            store.replace_reservation_items(order_uuid, [(products[sku], qty) for sku, qty in plan])
            view = domain.reservation_view(store.get_reservation(order_uuid), store.reservation_items(order_uuid))
            tx.emit(*self._stock_event("stock_reserved", view, changed))
            self._emit_stock_levels(tx, changed)
            return view

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def release(self, order_id):
        """Give the order's reserved stock back. Idempotent per order_id."""
        required(self.caller).require(ADMIN, SERVICE)
        return self._settle(order_id, "released")

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def commit(self, order_id):
        """Make the order's reservation a permanent stock decrement. Idempotent per order_id."""
        required(self.caller).require(ADMIN, SERVICE)
        return self._settle(order_id, "committed")

    @every("reconcile_interval_seconds")
    def reconcile_reservations(self):
        """Settle reservations whose order is gone, never committed, or already moved on.

        Covers an order_service that died between reserve and commit, and a
        release or commit that failed after the order changed.
        """
        grace = timedelta(seconds=self.settings.reservation_grace_seconds)
        with self.uow as tx:
            stale = tx.store.stale_reservations(datetime.now(timezone.utc) - grace, 200)
            order_ids = [str(reservation.order_id) for reservation in stale]
            tx.store.mark_checked(stale)
        if not order_ids:
            return
        try:
            states = self.order_rpc.order_states(order_ids)
        except (ServiceUnavailable, UpstreamTimeout) as exc:
            log.warning("reconciler: order_service did not answer (%s); will retry", exc)
            return
        for order_id in order_ids:
            action = domain.reconcile_action(states.get(order_id))
            if action:
                self._settle(order_id, SETTLEMENT_OF_ACTION[action])
                log.info("reconciler: %s reservation of order %s (order: %s)", action, order_id,
                         states.get(order_id, "missing"))

    # -- helpers (no entrypoints) ------------------------------------------

    def _settle(self, order_id, final_status):
        check_allowed, apply_to_stock, event_type = SETTLEMENTS[final_status]
        order_uuid = domain.parse_order_id(order_id)
        with self.uow as tx:
            reservation = self._reservation(tx.store, order_uuid)
            items = tx.store.reservation_items(order_uuid)
            if reservation.status != final_status:
                check_allowed(reservation)
                changed = [domain.settled(getattr(tx.store, apply_to_stock)(item.sku, item.quantity), item.quantity,
                                          final_status) for item in items]
                tx.store.set_reservation_status(reservation, final_status)
                tx.emit(*self._stock_event(event_type, domain.reservation_view(reservation, items), changed))
                self._emit_stock_levels(tx, changed)
            return domain.reservation_view(reservation, items)

    def _record_refusal(self, tx, wanted, order_uuid, plan, refusal):
        """The attempt's stock_reservation_failed, due at its deadline, written with the batch
        (whose transaction commits: only this order's savepoint was undone)."""
        deadline = self.context_data.get(DEADLINE_KEY)
        due = (datetime.fromtimestamp(float(deadline), timezone.utc) if deadline is not None
               else datetime.now(timezone.utc) + timedelta(seconds=self.settings.order_create_deadline_seconds))
        row = tx.event_row("stock_reservation_failed", domain.refusal_event(order_uuid, plan, refusal),
                           request_id=wanted.get("request_id"), traceparent=wanted.get("traceparent"))
        tx.store.record_refusal({**row, "event_id": refusal_event_id(order_uuid), "next_attempt_at": due})

    def _shortage(self, store, plan, failed_sku, already_held=None):
        """The error for a reservation that could not take `failed_sku` (raised: UnknownSku
        if any sku names no product; returned: InsufficientStock), read once what the
        reservation took is undone, so nothing stays reserved."""
        skus = [sku for sku, _ in plan]
        domain.check_all_known(plan, {known.sku for known in store.get_products(skus)})
        available = store.available_stock(skus)
        for held_sku, held in (already_held or {}).items():
            available[held_sku] = available.get(held_sku, 0) + held
        return domain.shortage(plan, failed_sku, available)

    def _emit_stock_levels(self, tx, changed):
        for event in self._stock_level_events(changed):
            tx.emit(*event)

    @staticmethod
    def _stock_event(event_type, view, changed):
        """(type, data) of a stock_reserved/released/committed event, with the products after the change."""
        products = product_schema.dump([product for product, _, _ in changed], many=True)
        return event_type, domain.stock_event(view, products)

    @staticmethod
    def _stock_level_events(changed):
        """(type, data) of stock_low for each changed product that just fell below its threshold,
        and of stock_back for each whose available stock just came back from 0."""
        events = []
        for product, available_before, threshold_before in changed:
            if product.fell_below_threshold(available_before, threshold_before):
                events.append(("stock_low", product_schema.dump(product)))
            if product.came_back(available_before):
                events.append(("stock_back", product_schema.dump(product)))
        return events

    def _reservation(self, store, order_uuid):
        reservation = store.get_reservation(order_uuid, lock=True)
        if reservation is None:
            raise NotFound("No reservation for this order.", {"order_id": str(order_uuid)})
        return reservation

    def _product(self, store, sku, lock=False):
        # A string that cannot be a sku names no product (and never reaches SQL).
        product = store.get_product(str(sku), lock=lock) if domain.is_sku(sku) else None
        if product is None:
            raise NotFound("No such product.", {"sku": str(sku)})
        return product


class _NotTaken(Exception):
    """A reservation could not take `sku` (too little stock, or no such product)."""

    def __init__(self, sku):
        super().__init__(sku)
        self.sku = sku
