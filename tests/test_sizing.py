from __future__ import annotations

import pytest

from risk import sizing


def test_fixed_fractional_risks_r_of_equity():
    # 1% of 10k at risk, stop 5% below entry: 2,000 notional = 0.2 of equity
    f = sizing.fixed_fractional(10_000, 0.01, entry=100.0, stop=95.0)
    assert f == pytest.approx(0.2)
    qty = sizing.fixed_fractional_qty(10_000, 0.01, entry=100.0, stop=95.0)
    assert qty * (100.0 - 95.0) == pytest.approx(100.0)  # the loss at the stop is R


def test_fixed_fractional_capped():
    assert sizing.fixed_fractional(10_000, 0.02, 100.0, 99.9, cap=0.5) == 0.5
    assert sizing.fixed_fractional(10_000, 0.02, 100.0, 100.0, cap=0.5) == 0.5
    assert sizing.fixed_fractional(0, 0.02, 100.0, 90.0) == 0.0


def test_kelly_binary():
    # p = 0.6, even odds: f* = 0.2
    assert sizing.kelly_binary(0.6, 1.0) == pytest.approx(0.2)
    assert sizing.kelly_binary(0.6, 1.0, fraction=0.5) == pytest.approx(0.1)
    assert sizing.kelly_binary(0.4, 1.0) == 0.0  # no edge, no bet
    assert sizing.kelly_binary(0.9, 3.0, cap=0.25) == 0.25


def test_kelly_from_trades():
    pnls = [2.0, 2.0, -1.0, 2.0, -1.0]  # p = 0.6, b = 2: f = (2*0.6 - 0.4) / 2 = 0.4
    assert sizing.kelly_from_trades(pnls) == pytest.approx(0.4)
    assert sizing.kelly_from_trades([1.0, 2.0]) == 0.0


def test_kelly_continuous():
    assert sizing.kelly_continuous(0.001, 0.0004) == pytest.approx(1.0, rel=1e-12)
    assert sizing.kelly_continuous(0.0005, 0.0004, fraction=0.5) == pytest.approx(0.625)
    assert sizing.kelly_continuous(0.01, 0.0004, cap=2.0) == 2.0
    assert sizing.kelly_continuous(-0.01, 0.0004) == 0.0
