"""CustomerStore on Postgres and InMemoryCustomerStore (tests/unit/fakes.py) answer alike."""
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from common.contract.errors import AlreadyExists
from common.kit.consumers import first_times
from customer_service.storage import CustomerStore, layout
from tests.stores.conftest import BACKENDS, MEMORY
from tests.unit.fakes import FakeTransaction, InMemoryCustomerStore

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)
ADDRESS = {"line1": "12 Analytical Way", "city": "London", "postal_code": "N1 9GU", "country": "GB"}


@pytest.fixture(params=BACKENDS)
def store(request):
    if request.param == MEMORY:
        return InMemoryCustomerStore()
    return CustomerStore(request.getfixturevalue("session"))


def insert(store, name="Ada", at=T0, **fields):
    customer_id = uuid.uuid4()
    store.insert_customer(customer_id, {"name": name, "email": f"{name.lower()}@example.com", **fields}, at)
    return customer_id


def test_a_new_customer_reads_back_with_no_orders(store):
    customer_id = insert(store, shipping_address=ADDRESS)
    customer = store.get_customer(customer_id, lock=True)
    assert (customer.id, customer.name, customer.email, customer.shipping_address) == (
        customer_id, "Ada", "ada@example.com", ADDRESS)
    assert (customer.orders_count, customer.created_at, customer.updated_at) == (0, T0, T0)
    assert store.get_customer(insert(store, "Grace")).shipping_address is None
    assert store.get_customer(uuid.uuid4()) is None


def test_an_email_belongs_to_one_customer(store):
    insert(store, "Ada")
    insert(store, "Grace")
    with pytest.raises(AlreadyExists) as taken:
        store.insert_customer(uuid.uuid4(), {"name": "Other", "email": "ada@example.com"}, T0)
    assert taken.value.details == {"email": "ada@example.com"}


def test_an_email_taken_by_another_is_refused_on_update(store):
    insert(store, "Ada")
    grace = store.get_customer(insert(store, "Grace"), lock=True)
    with pytest.raises(AlreadyExists):
        store.update_customer(grace, {"email": "ada@example.com"}, T0 + timedelta(minutes=1))


def test_an_update_changes_the_fields_given_and_updated_at(store):
    customer = store.get_customer(insert(store, "Ada"), lock=True)
    store.update_customer(customer, {"name": "Ada L.", "email": "ada@example.com", "shipping_address": ADDRESS},
                          T0 + timedelta(minutes=1))
    again = store.get_customer(customer.id)
    assert (again.name, again.email, again.shipping_address) == ("Ada L.", "ada@example.com", ADDRESS)
    assert (again.created_at, again.updated_at) == (T0, T0 + timedelta(minutes=1))


def test_many_customers_are_found_by_id_and_unknown_ids_left_out(store):
    ada, grace = insert(store, "Ada"), insert(store, "Grace")
    assert sorted(c.id for c in store.get_customers([ada, uuid.uuid4(), grace])) == sorted([ada, grace])
    assert store.get_customers([]) == []


def test_lists_are_oldest_first_and_continue_after_a_key(store):
    ids = [insert(store, f"C{i}", at=T0 + timedelta(minutes=i)) for i in range(4)]
    assert [c.id for c in store.list_customers(10)] == ids
    assert [c.id for c in store.list_customers(2)] == ids[:2]
    assert [c.id for c in store.list_customers(10, (T0 + timedelta(minutes=1), ids[1]))] == ids[2:]
    assert [c.id for c in store.list_customers(10, only_id=ids[2])] == [ids[2]]
    assert store.list_customers(10, (T0 + timedelta(minutes=2), ids[2]), only_id=ids[1]) == []


def _orders_count(store, customer_id):
    if isinstance(store, CustomerStore):
        store.session.expire_all()  # the count is made by one SQL statement, beside the ORM
    return store.get_customer(customer_id).orders_count


def test_an_order_is_counted_once_per_event(store):
    ada = insert(store, "Ada")
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    store.count_orders_once([(first, ada)], "count_order")
    store.count_orders_once([(first, ada)], "count_order")  # redelivered
    store.count_orders_once([(second, ada)], "count_order")
    store.count_orders_once([(str(uuid.uuid4()), uuid.uuid4())], "count_order")  # no such customer: nothing
    assert _orders_count(store, ada) == 2


