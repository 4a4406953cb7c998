"""Inventory rules: plain Python, no I/O."""
import re
import uuid
from dataclasses import dataclass, replace

from common.contract.errors import (
    InsufficientStock,
    InvalidTransition,
    StockBelowReserved,
    UnknownSku,
    ValidationFailed,
)
from common.contract.schemas.base import load_or_raise
from common.contract.schemas.products import SKU_PATTERN
from inventory_service.schemas import ReserveInput


def reservation_plan(order_id, items):
    """(order UUID, [(sku, quantity)] in sku order) for a reserve call.

    Sku order is the lock order: concurrent reservations touching the same
    products lock them in the same sequence and cannot deadlock.
    """
    data = load_or_raise(ReserveInput, {"order_id": order_id, "items": items})
    skus = [item["sku"] for item in data["items"]]
    if len(set(skus)) != len(skus):
        raise ValidationFailed("Each sku may appear once.", {"items": ["Duplicate sku."]})
    plan = sorted((item["sku"], item["quantity"]) for item in data["items"])
    return data["order_id"], plan


def is_sku(value):
    return isinstance(value, str) and re.match(SKU_PATTERN, value) is not None


def parse_sku(value):
    if not is_sku(value):
        raise ValueError("not a sku")
    return value


def parse_order_id(value):
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ValidationFailed("Invalid order id.", {"order_id": ["Not a valid UUID."]}) from None


def check_all_known(plan, known_skus):
    unknown = [sku for sku, _ in plan if sku not in known_skus]
    if unknown:
        raise UnknownSku("Unknown sku: " + ", ".join(unknown), {"skus": unknown})


def shortage(plan, failed_sku, available_by_sku):
    """The InsufficientStock error: `failed_sku` first, then every other short sku."""
    requested = dict(plan)
    short = [
        {"sku": sku, "requested": requested[sku], "available": max(available_by_sku.get(sku, 0), 0)}
        for sku in [failed_sku] + [sku for sku, _ in plan if sku != failed_sku]
        if sku == failed_sku or available_by_sku.get(sku, 0) < requested[sku]
    ]
    first = short[0]
    return InsufficientStock(
        f"Not enough stock for {first['sku']}: {first['available']} available.",
        {**first, "items": short},
    )


@dataclass(frozen=True)
class Taken:
    """A plan taken whole. lines: (product after, quantity), each at the product's price;
    changed: (product after, available before, threshold before), as events need them."""
    lines: list
    changed: list


def allocate(plans, products, at):
    """Take each plan of `plans` in turn from `products` ({sku: product}, as locked), all of
    it or none: per plan, a Taken, or the refusal (UnknownSku, InsufficientStock). A plan
    sees the stock that the plans before it left, so no two plans can hold the same unit."""
    current, outcomes = dict(products), []
    for plan in plans:
        try:
            check_all_known(plan, current)
        except UnknownSku as unknown:
            outcomes.append(unknown)
            continue
        available = {sku: current[sku].available for sku, _ in plan}
        short = next((sku for sku, quantity in plan if available[sku] < quantity), None)
        if short is not None:
            outcomes.append(shortage(plan, short, available))
            continue
        lines, changed = [], []
        for sku, quantity in plan:
            before = current[sku]
            current[sku] = replace(before, reserved=before.reserved + quantity, updated_at=at)
            lines.append((current[sku], quantity))
            changed.append((current[sku], before.available, before.low_stock_threshold))
        outcomes.append(Taken(lines, changed))
    return outcomes


def check_can_release(reservation):
    if reservation.status == "committed":
        raise InvalidTransition("The reservation was committed (order shipped).",
                                {"order_id": str(reservation.order_id), "status": "committed"})


def check_can_commit(reservation):
    if reservation.status == "released":
        raise InvalidTransition("The reservation was released.",
                                {"order_id": str(reservation.order_id), "status": "released"})


def new_reservation_view(order_id, lines):
    """The view of a reservation just made: lines are (product, quantity)."""
    return {
        "order_id": str(order_id),
        "status": "reserved",
        "items": [{"sku": product.sku, "quantity": quantity, "unit_price": str(product.unit_price),
                   "currency": product.currency} for product, quantity in lines],
    }


def reservation_view(reservation, items):
    return {
        "order_id": str(reservation.order_id),
        "status": reservation.status,
        "items": [
            {"sku": item.sku, "quantity": item.quantity,
             "unit_price": str(item.unit_price), "currency": item.currency}
            for item in items
        ],
    }


def replacement_deltas(old_items, plan):
    """[(sku, new - old quantity)] for every sku whose quantity changes, in sku order."""
    old = {item.sku: item.quantity for item in old_items}
    new = dict(plan)
    return [(sku, new.get(sku, 0) - old.get(sku, 0))
            for sku in sorted(old.keys() | new.keys())
            if new.get(sku, 0) != old.get(sku, 0)]


def check_can_replace(reservation):
    if reservation.status != "reserved":
        raise InvalidTransition(f"The reservation was {reservation.status}.",
                                {"order_id": str(reservation.order_id), "status": reservation.status})


class ProductRules:
    """The rules of a product, whatever holds its row: the ORM model, the snapshot an
    UPDATE returns, the unit tests' fake (each has sku, stock, reserved, low_stock_threshold)."""

    @property
    def available(self):
        return self.stock - self.reserved

    def check_stock_change(self, changes):
        """Stock never goes below what orders have reserved."""
        if "stock" in changes and changes["stock"] < self.reserved:
            raise StockBelowReserved(
                f"Stock cannot go below the {self.reserved} units reserved by orders.",
                {"sku": self.sku, "stock": changes["stock"], "reserved": self.reserved})

    def fell_below_threshold(self, available_before, threshold_before):
        """True when the change that left the product so took its available stock below its threshold."""
        return self.available < self.low_stock_threshold and available_before >= threshold_before

    def came_back(self, available_before):
        """True when the change that left the product so brought its available stock back from 0."""
        return available_before <= 0 < self.available


def settled(product, quantity, final_status):
    """(product after, available before, threshold) of a settled reservation line: a release
    gave `quantity` back to available stock; a commit took it from stock and reserved alike."""
    available_before = product.available - quantity if final_status == "released" else product.available
    return product, available_before, product.low_stock_threshold


def refusal_event(order_id, plan, refusal):
    """The data of stock_reservation_failed: what was asked, and what was short (InsufficientStock's items)."""
    return {"order_id": str(order_id), "items": [{"sku": sku, "quantity": quantity} for sku, quantity in plan],
            "short": refusal.details["items"]}


def stock_event(reservation_view, products):
    """The data of stock_reserved / stock_released / stock_committed."""
    return {**reservation_view, "products": products}


def reconcile_action(order_status):
    """What a held reservation should become, given its order's status (None: no order)."""
    if order_status in (None, "cancelled"):
        return "release"
    if order_status in ("shipped", "delivered"):
        return "commit"
    return None
