"""webhook_service: Nameko entrypoints only; rules in domain, queries in storage, HTTP in outbound.

Every event of the contract (but its own) comes in through a batch handler (common/kit/consumers.py), which only
records: in one statement, the event and one pending delivery per webhook subscribed to it
when it occurred (the event's id is the dedup: a redelivery records nothing). The sender, a
timer entrypoint woken after new deliveries, claims due ones under a lease (committed at
once), sends each in a greenthread of its own outside any transaction, at most PER_HOST at a
time per host, and records each outcome in a short unit of work applied only if the claim
still holds the row. A subscriber that is slow or dead holds its own host's slots and
nothing else: the other hosts' deliveries are claimed and sent meanwhile. A timer prunes what
ended WEBHOOK_RETENTION_DAYS ago.

Only the event types some webhook wants reach the service at all (bindings.py): a handler's queue
is bound to its source's exchange before a webhook that wants its type commits, and unbound once
none has wanted it for WEBHOOK_UNBIND_GRACE_SECONDS (at once after a delete), by a timer that also
runs at start.
"""
import collections
import json
import logging
import random
import secrets
import time
from datetime import datetime, timedelta, timezone
from functools import partial

import eventlet
from eventlet.queue import Empty, LightQueue

from common.contract.caller import ADMIN, required
from common.contract.errors import EXPECTED_ERRORS, NotFound, ServiceUnavailable
from common.contract.events import WEBHOOK_EVENTS
from common.contract.schemas.base import ListQuery, id_of_attempt, load_or_raise, uuid_or_none
from common.contract.schemas.webhooks import (
    DeliveryListQuery,
    DeliverySchema,
    WebhookInput,
    WebhookPatch,
    WebhookSchema,
)
from common.kit import db
from common.kit.base import ServiceBase
from common.kit.consumers import unbound_batch_event_handler
from common.kit.db import prune_in_batches
from common.kit.paging import Listing
from common.kit.rpc import rpc
from common.kit.sender import SenderWake, sender
from common.kit.timers import every
from common.kit.unit_of_work import UnitOfWork
from webhook_service import domain, metrics, outbound, secret_box, storage
from webhook_service.bindings import BINDING_ERRORS, EventBindings

log = logging.getLogger(__name__)
webhook_schema, delivery_schema = WebhookSchema(), DeliverySchema()
WEBHOOKS = Listing(ListQuery, WebhookSchema)
DELIVERIES = Listing(DeliveryListQuery, DeliverySchema)
# Deliveries in flight per process, and per subscriber host: a host that hangs holds PER_HOST of them.
MAX_IN_FLIGHT, PER_HOST = 32, 4
# While sends are in flight, the sender looks for newly due deliveries this often.
POLL_SECONDS = 0.2
# A run stops claiming after this long and runs again at once, so stopping the service waits for
# at most this plus one attempt's timeout.
MAX_CLAIMING_SECONDS = 10
# A claim's lease: one attempt's timeout (it bounds the whole attempt) plus this, for recording it.
LEASE_MARGIN_SECONDS = 10


def _now():
    return datetime.now(timezone.utc)


def _occurred_at(envelope):
    try:
        moment = datetime.fromisoformat(envelope["occurred_at"])
    except (KeyError, TypeError, ValueError):
        return _now()
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=timezone.utc)


