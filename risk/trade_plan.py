"""From target weights to the orders that reach them: pure arithmetic, no I/O.

Quantities come from the discrete-allocation rules (`risk.discrete`): each market's lot step
(always rounded towards trading less), the exchange's minimums, and a sell that would leave
unsellable dust sells the whole position. On top: trades too small to matter are skipped, sells
come first so their proceeds fund the buys, buys are scaled down together if the cash already
held cannot pay for them and their fees, large orders are split into child orders, and marketable
limit prices are rounded to the tick.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from daemon.events import Side
from risk.discrete import allocate
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

    Lot steps, exchange minimums and the dust rule are `risk.discrete.allocate`'s; on top of it
    trades below `min_trade_notional` are dropped and buys are funded only from `cash` already
    held (less fees and `price_buffer`, room for the price to move before the fill): sell
    proceeds arrive when the sells fill, so buying with them now would be refused by the venue.
    When that limits the buys, `buys_deferred` tells the caller to finish the job once the sells
    have filled. Markets without a price or rules are left alone."""
    names = [s for s in sorted(set(targets) | {s for s, q in positions.items() if q})
             if prices.get(s) and s in rules]
    held = {s: positions[s] for s in names if positions.get(s)}
    invested = sum(q * prices[s] for s, q in held.items())
    # equity = nav: cash net of what working orders will pay or raise (positions count them)
    wanted = allocate({s: targets.get(s, 0.0) for s in names}, prices, rules,
                      cash=nav - invested, holdings=held, fee_rate=fee_rate)
    sells: list[PlannedOrder] = []
    buys: list[PlannedOrder] = []
    for symbol, signed in wanted.orders.items():
        order = PlannedOrder(symbol, Side.BUY if signed > 0 else Side.SELL, abs(signed),
                             prices[symbol])
        if order.notional < min_trade_notional:
            continue
        (buys if order.side is Side.BUY else sells).append(order)
    sells.sort(key=lambda o: o.symbol)
    buys.sort(key=lambda o: o.symbol)
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
            if qty > 0 and qty >= rule.min_qty \
                    and qty * o.reference_price >= max(min_trade_notional, rule.min_notional):
                scaled.append(PlannedOrder(o.symbol, o.side, qty, o.reference_price))
        buys = scaled
    orders = [child for o in sells + buys
              for child in split(o, rules[o.symbol], max_child_notional)]
    return TradePlan(orders=orders, buys_deferred=deferred)


def weights_after(plan: TradePlan, nav: float, positions: Mapping[str, float],
                  prices: Mapping[str, float]) -> dict[str, float]:
    """Weights once every planned order fills at its reference price (fees ignored): what the
    plan really reaches after lot rounding and skipped small trades."""
    qty = dict(positions)
    for o in plan.orders:
        qty[o.symbol] = qty.get(o.symbol, 0.0) + (o.quantity if o.side is Side.BUY
                                                  else -o.quantity)
    if nav <= 0:
        return {s: 0.0 for s in qty}
    return {s: q * prices.get(s, 0.0) / nav for s, q in qty.items()}


def limit_price(side: Side, reference: float, offset_bps: float, rule: MarketRules) -> float:
    """A marketable limit: `offset_bps` through the reference (above it for a buy, below for a
    sell), rounded to the tick away from the market so rounding never eats the offset."""
    raw = reference * (1 + offset_bps / 10_000.0 if side is Side.BUY else
                       1 - offset_bps / 10_000.0)
    price = rule.round_price(raw)
    if side is Side.BUY and price < raw:
        price = rule.round_price(price + rule.price_tick)
    elif side is Side.SELL and price > raw:
        price = rule.round_price(price - rule.price_tick)
    return price


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


def cap_participation(plan: TradePlan, cap: Callable[[str], float],
                      rules: Mapping[str, MarketRules], min_trade_notional: float) -> TradePlan:
    """Trim each symbol's orders (children in plan order) so that together they trade at most
    `cap(symbol)`, on the lot step; a child cut below the exchange's or our minimum is dropped.
    The drift left over is traded by later decisions, a bar's participation at a time."""
    left: dict[str, float] = {}
    kept: list[PlannedOrder] = []
    for order in plan.orders:
        room = left.setdefault(order.symbol, cap(order.symbol))
        if order.quantity <= room:
            kept.append(order)
            left[order.symbol] = room - order.quantity
            continue
        rule = rules[order.symbol]
        qty = rule.floor_qty(room)
        left[order.symbol] = 0.0
        if qty >= rule.min_qty and qty > 0 \
                and qty * order.reference_price >= max(min_trade_notional, rule.min_notional):
            kept.append(PlannedOrder(order.symbol, order.side, qty, order.reference_price))
    if len(kept) == len(plan.orders) and all(a is b for a, b in zip(kept, plan.orders,
                                                                    strict=True)):
        return plan
    return TradePlan(orders=kept, buys_deferred=plan.buys_deferred)



def cap_order_count(plan: TradePlan, room: Callable[[str | None], int]) -> TradePlan:
    """Keep the plan's orders, in plan order (sells first), while the order throttles have room
    for them: `room(None)` orders in all, `room(symbol)` of each symbol. Buys cut are deferred
    (the decision's completion plans them again at the next bar); the drift of sells cut is
    traded by later decisions."""
    total = room(None)
    left: dict[str, int] = {}
    kept: list[PlannedOrder] = []
    buys_cut = False
    for order in plan.orders:
        n = left.get(order.symbol)
        if n is None:
            n = left[order.symbol] = room(order.symbol)
        if total > 0 and n > 0:
            kept.append(order)
            total -= 1
            left[order.symbol] = n - 1
        elif order.side is Side.BUY:
            buys_cut = True
    if len(kept) == len(plan.orders):
        return plan
    return TradePlan(orders=kept, buys_deferred=plan.buys_deferred or buys_cut)
