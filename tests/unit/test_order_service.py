"""order_service's orchestration with its dependencies replaced (nameko worker_factory)."""
import uuid
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
from nameko.testing.services import worker_factory

from common.auth import Caller
from common.errors import InsufficientStock, NotFound, UnknownCustomer
from order_service.service import OrderService

CUSTOMER = {"id": str(uuid.uuid4()), "shipping_address": None}


def _order_input(quantity=2):
    return {"customer_id": CUSTOMER["id"], "items": [{"sku": "A", "quantity": quantity}]}


def _create_context(session, done_before=False, known=None):
    """What storage.create_context reads: no earlier run of this attempt; `known` in the directory or not."""
    session.connection.return_value.execute.return_value.one.return_value = SimpleNamespace(
        done_before=done_before, id=known and known["id"], shipping_address=known and known["shipping_address"])


def _service():
    service = worker_factory(OrderService, caller=Caller("tester", "admin"))
    _create_context(service.db.get_session.return_value)  # not in the local customer directory
    service.customer_rpc.get_customer.return_value = CUSTOMER
    service.inventory_rpc.reserve.side_effect = lambda order_id, lines: {
        "order_id": order_id, "status": "reserved",
        "items": [{"sku": "A", "quantity": 2, "unit_price": "29.99", "currency": "EUR"}]}
    return service


def _outbox_rows(session):
    """The outbox rows the service wrote through the session's connection: Outbox.add's
    INSERTs, or the event parameters of a combined statement (storage.insert_new_order)."""
    rows = []
    for call in session.connection.return_value.execute.call_args_list:
        statement, params = call.args[0], (call.args[1] if len(call.args) > 1 else {})
        if getattr(getattr(statement, "table", None), "name", None) == "outbox":
            rows.append(params or statement.compile().params)
        elif isinstance(params, dict) and "event_type" in params:
            rows.append(params)
    return rows


def test_create_order_persists_with_its_event_in_one_transaction():
    service = _service()
    order = service.create_order(_order_input())
    assert order["total_amount"] == "59.98"
    session = service.db.get_session.return_value
    [event] = _outbox_rows(session)
    assert event["event_type"] == "order_created" and event["payload"]["data"] == order
    service.outbox_relay.wake.assert_called_once()
    assert session.commit.call_count >= 1
    service.inventory_rpc.release.assert_not_called()


def test_unknown_customer_reserves_nothing():
    service = _service()
    service.customer_rpc.get_customer.side_effect = NotFound("no")
    with pytest.raises(UnknownCustomer):
        service.create_order(_order_input())
    service.inventory_rpc.reserve.assert_not_called()


def test_refused_reservation_writes_nothing():
    service = _service()
    service.inventory_rpc.reserve.side_effect = InsufficientStock("short", {"sku": "A", "available": 1})
    with pytest.raises(InsufficientStock):
        service.create_order(_order_input())
    session = service.db.get_session.return_value
    session.commit.assert_not_called()
    session.rollback.assert_called()
    assert _outbox_rows(session) == []
    service.inventory_rpc.release.assert_not_called()


def test_failed_persist_releases_the_reservation_and_emits_nothing():
    service = _service()
    session = MagicMock()
    _create_context(session)
    execute = session.connection.return_value.execute

    def fail_on_insert(statement, params=None):
        if params and "event_type" in params:
            raise RuntimeError("disk full")
        return execute.return_value

    execute.side_effect = fail_on_insert
    service.db.get_session.return_value = session
    with pytest.raises(RuntimeError):
        service.create_order(_order_input())
    reserved_for = service.inventory_rpc.reserve.call_args.args[0]
    service.inventory_rpc.release.assert_called_once_with(reserved_for)
    session.rollback.assert_called()
    service.outbox_relay.wake.assert_not_called()


def test_a_customer_known_from_events_needs_no_rpc():
    service = _service()
    _create_context(service.db.get_session.return_value,
                    known={"id": uuid.UUID(CUSTOMER["id"]), "shipping_address": {"line1": "x"}})
    order = service.create_order(_order_input())
    service.customer_rpc.get_customer.assert_not_called()
    assert order["shipping_address"] == {"line1": "x"}


def test_a_redelivered_attempt_returns_the_first_order_and_reserves_nothing():
    from datetime import datetime, timezone
    from decimal import Decimal

    from order_service.storage import Order

    service = _service()
    attempt = uuid.uuid4()
    committed = Order(id=attempt, customer_id=uuid.UUID(CUSTOMER["id"]), status="pending", currency="EUR",
                      total_amount=Decimal("59.98"), version=1, items=[],
                      created_at=datetime.now(timezone.utc), updated_at=datetime.now(timezone.utc))
    session = service.db.get_session.return_value
    _create_context(session, done_before=True)
    session.scalars.return_value.first.return_value = committed

    again = service.create_order(_order_input(), attempt_id=str(attempt))

    assert again["id"] == str(attempt)
    service.inventory_rpc.reserve.assert_not_called()
