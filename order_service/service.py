"""order_service: Nameko entrypoints only; rules in domain, SQL in storage.

Every change to an order runs in one orders-database transaction that holds
the order's row lock; the inventory call it needs (reserve, replace, release,
commit: all idempotent per order) happens inside it, and the event is written
to the outbox in it. So a failure anywhere leaves no half-made change here,
and what inventory did is undone (release / replace back) when the order
transaction does not commit.
"""
import logging
import time
import uuid
from datetime import datetime, timedelta, timezone

from nameko.timer import timer
from nameko_sqlalchemy import Database

from common.auth import ADMIN, SERVICE, CallerProvider, ServiceRpcProxy, required
from common.consumers import first_time, reliable_event_handler
from common.context import RequestId
from common.db import ENGINE_OPTIONS, make_psycopg2_green, single_statement, transaction
from common.entrypoints import configure_nameko, rpc
from common.errors import EXPECTED_ERRORS, NotFound, UnknownCustomer
from common.log import RequestLogContext
from common.outbox import OutboxRelay
from common.paging import created_id_key, decode_cursor, parse_created_id_key, split_page
from common.schemas import (OrderInput, OrderListQuery, OrderSchema, OrderUpdateInput, ShippingInput,
                            StatusChangeSchema, StatusInput, load_or_raise, uuid_or_none)
from order_service import domain, storage

make_psycopg2_green()
configure_nameko()

log = logging.getLogger(__name__)
order_schema = OrderSchema()
history_schema = StatusChangeSchema(many=True)


def _now():
    return datetime.now(timezone.utc)


