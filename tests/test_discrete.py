from __future__ import annotations

import pytest

from risk.discrete import allocate
from risk.market_rules import MarketRules

PRICES = {"BTC/USDT": 20_000.0, "ETH/USDT": 1_500.0, "DOGE/USDT": 0.06}
RULES = {s: MarketRules.synthetic(s, p, min_notional=10.0) for s, p in PRICES.items()}


def on_step(sym: str, qty: float) -> bool:
    return RULES[sym].is_on_step(abs(qty))


def test_buys_respect_steps_and_report_leftover():
    d = allocate({"BTC/USDT": 0.5, "ETH/USDT": 0.3, "DOGE/USDT": 0.2}, PRICES, RULES,
                 cash=1_000.0)
    assert all(on_step(s, q) for s, q in d.orders.items())
    spent = sum(q * PRICES[s] for s, q in d.orders.items())
    assert d.leftover_cash == pytest.approx(1_000.0 - spent)
    assert 0 <= d.leftover_cash < 1_000.0 * 0.01
    assert all(RULES[s].violation(q, PRICES[s]) is None for s, q in d.orders.items())


def test_below_min_notional_is_skipped():
    d = allocate({"BTC/USDT": 0.99, "ETH/USDT": 0.01}, PRICES, RULES, cash=500.0)
    assert "ETH/USDT" not in d.orders and "min" in d.skipped["ETH/USDT"]


def test_sell_never_leaves_unsellable_dust():
    held = {"ETH/USDT": 1.0}  # 1,500 of ETH, target 1,492.5
    d = allocate({"ETH/USDT": 0.995}, PRICES, RULES, cash=0.0, holdings=held)
    assert "ETH/USDT" not in d.orders  # a 7.5 sell is below min notional: hold
    held = {"ETH/USDT": 0.01}  # 15 of ETH, target 0
    d = allocate({"ETH/USDT": 0.0, "BTC/USDT": 0.0}, PRICES, RULES, cash=0.0, holdings=held)
    assert d.orders["ETH/USDT"] == -0.01 and "ETH/USDT" not in d.holdings
    held = {"ETH/USDT": 0.01}
    d = allocate({"ETH/USDT": 0.2}, PRICES, RULES, cash=0.0, holdings=held)
    # target 3 of 15: selling 12 would leave 3 (< 10 min notional): sells everything instead
    assert d.orders["ETH/USDT"] == -0.01 and d.dust == {}


def test_existing_dust_is_reported():
    d = allocate({}, PRICES, RULES, cash=100.0, holdings={"DOGE/USDT": 50.0})  # 3 of DOGE
    assert d.orders == {} and d.dust == {"DOGE/USDT": 50.0}


def test_buys_scaled_to_cash_after_fees():
    d = allocate({"BTC/USDT": 0.6, "ETH/USDT": 0.4}, PRICES, RULES, cash=10_000.0,
                 fee_rate=0.01)
    assert d.leftover_cash >= 0
    cost = sum(q * PRICES[s] * 1.01 for s, q in d.orders.items())
    assert cost <= 10_000.0 + 1e-9
