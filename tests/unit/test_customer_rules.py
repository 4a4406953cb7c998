"""customer_service through its real entrypoints, on the in-memory store (no Postgres, no broker)."""
import uuid

import pytest
from nameko.testing.services import worker_factory

from common.contract.caller import Caller
from common.contract.errors import AlreadyExists, NotFound, ValidationFailed
from customer_service import domain
from customer_service import service as service_module
from customer_service.service import CustomerService
from tests.unit.fakes import SETTINGS, FakeUnitOfWork, InMemoryCustomerStore


def service(caller=Caller("admin-1", "admin"), store=None):
    return worker_factory(CustomerService, uow=FakeUnitOfWork(store or InMemoryCustomerStore()),
                          settings=SETTINGS, caller=caller)


def make(customers, name):
    return customers.create_customer({"name": name, "email": f"{name}@Example.com"})


def test_a_customer_is_made_once_per_attempt_with_its_event():
    customers = service()
    attempt = str(uuid.uuid4())
    first = customers.create_customer({"name": "Ada", "email": "Ada@Example.com"}, attempt_id=attempt)
    assert first["id"] == attempt and first["email"] == "ada@example.com"
    assert customers.create_customer({"name": "Ada", "email": "ada@example.com"}, attempt_id=attempt) == first
    assert customers.uow.event_types() == ["customer_created"]
    with pytest.raises(AlreadyExists):
        customers.create_customer({"name": "Ada", "email": "ADA@example.com"})


def test_lists_page_through_every_customer_oldest_first():
    customers = service()
    made = [make(customers, f"c{i}")["id"] for i in range(5)]
    first = customers.list_customers(limit=2)
    second = customers.list_customers(limit=2, cursor=first["next_cursor"])
    last = customers.list_customers(limit=2, cursor=second["next_cursor"])
    assert [c["id"] for page in (first, second, last) for c in page["items"]] == sorted(
        made, key=lambda i: (customers.get_customer(i)["created_at"], i))
    assert last["next_cursor"] is None


@pytest.mark.parametrize("limit, cursor, field", [(0, None, "limit"), (101, None, "limit"),
                                                  (20, "not-a-cursor", "cursor")])
def test_a_bad_page_request_names_its_field(limit, cursor, field):
    with pytest.raises(ValidationFailed) as refused:
        service().list_customers(limit=limit, cursor=cursor)
    assert field in refused.value.details


def test_a_customer_sees_only_their_own_record():
    store = InMemoryCustomerStore()
    admin = service(store=store)
    ada, grace = make(admin, "ada"), make(admin, "grace")
    as_ada = service(Caller(f"customer:{ada['id']}", "customer", ada["id"]), store)
    assert [c["id"] for c in as_ada.list_customers()["items"]] == [ada["id"]]
    with pytest.raises(NotFound):
        as_ada.get_customer(grace["id"])
    assert as_ada.update_customer(ada["id"], {"name": "Ada L."})["name"] == "Ada L."


def test_an_order_event_counts_once():
    customers = service()
    ada = make(customers, "ada")
    envelope = {"event_id": str(uuid.uuid4()), "data": {"customer_id": ada["id"]}}
    customers.on_order_created([envelope])
    customers.on_order_created([envelope])
    assert customers.get_customer(ada["id"])["orders_count"] == 1


def test_a_batch_of_order_events_counts_each_customer_s_orders():
    customers = service()
    ada, grace = make(customers, "ada"), make(customers, "grace")
    events = [{"event_id": str(uuid.uuid4()), "data": {"customer_id": customer["id"]}}
              for customer in (ada, grace, ada)]
    customers.on_order_created([*events, events[0], {"event_id": str(uuid.uuid4()),
                                                     "data": {"customer_id": "not-an-id"}}])
    assert [customers.get_customer(c["id"])["orders_count"] for c in (ada, grace)] == [2, 1]


def test_an_api_key_is_made_by_admins_for_a_customer_that_exists_and_kept_as_its_digest():
    from common.contract.caller import api_key_digest
    from common.contract.errors import Forbidden, UnknownCustomer

    store = InMemoryCustomerStore()
    customers = service(store=store)
    ada = make(customers, "ada")
    made = customers.create_api_key({"name": "sync", "role": "customer", "customer_id": ada["id"]})
    [row] = store.tables["api_keys"].values()
    assert row.key_digest == api_key_digest(made["key"]) and made["prefix"] == made["key"][:8]
    assert "key" not in customers.list_api_keys()["items"][0]
    with pytest.raises(UnknownCustomer):
        customers.create_api_key({"name": "sync", "role": "customer", "customer_id": str(uuid.uuid4())})
    with pytest.raises(Forbidden):
        service(Caller(f"customer:{ada['id']}", "customer", ada["id"]), store).create_api_key(
            {"name": "x", "role": "admin"})


