"""order_service: Nameko entrypoints only; rules in domain, queries in storage.

Every change to an order runs in one unit of work that holds the order's row
lock, with its event written to the outbox in it. The inventory call a change
needs is idempotent per order (reserve, replace, release, commit):
- reserve and replace run inside the unit of work (the order needs their
  prices); when it does not commit, they are undone (release / replace back),
- release and commit settle what a committed change decided (cancelled,
  shipped, deleted), so they run after the commit; should one fail,
  inventory's reconciler settles the reservation from the order's state.
A failure anywhere therefore leaves no half-made change here. Each change
from the gateway is an attempt with an id of its own (`_change`), as a
create is: its runs give one answer, so a change refused once stays refused.
"""
import logging
import time
import uuid
from datetime import datetime, timedelta, timezone
from functools import partial

from common.contract.caller import ADMIN, SERVICE, required
from common.contract.context import DEADLINE_KEY, REQUEST_ID_KEY
from common.contract.errors import EXPECTED_ERRORS, NotFound, ServiceUnavailable, UpstreamTimeout, error_from_dict
from common.contract.schemas.base import id_of_attempt, load_or_raise, uuid_or_none
from common.contract.schemas.orders import (
    OrderListQuery,
    OrderSchema,
    OrderUpdateInput,
    ShippingInput,
    StatusChangeSchema,
    StatusInput,
)
from common.kit.base import ServiceBase
from common.kit.consumers import reliable_event_handler
from common.kit.db import MAX_PRUNING_SECONDS, prune_in_batches
from common.kit.paging import Listing
from common.kit.providers import ContextData
from common.kit.rpc import ServiceRpcProxy, rpc
from common.kit.timers import every
from common.kit.unit_of_work import UnitOfWork
from order_service import domain, storage
from order_service.creation import Creation, answer

log = logging.getLogger(__name__)
SETTLE_ATTEMPTS, SETTLE_PAUSE_SECONDS = 3, 1.0
order_schema = OrderSchema()
ORDERS = Listing(OrderListQuery, OrderSchema, own_only=True)
history_schema = StatusChangeSchema(many=True)


def _now():
    return datetime.now(timezone.utc)


