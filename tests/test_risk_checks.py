"""The pure parts of the gate: sliding windows, the duplicate filter, the book and the
exposure rule (risk/throttle.py, risk/exposure.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from risk.exposure import Book, build_groups, exposure_violation
from risk.limits import RiskLimits, ThrottleLimits
from risk.throttle import DuplicateFilter, MessageThrottle, SlidingWindow


def test_sliding_window_counts_the_last_span_seconds() -> None:
    w = SlidingWindow(1.0)
    for t in (0.0, 0.3, 0.9):
        w.add(t)
    assert w.count(0.95) == 3
    assert w.count(1.0) == 2  # the event at 0.0 is exactly one span old: out
    assert w.count(5.0) == 0


def test_throttle_counts_what_is_recorded_only() -> None:
    th = MessageThrottle(ThrottleLimits(orders_per_second=2, symbol_orders_per_second=1,
                                        cancels_per_minute=1))
    assert th.check_order("A", 0.0) is None
    th.record_order("A", 0.0)
    v = th.check_order("A", 0.1)
    assert v is not None and v[0] == "THROTTLE_SYMBOL_ORDERS_PER_SECOND"
    assert th.check_order("B", 0.1) is None
    th.record_order("B", 0.1)
    v = th.check_order("C", 0.2)
    assert v is not None and v[0] == "THROTTLE_ORDERS_PER_SECOND"
    assert th.check_cancel("A", 0.0) is None
    th.record_cancel("A", 0.0)
    v = th.check_cancel("B", 30.0)
    assert v is not None and v[0] == "THROTTLE_CANCELS_PER_MINUTE"
    assert th.usage(0.5) == {"orders_last_second": 2, "orders_last_minute": 2,
                             "cancels_last_minute": 1}


def test_duplicate_filter_forgets_after_the_window() -> None:
    d = DuplicateFilter(2.0)
    d.record("A", "buy", 1.0, "c1", "d1", 0.0)
    assert d.check("A", "buy", 1.0, "c1", "d9", 1.0) is None  # retry
    assert d.check("A", "buy", 1.0, "c2", "d1", 1.0) is None  # sibling
    v = d.check("A", "buy", 1.0, "c2", "d2", 1.0)
    assert v is not None and v[1]["previous_client_order_id"] == "c1"
    assert d.check("A", "buy", 1.0, "c2", "", 1.0) is not None  # no decision id: no sibling
    assert d.check("A", "sell", 1.0, "c2", "d2", 1.0) is None
    assert d.check("A", "buy", 1.0, "c2", "d2", 2.0) is None
    assert not d._by_key  # evicted, memory bounded by the window


def test_book_nav_counts_positions_and_exposure_counts_pending() -> None:
    prices = np.array([100.0, 10.0, np.nan])
    book = Book.build(np.array([1.0, 0.0, 0.0]), np.array([0.0, 5.0, 0.0]), prices, 900.0)
    assert book.nav == 1000.0
    assert book.values.tolist() == [100.0, 50.0, 0.0]
    assert book.gross == 150.0 and book.net == 150.0
    unpriced = Book.build(np.array([1.0, 0.0, 2.0]), np.zeros(3), prices, 900.0)
    assert math.isnan(unpriced.nav) and not unpriced.nav_valid
    same = Book.build(np.array([1.0, 0.0, 0.0]), np.array([0.0, 5.0, 0.0]),
                      np.array([100.0, 10.0, 1.0]), 900.0, all_priced=True)
    assert same.nav == 1000.0


@pytest.mark.parametrize(("position", "order", "reduces"), [
    (2.0, -1.0, True), (2.0, -2.0, True), (2.0, -3.0, False), (2.0, 1.0, False),
    (-2.0, 1.0, True), (-2.0, -1.0, False), (0.0, -1.0, False), (0.0, 1.0, False)])
def test_a_reduction_moves_toward_zero_without_crossing(position: float, order: float,
                                                        reduces: bool) -> None:
    book = Book.build(np.array([position]), np.zeros(1), np.array([10.0]), 100.0)
    assert book.reduces(0, order) is reduces


def test_exposure_rule_rejects_only_an_increase_above_the_cap() -> None:
    limits = RiskLimits(max_asset_fraction=0.5, groups={"g": ["A", "B"]},
                        group_limits={"g": 0.7})
    groups = build_groups(limits, {"A": 0, "B": 1, "C": 2})
    prices = np.array([1.0, 1.0, 1.0])
    book = Book.build(np.array([60.0, 5.0, 0.0]), np.zeros(3), prices, 35.0)  # NAV 100
    v = exposure_violation(book, 0, 1.0, limits, groups, "A")
    assert v is not None and v[0] == "EXPOSURE_ASSET_ABOVE_MAX"
    assert exposure_violation(book, 0, -1.0, limits, groups, "A") is None
    v = exposure_violation(book, 1, 6.0, limits, groups, "B")
    assert v is not None and v[0] == "EXPOSURE_GROUP_ABOVE_MAX"
    assert v[1]["fraction"] == pytest.approx(0.71) and v[1]["fraction_before"] == 0.65
    assert exposure_violation(book, 2, 6.0, limits, groups, "C") is None
    v = exposure_violation(book, 2, 36.0, limits, groups, "C")
    assert v is not None and v[0] == "EXPOSURE_GROSS_ABOVE_MAX"


def test_groups_drop_symbols_the_gate_does_not_trade() -> None:
    limits = RiskLimits(groups={"g": ["A", "Z"], "empty": ["Y"]})
    (g,) = build_groups(limits, {"A": 0, "B": 1})
    assert g.name == "g" and g.members.tolist() == [0] and g.cap == 0.8


def test_order_room_is_what_check_order_would_still_pass() -> None:
    limits = ThrottleLimits(orders_per_second=5, orders_per_minute=8,
                            symbol_orders_per_second=3, symbol_orders_per_minute=4)
    history = [("A", 0.0), ("A", 0.1), ("A", 0.2), ("B", 1.5), ("B", 1.5)]

    def throttle(upto: int) -> MessageThrottle:
        th = MessageThrottle(limits)
        for symbol, at in history[:upto]:
            th.record_order(symbol, at)
        return th

    assert throttle(0).order_room(None, 0.0) == 5 and throttle(0).order_room("A", 0.0) == 3
    th = throttle(3)
    assert th.order_room("A", 0.5) == 0 and th.order_room("B", 0.5) == 2
    assert th.order_room(None, 0.5) == 2
    # a second on: the per-second windows are empty, the minute ones are not
    assert th.order_room("A", 1.5) == 1 and th.order_room(None, 1.5) == 5
    assert throttle(5).order_room(None, 1.6) == 3  # 8 a minute, 5 recorded
    # check_order passes exactly `order_room` more orders, for each symbol
    for symbol in ("A", "B", "C"):
        probe = throttle(5)
        room = probe.order_room(symbol, 1.6)
        for _ in range(room):
            assert probe.check_order(symbol, 1.6) is None
            probe.record_order(symbol, 1.6)
        assert probe.check_order(symbol, 1.6) is not None, symbol