def test_a_key_is_verified_by_its_digest_until_it_is_revoked():
    from common.contract.caller import api_key_digest, api_key_prefix
    from common.contract.errors import Unauthenticated

    store = InMemoryCustomerStore()
    admin = service(store=store)
    made = admin.create_api_key({"name": "sync", "role": "admin"})
    gateway = service(Caller("gateway", "service"), store)
    key = made["key"]
    assert gateway.verify_api_key(api_key_prefix(key), api_key_digest(key)) == {
        "id": made["id"], "role": "admin", "customer_id": None}
    assert store.tables["api_keys"][uuid.UUID(made["id"])].last_used_at is not None
    with pytest.raises(Unauthenticated):
        gateway.verify_api_key(api_key_prefix(key), api_key_digest(key + "x"))
    assert admin.revoke_api_key(made["id"])["revoked_at"] is not None
    with pytest.raises(Unauthenticated):
        gateway.verify_api_key(api_key_prefix(key), api_key_digest(key))
    with pytest.raises(NotFound):
        admin.revoke_api_key(str(uuid.uuid4()))


def test_a_phone_is_e164_checked_with_libphonenumber_and_preferences_change_one_by_one():
    customers = service()
    ada = make(customers, "ada")
    assert (ada["phone"], ada["notification_preferences"]) == (None, {"email": True, "sms": False, "push": False})
    changed = customers.update_customer(ada["id"], {"phone": "+44 7911 123456",
                                                    "notification_preferences": {"sms": True}})
    assert changed["phone"] == "+447911123456"
    assert changed["notification_preferences"] == {"email": True, "sms": True, "push": False}
    changed = customers.update_customer(ada["id"], {"notification_preferences": {"email": False}})
    assert changed["notification_preferences"] == {"email": False, "sms": True, "push": False}
    for bad in ("07700 900123", "+44 1", "call me", "+999123456789"):
        with pytest.raises(ValidationFailed) as refused:
            customers.update_customer(ada["id"], {"phone": bad})
        assert list(refused.value.details) == ["phone"]
    assert customers.update_customer(ada["id"], {"phone": None})["phone"] is None


SUBSCRIPTION = {"endpoint": "https://push.example/send/abc", "expirationTime": None,
                "keys": {"p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA", "auth": "tBHItJI5svbpez7KI4CCXg"}}


def test_push_subscriptions_are_the_customers_and_their_events_carry_the_keys(monkeypatch):
    monkeypatch.setattr(service_module, "_addresses", lambda url: ["93.184.216.34"])
    customers = service()
    ada, grace = make(customers, "ada"), make(customers, "grace")
    as_ada = service(Caller(f"customer:{ada['id']}", "customer", ada["id"]), customers.uow.store)
    saved = as_ada.add_push_subscription(ada["id"], SUBSCRIPTION)
    assert set(saved) == {"id", "endpoint", "created_at"} and saved["endpoint"] == SUBSCRIPTION["endpoint"]
    again = as_ada.add_push_subscription(ada["id"], {**SUBSCRIPTION, "keys": {"p256dh": "BB", "auth": "cc"}})
    assert again["id"] == saved["id"]
    with pytest.raises(NotFound):
        as_ada.add_push_subscription(grace["id"], SUBSCRIPTION)
    [(_, event)] = [(t, d) for t, d in as_ada.uow.events if t == "customer_updated"][-1:]
    assert event["push_subscriptions"] == [{**saved, "keys": {"p256dh": "BB", "auth": "cc"}}]
    assert customers.get_customer(ada["id"])["push_subscriptions"] == [saved]  # no keys in answers
    with pytest.raises(NotFound):
        as_ada.remove_push_subscription(grace["id"], saved["id"])
    as_ada.remove_push_subscription(ada["id"], saved["id"])
    assert customers.get_customer(ada["id"])["push_subscriptions"] == []
    assert customers.uow.events[-1][1]["push_subscriptions"] == []
    with pytest.raises(NotFound):
        as_ada.remove_push_subscription(ada["id"], saved["id"])


@pytest.mark.parametrize("url, addresses, allowed, refusal", [
    ("https://push.example/x", ["93.184.216.34"], (), None),
    ("http://push.example/x", ["93.184.216.34"], (), "Must be an https URL."),
    ("https://push.example/x", [], (), "push.example does not resolve."),
    ("https://push.example/x", ["10.0.0.7", "93.184.216.34"], (), "push.example resolves to a non-public address"),
    ("https://127.0.0.1:8443/x", ["127.0.0.1"], (), "127.0.0.1 resolves to a non-public address"),
    ("https://[fe80::1]/x", ["fe80::1"], (), "fe80::1 resolves to a non-public address"),
    ("http://127.0.0.1:8080/x", ["127.0.0.1"], ("127.0.0.1",), None),
])
def test_push_endpoints_follow_the_webhooks_url_rules(url, addresses, allowed, refusal):
    if refusal is None:
        domain.check_push_endpoint(url, addresses, allowed)
        return
    with pytest.raises(ValidationFailed) as refused:
        domain.check_push_endpoint(url, addresses, allowed)
    assert refused.value.details["endpoint"][0].startswith(refusal)
