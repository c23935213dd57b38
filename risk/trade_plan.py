"""From target weights to the orders that reach them: pure arithmetic, no I/O.

Quantities go through each market's lot step (always rounded towards trading less), trades too
small to matter or below the exchange's minimum are skipped, a sell that would leave unsellable
dust sells the whole position, and sells come first so their proceeds fund the buys. Buys are
scaled down together if the cash after sells cannot pay for them and their fees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from daemon.events import Side
from risk.market_rules import MarketRules


@dataclass(frozen=True, slots=True)
class PlannedOrder:
    symbol: str
    side: Side
    quantity: float
    reference_price: float

    @property
    def notional(self) -> float:
        return self.quantity * self.reference_price


def drift(current: Mapping[str, float], target: Mapping[str, float]) -> dict[str, float]:
    """current − target weight for every symbol in either map."""
    names = set(current) | set(target)
    return {s: current.get(s, 0.0) - target.get(s, 0.0) for s in sorted(names)}


@dataclass(frozen=True, slots=True)
class TradePlan:
    orders: list[PlannedOrder]
    buys_deferred: bool  # some buying waits for cash the planned sells will raise


def plan_orders(*, nav: float, cash: float, positions: Mapping[str, float],
                prices: Mapping[str, float], targets: Mapping[str, float],
                rules: Mapping[str, MarketRules], min_trade_notional: float,
                fee_rate: float, price_buffer: float = 0.005,
                max_child_notional: float = float("inf")) -> TradePlan:
    """Orders that move `positions` to `targets` × `nav`.

    Buys are funded only from cash already held (less fees and `price_buffer`, room for the
    price to move before the fill): sell proceeds arrive when the sells fill, so buying with
    them now would be refused by the venue. When that limits the buys, `buys_deferred` tells the
    caller to finish the job once the sells have filled."""
    sells: list[PlannedOrder] = []
    buys: list[PlannedOrder] = []
    for symbol in sorted(set(targets) | {s for s, q in positions.items() if q}):
        price = prices.get(symbol)
        rule = rules.get(symbol)
        if not price or rule is None:
            continue
        held = positions.get(symbol, 0.0)
        delta_value = targets.get(symbol, 0.0) * nav - held * price
        qty = rule.floor_qty(abs(delta_value) / price)
        if delta_value < 0:
            qty = min(qty, rule.floor_qty(held))
            left = held - qty
            if left > 0 and (left < rule.min_qty or left * price < rule.min_notional):
                qty = rule.floor_qty(held)  # never leave dust we could not sell later
        if qty <= 0 or qty * price < max(min_trade_notional, rule.min_notional) \
                or qty < rule.min_qty:
            continue
        order = PlannedOrder(symbol, Side.SELL if delta_value < 0 else Side.BUY, qty, price)
        (sells if order.side is Side.SELL else buys).append(order)
    budget = max(cash, 0.0)
    need = sum(o.notional for o in buys) * (1 + fee_rate + price_buffer)
    deferred = False
    if need > budget:
        deferred = bool(sells)
        scale = budget / need
        scaled = []
        for o in buys:
            rule = rules[o.symbol]
            qty = rule.floor_qty(o.quantity * scale)
            if qty > 0 and qty * o.reference_price >= max(min_trade_notional, rule.min_notional):
                scaled.append(PlannedOrder(o.symbol, o.side, qty, o.reference_price))
        buys = scaled
    orders = [child for o in sells + buys
              for child in split(o, rules[o.symbol], max_child_notional)]
    return TradePlan(orders=orders, buys_deferred=deferred)


def split(order: PlannedOrder, rule: MarketRules, max_notional: float) -> list[PlannedOrder]:
    """Cut an order into equal children no bigger than `max_notional` (the last child takes the
    lot-rounding remainder), so no single order trips the per-order notional limit."""
    if order.notional <= max_notional:
        return [order]
    n = math.ceil(order.notional / max_notional)
    child_qty = rule.floor_qty(order.quantity / n)
    if child_qty <= 0:
        return [order]
    children = [PlannedOrder(order.symbol, order.side, child_qty, order.reference_price)
                for _ in range(n - 1)]
    last = rule.floor_qty(order.quantity - child_qty * (n - 1))
    if last > 0:
        children.append(PlannedOrder(order.symbol, order.side, last, order.reference_price))
    return children
