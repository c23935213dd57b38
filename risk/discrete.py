"""Discrete allocation: from target weights to exchange-valid order quantities.

Every quantity is floored to the market's lot step (MarketRules.floor_qty) and must clear its
minimum quantity and minimum notional; orders that cannot are skipped with a reason. A sell that
would leave a remainder below the minimums sells the whole holding instead, because such a
remainder could never be sold later (dust). Sells are counted before buys, buys are scaled down
if they would overdraw the cash, and the cash left over is reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from risk.market_rules import MarketRules


@dataclass(frozen=True)
class DiscreteAllocation:
    orders: dict[str, float]  # signed base quantity per market: + buy, - sell
    holdings: dict[str, float]  # quantities held once every order fills
    leftover_cash: float  # quote currency not invested after the orders
    skipped: dict[str, str] = field(default_factory=dict)  # market -> why no order
    dust: dict[str, float] = field(default_factory=dict)  # holdings too small to ever sell


def _tradable(rules: MarketRules, qty: float, price: float) -> bool:
    return qty > 0 and qty >= rules.min_qty and qty * price >= rules.min_notional


def allocate(weights: Mapping[str, float], prices: Mapping[str, float],
             rules: Mapping[str, MarketRules], cash: float,
             holdings: Mapping[str, float] | None = None, fee_rate: float = 0.0
             ) -> DiscreteAllocation:
    """Orders taking `holdings` (base quantities) and `cash` (quote) to `weights` of equity.

    Markets held but absent from `weights` are targeted at zero."""
    held = dict(holdings or {})
    equity = cash + sum(q * prices[s] for s, q in held.items())
    orders: dict[str, float] = {}
    skipped: dict[str, str] = {}
    dust: dict[str, float] = {}
    buys: dict[str, float] = {}
    cash_after_sells = cash
    for sym in dict.fromkeys([*weights, *held]):
        r, px, have = rules[sym], prices[sym], held.get(sym, 0.0)
        target = r.floor_qty(max(weights.get(sym, 0.0), 0.0) * equity / px)
        if target < have:
            qty = r.floor_qty(have - target)
            if not _tradable(r, have - qty, px):
                qty = r.floor_qty(have)  # sell everything rather than strand a remainder
            qty = min(qty, r.max_qty)
            if _tradable(r, qty, px):
                orders[sym] = -qty
                cash_after_sells += qty * px * (1.0 - fee_rate)
            else:
                skipped[sym] = "sell below min qty/notional"
            left = round(have + orders.get(sym, 0.0), 12)
            if left > 0 and not _tradable(r, left, px):
                dust[sym] = left
        elif target > have:
            buys[sym] = min(r.floor_qty(target - have), r.max_qty)
    cost = sum(q * prices[s] * (1.0 + fee_rate) for s, q in buys.items())
    # buys sized on mark prices may overdraw after fees/rounding of sells: shrink them together
    scale = min(1.0, cash_after_sells / cost) if cost > 0 else 1.0
    spent = 0.0
    for sym, qty in buys.items():
        r, px = rules[sym], prices[sym]
        qty = r.floor_qty(qty * scale) if scale < 1.0 else qty
        if _tradable(r, qty, px):
            orders[sym] = qty
            spent += qty * px * (1.0 + fee_rate)
        else:
            skipped[sym] = "buy below min qty/notional"
    keys = dict.fromkeys([*held, *orders])
    final = {s: round(held.get(s, 0.0) + orders.get(s, 0.0), 12) for s in keys}
    return DiscreteAllocation(orders=orders, holdings={s: q for s, q in final.items() if q > 0},
                              leftover_cash=cash_after_sells - spent, skipped=skipped, dust=dust)