class WebhookService(ServiceBase):
    name = "webhook_service"

    uow = UnitOfWork(storage.layout)
    wake_sender = SenderWake()
    bindings = EventBindings()

    # -- the event path: record, never send (the handlers are made below the class) ---

    def _record_deliveries(self, event_type, envelopes):
        events = [(envelope["event_id"], _occurred_at(envelope),
                   json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)) for envelope in envelopes]
        with self.uow.single_statement() as store:
            recorded = store.record_deliveries(event_type, events, _now())
        if recorded:
            self.wake_sender()

    # -- RPC for the gateway (admins only) ----------------------------------------------

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def create_webhook(self, data, attempt_id=None):
        """A new webhook, with its secret (this answer only); attempt_id (the gateway sends one per
        HTTP request) becomes its id, and a second run of the same attempt answers as the first."""
        required(self.caller).require(ADMIN)
        fields = _subscription(load_or_raise(WebhookInput, data))
        target, _ = outbound.checked_target(fields["url"], self.settings.webhook_allow_hosts,
                                            self.settings.webhook_timeout_seconds)
        webhook_id = id_of_attempt(attempt_id)
        key = self.settings.webhook_secret_key.get_secret_value()
        with self.uow as tx:
            if attempt_id is not None:
                tx.store.lock_webhook_id(webhook_id)
                made_before = tx.store.get_webhook(webhook_id)
                if made_before is not None:
                    return {**webhook_schema.dump(made_before),
                            "secret": secret_box.decrypt(key, made_before.secret_encrypted)}
            if fields["enabled"]:
                self._bind(tx, fields["event_types"])
            secret = domain.new_secret(secrets.token_bytes(domain.SECRET_BYTES))
            # In force from after the binding: every event that occurs from then on is routed here.
            webhook = tx.store.insert_webhook(webhook_id, fields, target.host, secret_box.encrypt(key, secret), _now())
            return {**webhook_schema.dump(webhook), "secret": secret}

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def list_webhooks(self, limit=20, cursor=None):
        """Newest first."""
        caller = required(self.caller)
        caller.require(ADMIN)
        return WEBHOOKS.page(caller, self.uow, None, limit, cursor,
                             lambda store, query, count, after: store.list_webhooks(query, count, after))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_webhook(self, webhook_id):
        required(self.caller).require(ADMIN)
        with self.uow.single_statement() as store:
            return webhook_schema.dump(_webhook(store, webhook_id))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def update_webhook(self, webhook_id, data):
        """Change url, event_types, description or enabled; what it is subscribed to changes for
        the events that occur from now on. Enabling clears the reason it was disabled for."""
        required(self.caller).require(ADMIN)
        changes = _subscription(load_or_raise(WebhookPatch, data))
        if "url" in changes:
            target, _ = outbound.checked_target(changes["url"], self.settings.webhook_allow_hosts,
                                                self.settings.webhook_timeout_seconds)
            changes["host"] = target.host
        with self.uow as tx:
            webhook = _webhook(tx.store, webhook_id, lock=True)
            if "enabled" in changes and changes["enabled"] != webhook.enabled:
                # Disabled by an admin (no reason to give), or enabled again: a fresh start.
                changes.update(disabled_reason=None, failing_since=None)
            added = _newly_wanted(webhook, changes)
            if added:
                self._bind(tx, added)
            # In force from after the binding, as a new webhook (what it no longer wants is unbound later).
            return webhook_schema.dump(tx.store.update_webhook(webhook, changes, _now()))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def delete_webhook(self, webhook_id):
        """The webhook and its delivery log; nothing more is sent to it."""
        required(self.caller).require(ADMIN)
        with self.uow as tx:
            webhook = _webhook(tx.store, webhook_id, lock=True)
            event_types = list(webhook.event_types)
            tx.store.delete_webhook(webhook)
        # It wants nothing from now on (its versions went with it): its types unbound at once, unless
        # another webhook wants them. Done, or not (the timer does it later: events meanwhile match
        # nothing), the delete stands.
        try:
            self._reconcile_bindings(among=event_types)
        except Exception as exc:
            log.warning("webhook %s deleted; its event types will be unbound later: %r", webhook_id, exc)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def list_deliveries(self, webhook_id, filters=None, limit=20, cursor=None):
        """A webhook's delivery log, newest first; filters: status."""
        caller = required(self.caller)
        caller.require(ADMIN)

        def fetch(store, query, count, after):
            return store.list_deliveries(_webhook(store, webhook_id).id, query, count, after)
        return DELIVERIES.page(caller, self.uow, filters, limit, cursor, fetch)

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def retry_delivery(self, webhook_id, delivery_id):
        """Send a delivery again, whatever its status: pending and due now, a new round of
        WEBHOOK_MAX_ATTEMPTS attempts, the same record (its attempts go on counting)."""
        required(self.caller).require(ADMIN)
        with self.uow as tx:
            webhook = _webhook(tx.store, webhook_id)
            parsed = uuid_or_none(delivery_id)
            delivery = tx.store.get_delivery(webhook.id, parsed, lock=True) if parsed else None
            if delivery is None:
                raise NotFound("No such delivery.", {"id": str(delivery_id)})
            domain.check_can_resend(webhook)
            resent = delivery_schema.dump(tx.store.resend(delivery, _now()))
        self.wake_sender()
        return resent

    # -- the sender ----------------------------------------------------------------------

    @sender("webhook_sweep_interval_seconds")
    def send_due_deliveries(self):
        """Send the due deliveries, each in a greenthread of its own, until none is due or in
        flight; the seconds until the earliest retry this run scheduled (None: none)."""
        pool, in_flight, finished, retries = eventlet.GreenPool(MAX_IN_FLIGHT), collections.Counter(), LightQueue(), []
        claiming_until = time.monotonic() + MAX_CLAIMING_SECONDS
        try:
            while True:
                free = MAX_IN_FLIGHT - sum(in_flight.values())
                claimed = self._claim(free, in_flight) if free and time.monotonic() < claiming_until else []
                for delivery in claimed:
                    in_flight[delivery.host] += 1
                    pool.spawn_n(self._send, delivery, retries, finished)
                if not sum(in_flight.values()):
                    break
                try:
                    in_flight[finished.get(timeout=POLL_SECONDS)] -= 1
                    while not finished.empty():
                        in_flight[finished.get_nowait()] -= 1
                except Empty:
                    pass
        finally:
            pool.waitall()  # a claim that failed (the database went away) ends the run once its sends have
        if time.monotonic() >= claiming_until:
            return 0.0
        return max(0.0, (min(retries) - _now()).total_seconds()) if retries else None

    # -- retention -------------------------------------------------------------------------

    @every("webhook_prune_interval_seconds")
    def prune(self):
        """Delete deliveries that ended, then events no delivery refers to, WEBHOOK_RETENTION_DAYS
        after they last changed / arrived, a bounded batch per statement (common/kit/db.py); the rows deleted."""
        before = _now() - timedelta(days=self.settings.webhook_retention_days)
        stop_at = time.monotonic() + db.MAX_PRUNING_SECONDS
        # Deliveries first: they free their events.
        deleted = sum(prune_in_batches(partial(self._prune_batch, table, before), stop_at)
                      for table in ("deliveries", "events"))
        if deleted:
            log.info("pruned %d webhook deliveries and events older than %s", deleted, before.isoformat())
        return deleted

    # -- which events reach the service ----------------------------------------------------

    @every("webhook_bindings_interval_seconds", eager=True)
    def reconcile_bindings(self):
        """At start and every WEBHOOK_BINDINGS_INTERVAL_SECONDS: the event types some webhook wants
        routed to their queues, the others not (a binding lost, or left by an older version, is
        put right); the types wanted (None: not this time, the next run tries again)."""
        try:
            return sorted(self._reconcile_bindings())
        except (*BINDING_ERRORS, ServiceUnavailable) as exc:
            log.warning("could not check which event types are routed here (next try in %g s): %r",
                        self.settings.webhook_bindings_interval_seconds, exc)
            return None

    # -- helpers (no entrypoints) -------------------------------------------------------------

    def _prune_batch(self, table, before):
        with self.uow.single_statement() as store:
            return getattr(store, f"prune_{table}")(before, db.PRUNE_BATCH)

    def _bind(self, tx, event_types):
        """Route `event_types` here before `tx` commits the webhook that wants them; the lock held
        till then keeps any process from reading what is wanted, and unbinding, meanwhile."""
        tx.store.lock_bindings()
        try:
            self.bindings.route(event_types)
        except BINDING_ERRORS as exc:
            log.warning("could not bind %s: %r", ", ".join(event_types), exc)
            raise ServiceUnavailable("The broker is unavailable: the webhook's events could not be routed.",
                                     {"broker": "unreachable"}) from None

    def _reconcile_bindings(self, among=None):
        """Bind the wanted event types (of `among`, default all) and unbind the others, under the lock."""
        since = _now() - timedelta(seconds=self.settings.webhook_unbind_grace_seconds)
        with self.uow as tx:
            tx.store.lock_bindings()
            wanted = tx.store.wanted_event_types(since)
            self.bindings.apply(wanted, among)
        return wanted

    def _claim(self, limit, in_flight):
        now = _now()
        lease = timedelta(seconds=self.settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS)
        with self.uow.single_statement() as store:
            return store.claim_due(now, now + lease, limit, PER_HOST, {h: n for h, n in in_flight.items() if n})

    def _send(self, delivery, retries, finished):
        """One attempt of a claimed delivery and its outcome recorded; tells `finished` its host."""
        settings = self.settings
        try:
            secret = secret_box.decrypt(settings.webhook_secret_key.get_secret_value(), delivery.secret_encrypted)
            outcome = outbound.deliver(delivery.url, settings.webhook_allow_hosts, delivery.event_id, delivery.body,
                                       secret, _now(), settings.webhook_timeout_seconds)
            self._record(delivery, outcome, retries)
        except Exception:  # its claim expires and it is tried again; the others go on
            log.exception("delivery %s to webhook %s: the attempt could not be made or recorded", delivery.id,
                          delivery.webhook_id)
        finally:
            finished.put(delivery.host)

    def _record(self, delivery, outcome, retries):
        """Record one attempt's outcome, if the claim still holds; disable a webhook that only fails."""
        settings, now = self.settings, _now()
        attempt = domain.after_attempt(delivery, outcome, now, settings.webhook_retry_base_seconds,
                                       settings.webhook_max_attempts, random.random())
        # Greenthreads of one worker record side by side: each in a transaction of its own.
        with self.uow.transaction() as tx:
            recorded = tx.store.record_attempt(delivery, attempt, now)
            if recorded is not None:
                self._note_outcome(tx, delivery.webhook_id, outcome, attempt, now)
        service = self.name
        metrics.ATTEMPTS.labels(service, metrics.attempt_result(outcome.status_code)).inc()
        if recorded is None:
            log.warning("delivery %s: its claim expired or it was re-sent meanwhile; this attempt's outcome is not "
                        "recorded", delivery.id)
            return
        if attempt.status == domain.PENDING:
            retries.append(attempt.next_attempt_at)
        else:
            metrics.DELIVERIES.labels(service, attempt.status).inc()
        if not outcome.delivered:
            log.warning("delivery %s of event %s to webhook %s: attempt %d %s: %s", delivery.id, delivery.event_id,
                        delivery.webhook_id, attempt.attempts,
                        "failed for good" if attempt.status == domain.FAILED else "will be retried", attempt.last_error)

    def _note_outcome(self, tx, webhook_id, outcome, attempt, now):
        if outcome.delivered:
            tx.store.note_delivered(webhook_id)
            return
        webhook = tx.store.note_failed(webhook_id, now)
        hours = self.settings.webhook_disable_after_hours
        if webhook is None or not webhook.enabled or not domain.should_disable(webhook.failing_since, now, hours):
            return
        reason = domain.disabled_reason(webhook.failing_since, attempt.last_error, hours)
        disabled = webhook_schema.dump(tx.store.update_webhook(webhook, {"enabled": False, "disabled_reason": reason},
                                                               now))
        tx.emit("webhook_disabled", disabled)
        log.warning("webhook %s (%s) disabled: %s", webhook.id, webhook.url, reason)


