"""notification_service: Nameko entrypoints only; rules in domain, queries in storage, email in mail,
SMS and Web Push in channels.

Order events become queued notifications (one per event, recipient and
channel), a batch of events at a time (common/kit/consumers.py): one read of
the local customer directory for the channels and addresses of all of them,
and one statement for their dedup rows and notifications. Nothing else happens
on the event path: the sender, a timer entrypoint woken after each new
notification, claims due ones under a lease (committed at once), sends each
on its channel (SMTP, the SMS provider, the subscription's push service)
outside any transaction and records the batch's outcomes with their
notification_sent / notification_failed events in one short unit of work,
each applied only if the claim still holds the row. Each notification has its own attempts and
retries, whatever its channel. A provider that is down or slow never holds
up an event, let alone an order, nor keeps a database connection busy.
"""
import logging
from datetime import datetime, timedelta, timezone

from common.contract.caller import ADMIN, required
from common.contract.errors import EXPECTED_ERRORS, NotFound
from common.contract.schemas.base import uuid_or_none
from common.contract.schemas.notifications import NotificationListQuery, NotificationSchema
from common.kit.base import ServiceBase
from common.kit.consumers import batch_event_handler, reliable_event_handler
from common.kit.customer_directory import KeepsCustomerDirectory, contacts_of
from common.kit.paging import Listing
from common.kit.rpc import ServiceRpcProxy, rpc
from common.kit.sender import SenderWake, sender
from common.kit.unit_of_work import UnitOfWork
from notification_service import channels, domain, mail, storage

log = logging.getLogger(__name__)
notification_schema = NotificationSchema()
NOTIFICATIONS = Listing(NotificationListQuery, NotificationSchema, own_only=True)
# Due notifications claimed at once, and claims per run of the sender.
SEND_BATCH, MAX_BATCHES_PER_RUN = 20, 50
# A claim's lease is its batch's longest sends plus this, for recording the outcomes.
LEASE_MARGIN_SECONDS = 30


def _now():
    return datetime.now(timezone.utc)


