"""Creating orders in batches: each order's outcome its own, the fixed costs shared.

The gateway sends the creates that arrive while one batch is in flight as one
`create_orders` call (gateway/batching.py); `create_order` is a batch of one.
Each entry is one HTTP request's create: its attempt id (the new order's id),
body, Idempotency-Key, caller, request id, deadline and traceparent. The
entries of a batch share one transaction (the attempt locks, one read of
their contexts, the inserts, the records of the attempts that failed, one
COMMIT) and one `reserve_many` call to inventory_service; each entry fails
alone (bad input, unknown customer or sku, short stock, its deadline), and
its failure, recorded in that same transaction, is its attempt's answer from
then on, as a single create's is. In a batch each entry's caller carries its
own signature, for that entry (common/contract/caller.py `entry_digest`),
checked before anything else of it: a bad one fails that entry alone,
Unauthenticated. (A single create_order's caller was checked with its call.)
"""
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from common.contract.caller import ENTRY_METHOD, Caller, entry_digest, verify_caller
from common.contract.context import COMMIT_MARGIN_SECONDS, check_deadline
from common.contract.errors import (
    DomainError,
    InsufficientStock,
    OutcomeUnknown,
    Unauthenticated,
    UnknownCustomer,
    UnknownSku,
    error_from_dict,
    from_outcome,
    to_outcome,
)
from common.contract.schemas.base import id_of_attempt, load_or_raise
from common.contract.schemas.orders import OrderInput, OrderSchema
from common.observability import tracing
from order_service import domain

log = logging.getLogger(__name__)
order_schema = OrderSchema()
# Time kept back, besides COMMIT's own margin, for the rest of the batch's inserts.
INSERT_MARGIN_SECONDS = 0.25


def _now():
    return datetime.now(timezone.utc)


@dataclass
class Entry:
    """One create of a batch, from what the gateway (or a single create_order) sent."""
    order_id: Any
    attempt: bool  # an HTTP request's attempt id: its failure is recorded and final
    data: dict
    key: str | None
    caller: Caller | None
    request_id: str | None
    deadline: float | None
    traceparent: str | None
    order_input: dict | None = None
    lines: list = field(default_factory=list)
    customer: dict | None = None
    reservation: dict | None = None
    fingerprint: str | None = None
    outcome: dict | None = None  # {"order": ...} or to_outcome(error)
    record: bool = False  # its failure becomes its attempt's answer (written with the batch)
    inserted: bool = False  # its order is written in the batch's transaction
    error: BaseException | None = None  # what failed it, as raised

    @classmethod
    def of(cls, raw):
        attempt_id = raw.get("attempt_id")
        return cls(order_id=id_of_attempt(attempt_id), attempt=attempt_id is not None, data=raw.get("data"),
                   key=raw.get("idempotency_key"), caller=Caller.from_context(raw.get("caller")),
                   request_id=raw.get("request_id"), deadline=raw.get("deadline"),
                   traceparent=raw.get("traceparent"))

    @property
    def pending(self):
        return self.outcome is None

    def succeed(self, order):
        self.outcome = {"order": order}

    def fail(self, error, record=True):
        """This entry's answer is `error`; recorded as its attempt's answer unless `record`
        is False (a failure decided before, or one no other run must repeat: a deadline)."""
        # Logged with its own request's id, as a single create's worker would be.
        if isinstance(error, DomainError):
            log.warning("(expected) order %s not created: %s", self.order_id, error,
                        extra={"request_id": self.request_id})
        else:
            log.error("order %s could not be created", self.order_id, exc_info=error,
                      extra={"request_id": self.request_id})
        self.outcome, self.error = to_outcome(error), error
        self.record = record and self.attempt and domain.is_final_failure(error)


def answer(entry):
    """A single create's answer: its order, or what failed it raised as it was raised."""
    if "order" in entry.outcome:
        return entry.outcome["order"]
    raise entry.error or from_outcome(entry.outcome)