def test_a_batch_counts_each_customer_s_new_events_once(store):
    ada, grace = insert(store, "Ada"), insert(store, "Grace")
    seen = str(uuid.uuid4())
    store.count_orders_once([(seen, ada)], "count_order")
    new = [str(uuid.uuid4()) for _ in range(4)]
    store.count_orders_once([(new[0], ada), (seen, ada), (new[1], grace), (new[0], ada),  # twice in one batch
                             (new[2], ada), (new[3], None), (str(uuid.uuid4()), uuid.uuid4())], "count_order")
    assert (_orders_count(store, ada), _orders_count(store, grace)) == (3, 1)
    store.count_orders_once([], "count_order")
    store.count_orders_once([(new[2], ada), (new[1], grace)], "count_order")  # the batch redelivered
    assert (_orders_count(store, ada), _orders_count(store, grace)) == (3, 1)


@pytest.fixture(params=BACKENDS)
def record_first_times(request):
    """A transaction's first_times (common/kit/unit_of_work.py), on customer_service's processed_events."""
    if request.param == MEMORY:
        return FakeTransaction(InMemoryCustomerStore()).first_times
    session = request.getfixturevalue("session")
    return lambda event_ids, handler: first_times(session, layout.processed_events, event_ids, handler)


def test_first_times_names_the_events_of_a_batch_not_handled_before(record_first_times):
    seen, new, twice = (str(uuid.uuid4()) for _ in range(3))
    assert record_first_times([seen], "h") == {seen}
    assert record_first_times([seen, new, twice, twice], "h") == {new, twice}
    assert record_first_times([new, twice, seen], "h") == set()
    assert record_first_times([], "h") == set()


def _key(store, at=T0, prefix="oms_abcd", **fields):
    key_id = uuid.uuid4()
    store.insert_api_key(key_id, {"name": "sync", "role": "admin", **fields}, prefix, uuid.uuid4().hex * 2, at)
    return key_id


def test_api_keys_list_oldest_first_and_are_found_by_prefix_while_live(store):
    first, second = _key(store), _key(store, T0 + timedelta(seconds=1), prefix="oms_wxyz")
    assert [k.id for k in store.list_api_keys(10)] == [first, second]
    after = store.get_api_key(first)
    assert [k.id for k in store.list_api_keys(10, (after.created_at, after.id))] == [second]
    assert [k.id for k in store.live_api_keys_with_prefix("oms_abcd")] == [first]
    store.get_api_key(first, lock=True).revoked_at = T0 + timedelta(minutes=1)
    if hasattr(store, "session"):
        store.session.flush()
    assert store.live_api_keys_with_prefix("oms_abcd") == []
    assert store.get_api_key(first).revoked_at == T0 + timedelta(minutes=1)


def test_a_key_s_use_is_written_at_most_once_per_period(store):
    key_id = _key(store)
    store.mark_api_key_used(key_id, T0 + timedelta(seconds=10), T0 + timedelta(seconds=5))
    store.mark_api_key_used(key_id, T0 + timedelta(seconds=12), T0 + timedelta(seconds=7))  # within the period
    if hasattr(store, "session"):
        store.session.expire_all()
    assert store.get_api_key(key_id).last_used_at == T0 + timedelta(seconds=10)
    store.mark_api_key_used(key_id, T0 + timedelta(seconds=20), T0 + timedelta(seconds=15))
    if hasattr(store, "session"):
        store.session.expire_all()
    assert store.get_api_key(key_id).last_used_at == T0 + timedelta(seconds=20)


def test_push_subscriptions_are_one_per_endpoint_and_change_the_customer(store):
    customer = store.get_customer(insert(store, "Ada"), lock=True)
    assert customer.push_subscriptions == [] and customer.phone is None
    assert customer.notification_preferences == {"email": True, "sms": False, "push": False}
    first = store.save_push_subscription(customer, "https://push.example/a", {"p256dh": "k1", "auth": "a1"},
                                         T0 + timedelta(minutes=1))
    again = store.save_push_subscription(customer, "https://push.example/a", {"p256dh": "k2", "auth": "a2"},
                                         T0 + timedelta(minutes=2))
    other = store.save_push_subscription(customer, "https://push.example/b", {"p256dh": "k3", "auth": "a3"},
                                         T0 + timedelta(minutes=3))
    assert again.id == first.id and (again.p256dh, again.auth) == ("k2", "a2")
    read = store.get_customer(customer.id)
    assert [(sub.endpoint, sub.p256dh) for sub in read.push_subscriptions] == [
        ("https://push.example/a", "k2"), ("https://push.example/b", "k3")]
    assert read.updated_at == T0 + timedelta(minutes=3)
    assert store.remove_push_subscription(customer, first.id, T0 + timedelta(minutes=4))
    assert not store.remove_push_subscription(customer, first.id, T0 + timedelta(minutes=5))
    assert [sub.id for sub in store.get_customer(customer.id).push_subscriptions] == [other.id]
    assert store.get_customer(customer.id).updated_at == T0 + timedelta(minutes=4)