class OrderService:
    name = "order_service"

    db = Database(storage.OrdersBase, engine_options=ENGINE_OPTIONS)
    outbox = storage.outbox
    outbox_relay = OutboxRelay(storage.outbox)
    request_id = RequestId()
    log_context = RequestLogContext()
    caller = CallerProvider()
    customer_rpc = ServiceRpcProxy("customer_service")
    inventory_rpc = ServiceRpcProxy("inventory_service")

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def create_order(self, data, idempotency_key=None, attempt_id=None):
        """Check the customer, reserve stock at current prices, persist, emit order_created.

        With an idempotency key, a repeat of the same body returns the first
        order again and creates nothing; a different body is refused.
        attempt_id (the gateway sets one per HTTP request) does the same for
        a redelivery of this very call.
        """
        caller = required(self.caller)
        order_input = load_or_raise(OrderInput, data)
        domain.check_may_order_for(caller, order_input["customer_id"])
        lines = domain.merge_lines(order_input["items"])
        # A redelivered call carries the same attempt id, hence the same order id.
        order_id = domain.new_order_id(attempt_id)
        started = time.monotonic()
        with transaction(self.db) as session:
            if attempt_id is not None:
                # Runs of one attempt (the original and a redelivery) take turns, so
                # one can never undo the reservation of the order the other made.
                storage.lock_order_id(session, order_id)
            done_before, known_customer = storage.create_context(session, order_id, order_input["customer_id"])
            if done_before:
                return order_schema.dump(domain.check_same_caller(caller, storage.get_order(session, order_id)))
            key = domain.check_idempotency_key(idempotency_key)
            if key is not None:
                fingerprint = domain.request_fingerprint(data)
                first_use = storage.claim_idempotency_key(session, key, fingerprint, order_id, _now())
                if first_use is not None:
                    return domain.replay(first_use, fingerprint)
            customer = self._existing_customer(known_customer, order_input["customer_id"])
            reservation = self.inventory_rpc.reserve(str(order_id), lines)
            try:
                domain.check_reservation_held(reservation)
                order_row, item_rows = domain.new_order(
                    order_id, customer, lines, reservation, order_input.get("shipping_address"), _now())
                order = order_schema.dump({**order_row, "items": item_rows})
                if key is not None:
                    storage.remember_response(session, key, order)
                storage.insert_new_order(session, order_row, item_rows, caller.sub,
                                         self.outbox.row("order_created", order, self.request_id))
                domain.check_create_deadline(started, time.monotonic())
            except BaseException:
                # Still under the lock, before the rollback. (Should the commit
                # itself fail, inventory's reconciler releases the reservation.)
                if reservation["status"] == "reserved":
                    self._undo(self.inventory_rpc.release, order_id)
                raise
        self.outbox_relay.wake()
        return order

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_order(self, order_id):
        caller = required(self.caller)
        parsed = uuid_or_none(order_id)
        with single_statement(self.db) as session:
            order = storage.order_view(session, parsed) if parsed else None
        if order is None or not caller.owns(order["customer_id"]):
            raise NotFound("No such order.", {"id": str(order_id)})
        return order_schema.dump(order)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def list_orders(self, filters=None, limit=20, cursor=None):
        """Newest first. filters: status, customer_id, created_after, created_before.

        A customer lists only their own orders.
        """
        caller = required(self.caller)
        query = load_or_raise(OrderListQuery, {**(filters or {}), "limit": limit, "cursor": cursor})
        after = decode_cursor(query.pop("cursor"), parse_created_id_key)
        limit = query.pop("limit")
        if not domain.restrict_to_caller(caller, query):
            return {"items": [], "next_cursor": None}
        with single_statement(self.db) as session:
            rows = storage.list_orders(session, query, limit + 1, after)
            page, next_cursor = split_page(rows, limit, created_id_key)
            return {"items": order_schema.dump(page, many=True), "next_cursor": next_cursor}

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def update_order(self, order_id, data, expected_version=None):
        """Replace items and/or the shipping address of a pending order.

        New items are re-reserved all-or-nothing and re-priced at current
        prices; if they cannot be reserved the old reservation stands.
        """
        caller = required(self.caller)
        changes = load_or_raise(OrderUpdateInput, data)
        replaced_lines = None
        try:
            with transaction(self.db) as session:
                order = self._order(session, caller, order_id, lock=True)
                domain.check_version(order, expected_version)
                domain.check_status_in(order, domain.EDITABLE, "change the items of")
                if "items" in changes:
                    old_lines = [{"sku": item.sku, "quantity": item.quantity} for item in order.items]
                    lines = domain.merge_lines(changes["items"])
                    reservation = self.inventory_rpc.replace_reservation(str(order.id), lines)
                    replaced_lines = old_lines
                    order.currency, order.total_amount, item_rows = domain.price_lines(lines, reservation)
                    storage.replace_items(session, order, item_rows)
                if "shipping_address" in changes:
                    order.shipping_address = changes["shipping_address"]
                domain.touch(order, _now())
                updated = order_schema.dump(order)
                self.outbox.add(session, "order_updated", updated, self.request_id)
        except BaseException:
            if replaced_lines is not None:
                self._undo(self.inventory_rpc.replace_reservation, order_id, replaced_lines)
            raise
        self.outbox_relay.wake()
        return updated

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def update_shipping(self, order_id, data, expected_version=None):
        """Set any of shipping_address, carrier, tracking_number before the order ships."""
        caller = required(self.caller)
        changes = load_or_raise(ShippingInput, data)
        with transaction(self.db) as session:
            order = self._order(session, caller, order_id, lock=True)
            caller.require(ADMIN, SERVICE)
            domain.check_version(order, expected_version)
            domain.check_status_in(order, domain.SHIPPING_EDITABLE, "change the shipping of")
            for field, value in changes.items():
                setattr(order, field, value)
            domain.touch(order, _now())
            updated = order_schema.dump(order)
            self.outbox.add(session, "order_updated", updated, self.request_id)
        self.outbox_relay.wake()
        return updated

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def update_status(self, order_id, data, expected_version=None):
        """Move the order along the contract's status machine.

        shipped commits the stock reservation, cancelled releases it.
        """
        caller = required(self.caller)
        new_status = load_or_raise(StatusInput, data)["status"]
        with transaction(self.db) as session:
            order = self._order(session, caller, order_id, lock=True)
            domain.check_may_set_status(caller, new_status)
            domain.check_version(order, expected_version)
            domain.check_transition(order, new_status)
            stock_action = domain.STOCK_ACTION.get(new_status)
            if stock_action:
                getattr(self.inventory_rpc, stock_action)(str(order.id))
            now = _now()
            storage.add_status_change(session, order.id, order.status, new_status, caller.sub, now)
            order.status = new_status
            domain.touch(order, now)
            updated = order_schema.dump(order)
            self.outbox.add(session, "order_status_changed", updated, self.request_id)
        self.outbox_relay.wake()
        return updated

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def delete_order(self, order_id, expected_version=None):
        """Delete a pending or cancelled order and release its stock."""
        caller = required(self.caller)
        with transaction(self.db) as session:
            order = self._order(session, caller, order_id, lock=True)
            caller.require(ADMIN, SERVICE)
            domain.check_version(order, expected_version)
            domain.check_status_in(order, domain.DELETABLE, "delete")
            deleted = order_schema.dump(order)
            self.inventory_rpc.release(str(order.id))
            storage.delete_order(session, order)
            self.outbox.add(session, "order_deleted", deleted, self.request_id)
        self.outbox_relay.wake()
        return deleted

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def order_history(self, order_id):
        """Every status change of the order, oldest first: from, to, at, by."""
        caller = required(self.caller)
        with transaction(self.db) as session:
            order = self._order(session, caller, order_id)
            return {"order_id": str(order.id),
                    "items": history_schema.dump(storage.status_history(session, order.id))}

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def order_states(self, order_ids):
        """{order id: status} for the ids that name an order (for inventory's reconciler)."""
        required(self.caller).require(ADMIN, SERVICE)
        parsed = [p for p in map(uuid_or_none, order_ids) if p]
        with transaction(self.db) as session:
            return storage.order_states(session, parsed)

    @timer(interval=3600)
    def prune_idempotency_keys(self):
        cutoff = _now() - timedelta(hours=domain.IDEMPOTENCY_RETENTION_HOURS)
        with transaction(self.db) as session:
            storage.prune_idempotency_keys(session, cutoff)

    @reliable_event_handler("customer_service", "customer_created")
    def on_customer_created(self, envelope):
        self._remember_customer(envelope)

    @reliable_event_handler("customer_service", "customer_updated")
    def on_customer_updated(self, envelope):
        self._remember_customer(envelope)

    @rpc
    def health(self):
        with transaction(self.db) as session:
            storage.ping(session)
        return {"service": self.name, "database": "ok"}

    # -- helpers (no entrypoints) ------------------------------------------

    def _order(self, session, caller, order_id, lock=False):
        """The order, or NotFound: also for another customer's order, so ids cannot be probed."""
        parsed = uuid_or_none(order_id)
        order = storage.get_order(session, parsed, lock=lock) if parsed else None
        if order is None or not caller.owns(order.customer_id):
            raise NotFound("No such order.", {"id": str(order_id)})
        return order

    def _existing_customer(self, known, customer_id):
        """The customer from the local directory (customers are never deleted, so a
        hit proves existence), else from customer_service: one RPC hop saved."""
        if known is not None:
            return domain.customer_from_directory(known)
        try:
            return self.customer_rpc.get_customer(str(customer_id))
        except NotFound:
            raise UnknownCustomer("No such customer.", {"customer_id": str(customer_id)}) from None

    def _remember_customer(self, envelope):
        customer = envelope["data"]
        with transaction(self.db) as session:
            if first_time(session, storage.ProcessedEvent, envelope["event_id"], "remember_customer"):
                storage.remember_customer(session, uuid.UUID(customer["id"]), customer.get("shipping_address"),
                                          datetime.fromisoformat(customer["updated_at"]))

    def _undo(self, inventory_call, order_id, *args):
        # Compensation when the order transaction did not commit after inventory changed.
        try:
            inventory_call(str(order_id), *args)
        except Exception:
            log.exception("could not undo the stock change of order %s", order_id)