class Creation:
    """The creates of one call to order_service, with the service's dependencies."""

    def __init__(self, service, signed_entries=False):
        """`signed_entries`: each entry's caller is signed for it (a batch from the gateway)."""
        self.service = service
        self.signed_entries = signed_entries
        self.started = time.monotonic()

    def run(self, raw_entries):
        """The entries, each with its outcome: {"order": ...} or an error (to_outcome)."""
        entries = [self._parsed(raw) for raw in raw_entries]
        live = [entry for entry in entries if entry.pending]
        if live:
            with tracing.entry_spans("order_service.create_order", [entry.traceparent for entry in live]) as own:
                for entry, traceparent in zip(live, own):
                    entry.traceparent = traceparent  # its events and its reservation continue its own span
                for round_ in _rounds(live):
                    self._create(round_)
        return entries

    def _parsed(self, raw):
        try:
            entry = Entry.of(raw)
        except DomainError as error:
            return Entry(None, False, None, None, None, None, None, None, outcome=to_outcome(error))
        try:
            if self.signed_entries:
                self._verify_signature(raw)
            if entry.caller is None:
                raise Unauthenticated("Each create needs its caller.", {"caller": "missing"})
            entry.order_input = load_or_raise(OrderInput, entry.data)
            domain.check_may_order_for(entry.caller, entry.order_input["customer_id"])
            entry.lines = domain.merge_lines(entry.order_input["items"])
            entry.key = domain.check_idempotency_key(entry.key)
        except DomainError as error:
            entry.fail(error, record=False)  # nothing could have been made: no attempt to end
        return entry

    def _verify_signature(self, raw):
        settings = self.service.settings
        verify_caller(settings.caller_signing_keys, raw.get("caller"), ENTRY_METHOD,
                      entry_digest(raw.get("data"), raw.get("idempotency_key"), raw.get("attempt_id")),
                      settings.caller_signature_max_age_seconds)

    def _create(self, live):
        try:
            with self.service.uow as tx:
                self._in_transaction(tx, live)
        except OutcomeUnknown as error:  # the COMMIT was cut off: it may have been made
            for entry in live:
                if entry.inserted or entry.record:
                    entry.fail(error if entry.inserted else domain.failure_not_recorded(entry.order_id), record=False)
        except Exception as error:  # rolled back: nothing of this batch was made or recorded
            for entry in live:
                if entry.pending or entry.inserted or entry.record:
                    self._end_unrecorded(entry, error)

    def _in_transaction(self, tx, live):
        store = tx.store
        store.lock_attempts(sorted(entry.order_id for entry in live if entry.attempt))
        contexts = store.create_contexts([(entry.order_id, entry.order_input["customer_id"]) for entry in live])
        for entry in live:
            self._from_context(store, entry, *contexts[entry.order_id])
        self._claim_keys(store, [entry for entry in live if entry.pending and entry.key])
        self._find_customers([entry for entry in live if entry.pending and entry.customer is None])
        self._reserve([entry for entry in live if entry.pending])
        try:
            self._insert([entry for entry in live if entry.pending], tx)
            self._settle_failures(store, live)
        except BaseException:
            # The batch rolls back: still under the attempt locks, give back what it reserved.
            for entry in live:
                self._release(entry)
            raise

    def _from_context(self, store, entry, done_before, failure, known_customer):
        if done_before:
            self._answer_made_before(store, entry)
        elif failure is not None:
            entry.fail(error_from_dict(failure), record=False)  # the attempt's answer already
        elif known_customer is not None:
            entry.customer = domain.customer_from_directory(known_customer)

    def _answer_made_before(self, store, entry):
        try:
            entry.succeed(order_schema.dump(domain.check_same_caller(entry.caller, store.get_order(entry.order_id))))
        except DomainError as error:
            entry.fail(error, record=False)

    def _claim_keys(self, store, keyed):
        for entry in keyed:
            fingerprint = domain.request_fingerprint(entry.data)
            first_use = store.claim_idempotency_key(entry.key, fingerprint, entry.order_id, _now())
            if first_use is None:
                entry.fingerprint = fingerprint  # claimed: given back should the entry fail
                continue
            try:
                entry.succeed(domain.replay(first_use, fingerprint))
            except DomainError as error:
                entry.fail(error)

    def _find_customers(self, unknown):
        """Customers the local directory does not know, from customer_service in one call."""
        if not unknown:
            return
        wanted = sorted({str(entry.order_input["customer_id"]) for entry in unknown})
        try:
            found = {customer["id"]: customer for customer in self.service.customer_rpc.get_customers(wanted)}
        except DomainError as error:
            for entry in unknown:
                entry.fail(error)
            return
        for entry in unknown:
            customer_id = str(entry.order_input["customer_id"])
            if customer_id in found:
                entry.customer = found[customer_id]
            else:
                entry.fail(UnknownCustomer("No such customer.", {"customer_id": customer_id}))

    def _reserve(self, entries):
        """One reservation call for every entry; each gets its reservation or its error."""
        if not entries:
            return
        try:
            outcomes = self._reservations(entries)
        except DomainError as error:  # reservations it may have made are left to inventory's reconciler
            for entry in entries:
                entry.fail(error)
            return
        for entry, outcome in zip(entries, outcomes):
            if "reservation" in outcome:
                entry.reservation = outcome["reservation"]
            else:
                entry.fail(from_outcome(outcome))

    def _reservations(self, entries):
        """Each entry's reservation outcome: one reserve_many call, or for one entry whose
        worker's span is its request's (no span of its own) the plain reserve."""
        inventory = self.service.inventory_rpc
        if len(entries) == 1 and entries[0].traceparent is None:
            [entry] = entries
            try:
                return [{"reservation": inventory.reserve(str(entry.order_id), entry.lines)}]
            except (InsufficientStock, UnknownSku) as refusal:
                return [to_outcome(refusal)]
        return inventory.reserve_many([
            {"order_id": str(entry.order_id), "items": entry.lines, "request_id": entry.request_id,
             "traceparent": entry.traceparent} for entry in entries])

    def _insert(self, pending, tx):
        """The entries' orders, written in the batch's transaction in one statement; an entry
        that cannot be made (its reservation gone, a deadline passed) fails alone."""
        made = [(entry, new) for entry in pending if (new := self._new_order(entry)) is not None]
        for entry, (order_row, item_rows, order) in made:
            if entry.key is not None:
                tx.store.remember_response(entry.key, order)
        if made:
            tx.store.insert_new_orders([
                (order_row, item_rows, entry.caller.sub,
                 tx.event_row("order_created", order, request_id=entry.request_id, traceparent=entry.traceparent))
                for entry, (order_row, item_rows, order) in made])
        for entry, (_, _, order) in made:
            entry.succeed(order)
            entry.inserted = True

    def _new_order(self, entry):
        """(order row, item rows, order view) of the entry's order, or None: it failed."""
        try:
            domain.check_reservation_held(entry.reservation)
            order_row, item_rows = domain.new_order(entry.order_id, entry.customer, entry.lines, entry.reservation,
                                                    entry.order_input.get("shipping_address"), _now())
            order = order_schema.dump({**order_row, "items": item_rows})
            domain.check_create_deadline(self.started, time.monotonic(),
                                         self.service.settings.order_create_deadline_seconds)
            check_deadline(entry.deadline, COMMIT_MARGIN_SECONDS + INSERT_MARGIN_SECONDS, "committing")
        except Exception as error:  # a bug in one entry fails that entry alone, as internal_error
            entry.fail(error)
            return None
        return order_row, item_rows, order

    def _settle_failures(self, store, live):
        """Before COMMIT, still under the attempt locks: failed entries give back their key
        and their reservation, and their failures are recorded."""
        for entry in live:
            if "order" in entry.outcome:
                continue
            if entry.fingerprint is not None:
                store.unclaim_idempotency_key(entry.key, entry.order_id)
            self._release(entry)
            if entry.record:
                store.record_failed_attempt(entry.order_id, entry.outcome["error"], _now())

    def _release(self, entry):
        if entry.reservation is not None and entry.reservation["status"] == "reserved":
            self.service._settle("release", entry.order_id)
            entry.reservation = None

    def _end_unrecorded(self, entry, error):
        """The batch rolled back: each attempt of it ends as a single create's would (its
        failure recorded in a transaction of its own, or FailureNotRecorded)."""
        own = from_outcome(entry.outcome) if entry.record else error
        entry.inserted = entry.record = False
        if not entry.attempt or not domain.is_final_failure(own):
            entry.fail(own, record=False)
            return
        try:
            entry.succeed(self.service._end_failed_attempt(entry.caller, entry.order_id, own))
        except Exception as final:  # every failure is this entry's answer
            entry.fail(final, record=False)


def _rounds(entries):
    """The entries in rounds with at most one entry per Idempotency-Key each: a repeat of a
    key within a batch runs after the round of its first use has committed, and so sees it
    as a request sent after it would (replayed, refused, or a fresh try if it failed)."""
    rounds = []
    for entry in entries:
        round_ = next((r for r in rounds if entry.key is None or entry.key not in r.keys), None)
        if round_ is None:
            round_ = _Round()
            rounds.append(round_)
        round_.append(entry)
        if entry.key is not None:
            round_.keys.add(entry.key)
    return rounds


class _Round(list):
    def __init__(self):
        super().__init__()
        self.keys = set()