class NotificationService(KeepsCustomerDirectory, ServiceBase):
    name = "notification_service"

    uow = UnitOfWork(storage.layout)
    customer_rpc = ServiceRpcProxy("customer_service")
    mailer = mail.Mailer()
    sms = channels.SmsClient()
    pusher = channels.WebPusher()
    wake_sender = SenderWake()

    # -- the event path: record, never send ------------------------------------------

    @batch_event_handler("order_service", "order_created")
    def on_order_created(self, envelopes):
        self._queue_notifications(envelopes)

    @batch_event_handler("order_service", "order_shipped")
    def on_order_shipped(self, envelopes):
        self._queue_notifications(envelopes)

    @batch_event_handler("order_service", "order_delivered")
    def on_order_delivered(self, envelopes):
        self._queue_notifications(envelopes)

    @batch_event_handler("order_service", "order_cancelled")
    def on_order_cancelled(self, envelopes):
        self._queue_notifications(envelopes)

    @reliable_event_handler("inventory_service", "stock_low")
    def on_stock_low(self, envelope):
        """One email to each STAFF_EMAILS address per stock_low (inventory emits one per crossing)."""
        product = envelope["data"]
        rows = [domain.staff_alert(product, address, self.settings.mail_from) for address in self.settings.staff_emails]
        for row in rows:
            row["body_text"], row["body_html"] = mail.render(domain.STOCK_LOW, {"product": product})
        self._queue([(envelope, rows)], "alert_staff")

    # -- the sender ----------------------------------------------------------------------

    @sender("notify_sweep_interval_seconds")
    def send_due_notifications(self):
        """Send the queued notifications that are due, a batch per unit of work; the
        seconds until the earliest retry this run scheduled (None: it scheduled none)."""
        retries = []
        for _ in range(MAX_BATCHES_PER_RUN):
            claimed = self._send_batch(retries)
            if claimed < SEND_BATCH:
                break
        self.mailer.close_idle()
        return max(0.0, (min(retries) - _now()).total_seconds()) if retries else None

    # -- RPC for the gateway ----------------------------------------------------------------

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def push_public_key(self):
        """{"public_key"}: the VAPID key front ends subscribe with (null when none is configured)."""
        return {"public_key": self.pusher.public_key()}

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def list_notifications(self, filters=None, limit=20, cursor=None):
        """Newest first. filters: order_id, status. A customer lists only their own."""
        return NOTIFICATIONS.page(required(self.caller), self.uow, filters, limit, cursor,
                                  lambda store, query, count, after: store.list_notifications(query, count, after))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def get_notification(self, notification_id):
        caller = required(self.caller)
        with self.uow.single_statement() as store:
            return notification_schema.dump(self._notification(store, caller, notification_id))

    @rpc(expected_exceptions=EXPECTED_ERRORS)
    def retry_notification(self, notification_id):
        """Queue a failed notification again (admins): attempts from 0, due now."""
        caller = required(self.caller)
        with self.uow as tx:
            notification = self._notification(tx.store, caller, notification_id, lock=True)
            caller.require(ADMIN)
            domain.check_can_retry(notification)
            tx.store.requeue(notification, _now())
            queued = notification_schema.dump(notification)
        self.wake_sender()
        return queued

    # -- helpers (no entrypoints) -------------------------------------------------------------

    def _queue_notifications(self, envelopes):
        """The notifications of a batch of order events: one directory read, one statement."""
        wanted = [(envelope, domain.notification_kind(envelope["type"], envelope["data"]),
                   uuid_or_none(envelope["data"].get("customer_id"))) for envelope in envelopes]
        wanted = [(envelope, kind, customer_id) for envelope, kind, customer_id in wanted
                  if kind is not None and customer_id is not None]
        customers = self._customers({customer_id for _, _, customer_id in wanted})
        events = []
        for envelope, kind, customer_id in wanted:
            customer = customers.get(customer_id)
            if customer is None:
                log.warning("no customer %s for %s of order %s: nobody to write to", customer_id, envelope["type"],
                            envelope["data"].get("id"))
                continue
            events.append((envelope, self._rows(kind, envelope["data"], customer)))
        self._queue(events, "notify_customer")

    def _rows(self, kind, order, customer):
        """The notifications of one order event for `customer`: a row per channel the customer takes."""
        rows = []
        if domain.preferences_of(customer["contacts"])[domain.EMAIL]:
            row = domain.new_notification(kind, order, customer, self.settings.mail_from)
            row["body_text"], row["body_html"] = mail.render(kind, domain.email_context(kind, order, customer))
            rows.append(row)
        return rows + domain.channel_notifications(kind, order, customer, customer["contacts"])

    def _queue(self, events, handler):
        """Queue each (envelope, rows), once however often the event is delivered, and wake the sender."""
        events = [(envelope["event_id"], envelope["type"], rows) for envelope, rows in events if rows]
        if not events:
            return
        with self.uow.single_statement() as store:
            queued = store.queue_once(events, handler, _now())
        if queued:
            self.wake_sender()

    def _customers(self, customer_ids):
        """{id: {id, name, email, contacts}} from the local directory, else from customer_service
        (then remembered); a customer that does not exist is left out."""
        if not customer_ids:
            return {}
        with self.uow.single_statement() as store:
            known = store.known_customers_among(customer_ids)
        found = {customer_id: {"id": row["id"], "name": row["name"], "email": row["email"],
                               "contacts": row.get("contacts")} for customer_id, row in known.items()}
        for customer_id in customer_ids - found.keys():
            customer = self._ask_for(customer_id)
            if customer is not None:
                found[customer_id] = customer
        return found

    def _ask_for(self, customer_id):
        """A customer the directory missed (its event not yet here), from customer_service, remembered."""
        try:
            customer = self.customer_rpc.get_customer_with_contacts(str(customer_id))
        except NotFound:
            return None
        contacts = contacts_of(customer)
        with self.uow.single_statement() as store:
            store.remember_customer(customer_id, customer["name"], customer["email"],
                                    datetime.fromisoformat(customer["updated_at"]), contacts)
        return {"id": customer_id, "name": customer["name"], "email": customer["email"], "contacts": contacts}

    def _send_batch(self, retries):
        """Claim up to SEND_BATCH due notifications, send each, record each outcome; the
        number claimed. Adds the time of each retry it schedules to `retries`."""
        now = _now()
        with self.uow.single_statement() as store:
            claimed = store.claim_due(now, now + self._lease(), SEND_BATCH)
        if not claimed:
            return 0
        with self.mailer.session() as smtp:
            outcomes = [(notification, self._attempt(notification, smtp)) for notification in claimed]
        self._record(outcomes, retries)
        return len(claimed)

    def _attempt(self, notification, smtp):
        """What sending `notification` raised (every failure is an outcome; domain says which kind), or None."""
        try:
            self._deliver(notification, smtp)
        except Exception as exc:
            return exc
        return None

    def _deliver(self, notification, smtp):
        """One attempt at one notification, on its channel."""
        if notification.channel == domain.SMS:
            self.sms.send(notification.recipient, notification.body_text)
        elif notification.channel == domain.PUSH:
            self.pusher.send(notification.recipient, notification.push_subscription["keys"], notification.body_text)
        else:
            smtp.send(mail.build_message(notification, self.settings.mail_from))

    def _lease(self):
        """Longer than a batch's sends can take (each gives up after SMTP_TIMEOUT_SECONDS or
        NOTIFY_HTTP_TIMEOUT_SECONDS), so no other instance resends a message still being sent:
        derived from those timeouts, it needs no setting of its own."""
        longest = max(self.settings.smtp_timeout_seconds, self.settings.notify_http_timeout_seconds)
        return timedelta(seconds=longest * SEND_BATCH + LEASE_MARGIN_SECONDS)

    def _record(self, outcomes, retries):
        """Record a batch's attempts, each only where its claim still holds, with their events, in one
        transaction (a crash before it resends the batch's claimed messages, with the same ids)."""
        settings, now = self.settings, _now()
        attempts = [(notification, error, domain.after_attempt(
            notification, error, now, settings.notify_retry_base_seconds, settings.notify_max_attempts))
            for notification, error in outcomes]
        with self.uow as tx:
            recorded = tx.store.record_attempts([(notification, attempt) for notification, _, attempt in attempts], now)
            tx.emit_all([(f"notification_{attempt.status}", notification_schema.dump(row))
                         for row, (_, _, attempt) in zip(recorded, attempts)
                         if row is not None and attempt.status != domain.QUEUED])
        for row, (notification, error, attempt) in zip(recorded, attempts):
            self._after_record(notification, error, attempt, row, retries)

    def _after_record(self, notification, error, attempt, recorded, retries):
        if recorded is None:
            log.warning("notification %s to %s: its claim expired and another took it; this attempt's outcome "
                        "is not recorded", notification.id, notification.recipient)
            return
        if attempt.status == domain.QUEUED:
            retries.append(attempt.next_attempt_at)
        gone = domain.subscription_gone(notification, error)
        if gone is not None:
            self._forget_subscription(notification.customer_id, gone)
        if error is not None:
            log.warning("notification %s to %s: attempt %d %s: %s", notification.id, notification.recipient,
                        attempt.attempts, "failed for good" if attempt.status == domain.FAILED else "will be retried",
                        attempt.last_error)

    def _forget_subscription(self, customer_id, subscription_id):
        """The push service said the subscription is gone: customer_service removes it (and tells
        everyone with customer_updated). Should that fail, the next push meets the same answer."""
        try:
            self.customer_rpc.remove_push_subscription(str(customer_id), str(subscription_id))
        except NotFound:
            pass  # removed already
        except Exception as exc:
            log.warning("push subscription %s of customer %s is gone but could not be removed: %r",
                        subscription_id, customer_id, exc)

    def _notification(self, store, caller, notification_id, lock=False):
        """The notification, or NotFound: also for another customer's, so ids cannot be probed."""
        parsed = uuid_or_none(notification_id)
        notification = store.get_notification(parsed, lock=lock) if parsed else None
        if notification is None or not caller.owns(notification.customer_id):
            raise NotFound("No such notification.", {"id": str(notification_id)})
        return notification