class OrderService(ServiceBase):
    name = "order_service"

    uow = UnitOfWork(storage.layout)
    customer_rpc = ServiceRpcProxy("customer_service")
    inventory_rpc = ServiceRpcProxy("inventory_service")
    context_data = ContextData()

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def create_order(self, data, idempotency_key=None, attempt_id=None):
        """Check the customer, reserve stock at current prices, persist, emit order_created.

        With an idempotency key, a repeat of the same body returns the first
        order again and creates nothing; a different body is refused.
        attempt_id (the gateway sets one per HTTP request) does the same for
        a redelivery of this very call. A batch of one (see create_orders).
        """
        caller = required(self.caller)
        entry = {"data": data, "idempotency_key": idempotency_key, "attempt_id": attempt_id,
                 "caller": caller.to_context(), "request_id": self.context_data.get(REQUEST_ID_KEY),
                 "deadline": self.context_data.get(DEADLINE_KEY), "traceparent": None}  # its worker's span is its own
        [created] = Creation(self).run([entry])
        return answer(created)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def create_orders(self, entries):
        """create_order for each entry ({data, idempotency_key, attempt_id, caller, request_id,
        deadline, traceparent}) in one transaction with one reservation call; each entry's
        outcome, in order: {"order": ...} or {"error": {code, message, details}, "kind"}.

        Only a caller that has checked each entry's own caller may send them (a
        service, or an admin at `make shell`); each entry's caller must be signed for
        that entry (common/contract/caller.py), and the entry is then checked as its caller.
        """
        required(self.caller).require(ADMIN, SERVICE)
        return [entry.outcome for entry in Creation(self, signed_entries=True).run(entries)]

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_order(self, order_id):
        caller = required(self.caller)
        parsed = uuid_or_none(order_id)
        with self.uow.single_statement() as store:
            order = store.order_view(parsed) if parsed else None
        if order is None or not caller.owns(order["customer_id"]):
            raise NotFound("No such order.", {"id": str(order_id)})
        return order_schema.dump(order)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def list_orders(self, filters=None, limit=20, cursor=None):
        """Newest first. filters: status, customer_id, created_after, created_before.

        A customer lists only their own orders.
        """
        return ORDERS.page(required(self.caller), self.uow, filters, limit, cursor,
                           lambda store, query, count, after: store.list_orders(query, count, after))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def update_order(self, order_id, data, expected_version=None, attempt_id=None):
        """Replace items and/or the shipping address of a pending order.

        New items are re-reserved all-or-nothing and re-priced at current
        prices; if they cannot be reserved the old reservation stands.
        attempt_id (the gateway sets one per HTTP request): see `_change`.
        """
        caller = required(self.caller)
        changes = load_or_raise(OrderUpdateInput, data)
        replaced_lines = None

        def edit(store):
            nonlocal replaced_lines
            order = self._order(store, caller, order_id, lock=True)
            order.check_editable(expected_version)
            lines = reservation = None
            if "items" in changes:
                lines = domain.merge_lines(changes["items"])
                # Set before the call: a reply lost on the way back may hide a replacement made.
                replaced_lines = order.lines()
                reservation = self.inventory_rpc.replace_reservation(str(order.id), lines)
            return order.edit(_now(), lines, reservation,
                              **{name: value for name, value in changes.items() if name != "items"})
        try:
            return self._change(caller, order_id, attempt_id, edit)
        except BaseException:
            if replaced_lines is not None:
                self._settle("replace_reservation", order_id, replaced_lines)
            raise

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def update_shipping(self, order_id, data, expected_version=None, attempt_id=None):
        """Set any of shipping_address, carrier, tracking_number before the order ships."""
        caller = required(self.caller)
        changes = load_or_raise(ShippingInput, data)
        return self._change(caller, order_id, attempt_id, lambda store: self._order(
            store, caller, order_id, lock=True).update_shipping(changes, caller, _now(), expected_version))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def update_status(self, order_id, data, expected_version=None, attempt_id=None):
        """Move the order along the contract's status machine, with an optional reason.

        shipped commits the stock reservation, cancelled releases it.
        """
        caller = required(self.caller)
        change = load_or_raise(StatusInput, data)
        new_status = change["status"]
        updated = self._change(caller, order_id, attempt_id, lambda store: self._order(
            store, caller, order_id, lock=True).change_status(new_status, caller, _now(), expected_version,
                                                                change.get("reason")))
        stock_action = domain.STOCK_ACTION.get(new_status)
        if stock_action:
            self._settle(stock_action, order_id)  # idempotent: again for a run that gives the answer again
        return updated

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def delete_order(self, order_id, expected_version=None, attempt_id=None):
        """Delete a pending or cancelled order and release its stock."""
        caller = required(self.caller)

        def delete(store):
            order = self._order(store, caller, order_id, lock=True)
            deleted = order.delete(caller, expected_version)
            store.delete_order(order)
            return deleted
        deleted = self._change(caller, order_id, attempt_id, delete)
        self._settle("release", deleted["id"])
        return deleted

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def order_history(self, order_id):
        """Every status change of the order, oldest first: from, to, at, by, reason."""
        caller = required(self.caller)
        with self.uow as tx:
            order = self._order(tx.store, caller, order_id)
            return {"order_id": str(order.id), "items": history_schema.dump(tx.store.status_history(order.id))}

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def order_states(self, order_ids):
        """{order id: status} for the ids that name an order (for inventory's reconciler)."""
        required(self.caller).require(ADMIN, SERVICE)
        parsed = [p for p in map(uuid_or_none, order_ids) if p]
        with self.uow as tx:
            return tx.store.order_states(parsed)

    @every("idempotency_prune_interval_seconds")
    def prune_attempts(self):
        """Forget idempotency keys and attempts past their retention, a bounded batch per
        statement (see common/kit/db.py); how many."""
        cutoff = _now() - timedelta(hours=self.settings.idempotency_retention_hours)
        stop_at = time.monotonic() + MAX_PRUNING_SECONDS

        def delete_batch(kind):
            with self.uow.single_statement() as store:
                return store.prune_attempts(kind, cutoff)

        return sum(prune_in_batches(partial(delete_batch, kind), stop_at) for kind in storage.ATTEMPT_RECORDS)

    @reliable_event_handler("customer_service", "customer_created")
    def on_customer_created(self, envelope):
        self._remember_customer(envelope)

    @reliable_event_handler("customer_service", "customer_updated")
    def on_customer_updated(self, envelope):
        self._remember_customer(envelope)

    # -- helpers (no entrypoints) ------------------------------------------

    def _order(self, store, caller, order_id, lock=False):
        """The order, or NotFound: also for another customer's order, so ids cannot be probed."""
        parsed = uuid_or_none(order_id)
        order = store.get_order(parsed, lock=lock) if parsed else None
        if order is None or not caller.owns(order.customer_id):
            raise NotFound("No such order.", {"id": str(order_id)})
        return order

    def _change(self, caller, order_id, attempt_id, change):
        """`change(store)` (the answer: the order as changed) in one unit of work, as
        attempt `attempt_id` of this change, the way a create is an attempt.

        The runs of one attempt (a broker redelivery after a lost ack, an earlier
        send still queued) take turns on its lock; the first to commit records the
        attempt and its answer in the change's transaction, one that fails records
        its failure before answering (`_end_failed_attempt`), and every later run
        gives that answer again and changes nothing. So a change answered 503 (or
        any refusal) is never applied later. Without an attempt id (make shell, a
        service) the change runs as asked.
        """
        attempt = id_of_attempt(attempt_id) if attempt_id is not None else None
        if attempt is None:
            with self.uow as tx:
                return change(tx.store)
        try:
            with self.uow as tx:
                tx.store.lock_attempts([attempt])
                _, failure, changed = tx.store.attempt_outcome(attempt)
                if failure is None and changed is None:
                    answer = change(tx.store)
                    tx.store.record_change(attempt, uuid.UUID(answer["id"]), answer, _now())
                    return answer
        except Exception as error:
            if not domain.is_final_failure(error):
                raise
            return self._end_failed_attempt(caller, attempt, error, order_id=order_id)
        if changed is not None:
            return domain.replayed_change(caller, order_id, changed)
        raise error_from_dict(failure)

    def _end_failed_attempt(self, caller, attempt_id, error, order_id=None):
        """A run of an attempt (a create_order's, or `_change`'s on `order_id`) failed:
        make its failure the attempt's answer, which every other run of it gives again,
        before telling the client; if another run made the order or the change
        meanwhile, its answer is the answer. Should the failure not be recorded
        (database down, deadline near), the client cannot be told it will not be made:
        FailureNotRecorded (an outcome_unknown the gateway answers by sending the
        request again)."""
        try:
            with self.uow as tx:
                tx.store.lock_attempts([attempt_id])  # taken after the failed run rolled back
                created, failure, changed = tx.store.attempt_outcome(attempt_id)
                if created:
                    return order_schema.dump(domain.check_same_caller(caller, tx.store.get_order(attempt_id)))
                if changed is None and failure is None:
                    tx.store.record_failed_attempt(attempt_id, domain.failure_record(error), _now())
        except Exception as unrecorded:
            log.warning("attempt %s: its failure (%r) could not be recorded: %r", attempt_id, error, unrecorded)
            raise domain.failure_not_recorded(order_id or attempt_id) from None
        if changed is not None:
            return domain.replayed_change(caller, order_id, changed)
        if failure is None:
            raise error  # this run's failure is now the attempt's answer
        raise error_from_dict(failure) from None

    def _remember_customer(self, envelope):
        customer = envelope["data"]
        with self.uow as tx:
            if tx.first_time(envelope["event_id"], "remember_customer"):
                tx.store.remember_customer(uuid.UUID(customer["id"]), customer.get("shipping_address"),
                                           datetime.fromisoformat(customer["updated_at"]))

    def _settle(self, inventory_method, order_id, *args):
        """Make inventory match what this request decided (undo a reservation after
        a rollback, release or commit after a committed change): idempotent, so
        retried through a short broker or inventory outage; then left to
        inventory's reconciler, which settles reservations from the orders' states."""
        call = getattr(self.inventory_rpc.settling, inventory_method)
        for attempt in range(1, SETTLE_ATTEMPTS + 1):
            try:
                return call(str(order_id), *args)
            except (ServiceUnavailable, UpstreamTimeout) as exc:
                log.warning("inventory %s of order %s failed (%r), attempt %d of %d", inventory_method, order_id,
                            exc, attempt, SETTLE_ATTEMPTS)
                if attempt < SETTLE_ATTEMPTS:
                    time.sleep(SETTLE_PAUSE_SECONDS)
            except Exception:
                log.exception("inventory %s of order %s failed", inventory_method, order_id)
                return None
        log.error("inventory %s of order %s did not succeed: left to inventory's reconciler", inventory_method,
                  order_id)
        return None