def _subscription(fields):
    """Validated fields with the event types each named once, in the order given."""
    if "event_types" in fields:
        fields["event_types"] = list(dict.fromkeys(fields["event_types"]))
    return fields


def _newly_wanted(webhook, changes):
    """The event types the webhook wants after `changes` and did not before (all of them when it is enabled again)."""
    enabled, event_types = changes.get("enabled", webhook.enabled), changes.get("event_types", webhook.event_types)
    if not enabled:
        return []
    had = set(webhook.event_types) if webhook.enabled else set()
    return [event_type for event_type in event_types if event_type not in had]


def _webhook(store, webhook_id, lock=False):
    parsed = uuid_or_none(webhook_id)
    webhook = store.get_webhook(parsed, lock=lock) if parsed else None
    if webhook is None:
        raise NotFound("No such webhook.", {"id": str(webhook_id)})
    return webhook


def _handler(source, event_type):
    @unbound_batch_event_handler(source, event_type)
    def handle(self, envelopes):
        self._record_deliveries(event_type, envelopes)
    handle.__name__ = handle.__qualname__ = f"on_{event_type}"
    return handle


# One batch handler per event a webhook can subscribe to (nameko finds them on the class); each gets its
# events only while bound (bindings.py).
for _source, _event_types in WEBHOOK_EVENTS.items():
    for _event_type in _event_types:
        setattr(WebhookService, f"on_{_event_type}", _handler(_source, _event_type))
