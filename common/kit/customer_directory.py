"""The customer directory notification_service and invoice_service each keep in
their own schema: customer_service's customers (id, name, email) as its
customer_created / customer_updated events told them, so an order event needs
no call to know whom it is for; notification_service's also keeps how to
reach them (`contacts`: phone, notification preferences, push subscriptions).
(order_service keeps its own kind: shipping addresses, not names.)

- `known_customer_model(Base, with_contacts=False)`: the `known_customers` table in Base's schema.
- `CustomerDirectory`: the store's methods over it.
- `remember_customer_event(uow, envelope)`: a customer event into the directory, once.
- `KeepsCustomerDirectory`: the two event handlers that feed it, for a service to inherit.
"""
import uuid
from datetime import datetime

from sqlalchemy import String, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID, insert
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import DateTime

from common.kit.consumers import reliable_event_handler

CONTACT_FIELDS = ("phone", "notification_preferences", "push_subscriptions")


def contacts_of(customer):
    """How a customer (as its events carry it) can be reached besides email."""
    return {name: customer.get(name) for name in CONTACT_FIELDS}


def known_customer_model(base, with_contacts=False):
    """The `known_customers` table in `base`'s schema; `with_contacts`: also a JSONB column for contacts_of()."""

    class KnownCustomer(base):
        """customer_service's customers as their events told us."""
        __tablename__ = "known_customers"

        id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
        name: Mapped[str] = mapped_column(String(200))
        email: Mapped[str] = mapped_column(String(254))
        updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
        if with_contacts:
            # None: not told yet (a row from before contacts were kept): email only.
            contacts: Mapped[dict | None] = mapped_column(JSONB)

    table = KnownCustomer.__table__
    # Built once: every order event reads it, so its compiled form is reused (an array,
    # so any number of ids compiles alike).
    KnownCustomer.among = select(table).where(
        table.c.id == any_(bindparam("customer_ids", type_=ARRAY(UUID(as_uuid=True)))))
    return KnownCustomer


class CustomerDirectory:
    """Store methods; the store class sets `known_customers` (a known_customer_model)
    and has the unit of work's `session`."""
    known_customers = None

    def known_customer(self, customer_id):
        """{id, name, email, updated_at (, contacts)} as the directory knows the customer, or None."""
        return self.known_customers_among([customer_id]).get(customer_id)

    def known_customers_among(self, customer_ids):
        """{id: known_customer(id)} for the ids the directory knows, in one query."""
        rows = self.session.connection().execute(self.known_customers.among, {"customer_ids": list(customer_ids)})
        return {row.id: dict(row._mapping) for row in rows}

    def remember_customer(self, customer_id, name, email, updated_at, contacts=None):
        """Upsert; an older event never overwrites a newer one (events may arrive out of order).
        `contacts` is kept where the table has the column."""
        model = self.known_customers
        values = {"id": customer_id, "name": name, "email": email, "updated_at": updated_at}
        if hasattr(model, "contacts"):
            values["contacts"] = contacts
        statement = insert(model).values(**values)
        self.session.execute(statement.on_conflict_do_update(
            index_elements=["id"],
            set_={name: statement.excluded[name] for name in values if name != "id"},
            where=model.updated_at < statement.excluded.updated_at))


def remember_customer_event(uow, envelope):
    """Record a customer_created / customer_updated event in the directory, once per event."""
    customer = envelope["data"]
    with uow as tx:
        if tx.first_time(envelope["event_id"], "remember_customer"):
            tx.store.remember_customer(uuid.UUID(customer["id"]), customer["name"], customer["email"],
                                       datetime.fromisoformat(customer["updated_at"]), contacts_of(customer))


class KeepsCustomerDirectory:
    """A service that keeps the directory inherits its two handlers (its `uow`'s store
    is a CustomerDirectory)."""

    @reliable_event_handler("customer_service", "customer_created")
    def on_customer_created(self, envelope):
        remember_customer_event(self.uow, envelope)

    @reliable_event_handler("customer_service", "customer_updated")
    def on_customer_updated(self, envelope):
        remember_customer_event(self.uow, envelope)
