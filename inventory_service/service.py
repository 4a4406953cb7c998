"""inventory_service: Nameko entrypoints only; rules in domain, queries in storage.

reserve / replace_reservation / release / commit are idempotent per order id
and each runs in one unit of work with its stock_* events; product_created
and product_updated come from the product's own writes, stock_low and
stock_back from any change that takes a product's available stock across
its threshold or back from 0.

stock_reservation_failed: a create refused for stock reserves nothing, so
its event is the refusal's own record: reserve (a batch of one) and
reserve_many give up the refused order's claim and write its outbox row in
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
        """reserve for each {order_id, items, request_id?, traceparent?} in one transaction, in
        turn, so one order's shortage or unknown sku fails that order alone; each order's
        outcome, in order: {"reservation": view} or {"error": {...}, "kind": ...}."""
        required(self.caller).require(ADMIN, SERVICE)
        traceparents = [wanted.get("traceparent") for wanted in reservations]
        with tracing.entry_spans("inventory_service.reserve", traceparents) as own:
            return self._reserve_all([{**wanted, "traceparent": traceparent}
                                      for wanted, traceparent in zip(reservations, own)])

    def _reserve_all(self, reservations):
        outcomes, planned, repeats = [None] * len(reservations), {}, []
        for position, wanted in enumerate(reservations):
            try:
                order_uuid, plan = domain.reservation_plan(wanted.get("order_id"), wanted.get("items"))
            except DomainError as error:
                outcomes[position] = to_outcome(error)
                continue
            if order_uuid in planned:  # an order twice in a batch: its first entry's outcome
                repeats.append((position, planned[order_uuid][0]))
            else:
                planned[order_uuid] = (position, wanted, plan)
        if planned:
            with self.uow as tx:
                self._reserve_planned(tx, planned, outcomes)
        for position, first in repeats:
            outcomes[position] = outcomes[first]
        return outcomes

    def _reserve_planned(self, tx, planned, outcomes):
        """Claim and lock in one statement, take in Python (domain.allocate) and write it all
        in one more: two round trips for a batch of any size."""
        at = datetime.now(timezone.utc)
        claimed, products = tx.store.claim_and_lock(
            list(planned), [sku for _, _, plan in planned.values() for sku, _ in plan], at)
        for order_uuid in planned.keys() - claimed:
            existing = tx.store.get_reservation(order_uuid)
            outcomes[planned[order_uuid][0]] = {"reservation": domain.reservation_view(
                existing, tx.store.reservation_items(order_uuid))}
        new = [(order_uuid, *planned[order_uuid]) for order_uuid in planned if order_uuid in claimed]
        taken, given_up, events = [], [], []
        allocations = domain.allocate([plan for *_, plan in new], products, at)
        for (order_uuid, position, wanted, plan), allocation in zip(new, allocations):
            if isinstance(allocation, domain.Taken):
                view = domain.new_reservation_view(order_uuid, allocation.lines)
                taken.append((order_uuid, allocation.lines))
                events += [tx.event_row(*event, request_id=wanted.get("request_id"),
                                        traceparent=wanted.get("traceparent"))
                           for event in [self._stock_event("stock_reserved", view, allocation.changed),
                                         *self._stock_level_events(allocation.changed)]]
                outcomes[position] = {"reservation": view}
                continue
            log.warning("(expected) no reservation for order %s: %s", order_uuid, allocation,
                        extra={"request_id": wanted.get("request_id")})
            given_up.append(order_uuid)
            if isinstance(allocation, InsufficientStock):
                events.append(self._refusal_row(tx, wanted, order_uuid, plan, allocation))
            outcomes[position] = to_outcome(allocation)
        tx.store.record_reservations(taken, given_up, events,
                                     [refusal_event_id(order_uuid) for order_uuid, _ in taken], at)

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

    def _refusal_row(self, tx, wanted, order_uuid, plan, refusal):
        """The outbox row of the attempt's stock_reservation_failed, due at its deadline,
        written with the batch (whose transaction commits: this order's claim is given up)."""
        deadline = self.context_data.get(DEADLINE_KEY)
        due = (datetime.fromtimestamp(float(deadline), timezone.utc) if deadline is not None
               else datetime.now(timezone.utc) + timedelta(seconds=self.settings.order_create_deadline_seconds))
        row = tx.event_row("stock_reservation_failed", domain.refusal_event(order_uuid, plan, refusal),
                           request_id=wanted.get("request_id"), traceparent=wanted.get("traceparent"))
        return {**row, "event_id": refusal_event_id(order_uuid), "next_attempt_at": due}

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
