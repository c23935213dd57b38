"""From target weights to orders: discrete quantities, sells first, funding, child orders and
marketable limit prices."""

from __future__ import annotations

import pytest

from daemon.events import Side
from risk.market_rules import MarketRules
from risk.trade_plan import limit_price, plan_orders, split, weights_after

PRICES = {"BTC/USDT": 20_000.0, "ETH/USDT": 1_500.0, "DOGE/USDT": 0.06}
RULES = {s: MarketRules.synthetic(s, p, min_notional=10.0) for s, p in PRICES.items()}


def plan(positions: dict[str, float], cash: float, targets: dict[str, float],
         **kw: float) -> object:
    nav = cash + sum(q * PRICES[s] for s, q in positions.items())
    return plan_orders(nav=nav, cash=cash, positions=positions, prices=PRICES, targets=targets,
                       rules=RULES, min_trade_notional=kw.pop("min_trade_notional", 20.0),
                       fee_rate=0.001, **kw)


def test_sells_come_first_and_every_quantity_is_exchange_valid() -> None:
    p = plan({"BTC/USDT": 3.0, "ETH/USDT": 0.0}, 10_000.0,
             {"BTC/USDT": 0.3, "ETH/USDT": 0.4, "DOGE/USDT": 0.3})
    sides = [o.side for o in p.orders]  # type: ignore[attr-defined]
    assert sides == sorted(sides, key=lambda s: s is Side.BUY)  # every sell before any buy
    assert Side.SELL in sides and Side.BUY in sides
    for o in p.orders:  # type: ignore[attr-defined]
        assert RULES[o.symbol].violation(o.quantity, o.reference_price) is None


def test_buys_wait_for_sell_proceeds_when_cash_is_short() -> None:
    # all in BTC, target half ETH: the ETH buy cannot be paid before the BTC sell fills
    p = plan({"BTC/USDT": 5.0}, 0.0, {"BTC/USDT": 0.5, "ETH/USDT": 0.5})
    assert p.buys_deferred  # type: ignore[attr-defined]
    assert [o.side for o in p.orders] == [Side.SELL]  # type: ignore[attr-defined]


def test_buys_are_scaled_to_the_cash_held() -> None:
    p = plan({}, 1_000.0, {"BTC/USDT": 0.5, "ETH/USDT": 0.5})
    spent = sum(o.notional for o in p.orders) * 1.006  # type: ignore[attr-defined]
    assert spent <= 1_000.0 + 1e-9
    assert not p.buys_deferred  # type: ignore[attr-defined]  # nothing to sell: no later leg


def test_trades_below_the_minimum_notional_are_skipped() -> None:
    # 0.5% drift on 10,000 of NAV is a 50 trade: kept at 20, dropped at 100
    positions = {"ETH/USDT": 10_000 * 0.505 / 1_500.0}
    cash = 10_000 - positions["ETH/USDT"] * 1_500.0
    targets = {"ETH/USDT": 0.5}
    assert plan(positions, cash, targets, min_trade_notional=20.0).orders  # type: ignore[attr-defined]
    assert not plan(positions, cash, targets,  # type: ignore[attr-defined]
                    min_trade_notional=100.0).orders


def test_a_sell_never_leaves_unsellable_dust() -> None:
    # 15 of ETH, target 3: selling 12 would leave 3 < min notional 10, so all of it goes
    p = plan({"ETH/USDT": 0.01}, 0.0, {"ETH/USDT": 0.2}, min_trade_notional=10.0)
    assert [(o.side, o.quantity) for o in p.orders] == [(Side.SELL, 0.01)]  # type: ignore[attr-defined]


def test_large_orders_are_split_into_children_below_the_cap() -> None:
    p = plan({}, 100_000.0, {"BTC/USDT": 0.9}, max_child_notional=10_000.0)
    orders = p.orders  # type: ignore[attr-defined]
    assert len(orders) >= 9 and all(o.notional <= 10_000.0 for o in orders)
    assert sum(o.quantity for o in orders) == pytest.approx(
        RULES["BTC/USDT"].floor_qty(100_000 * 0.9 / 20_000.0), abs=1e-4)
    parent = orders[0].__class__("BTC/USDT", Side.BUY, 1.23456, 20_000.0)
    kids = split(parent, RULES["BTC/USDT"], 5_000.0)
    assert sum(k.quantity for k in kids) == pytest.approx(1.23456)
    assert all(k.notional <= 5_000.0 + 1e-9 for k in kids)


def test_weights_after_the_plan_reach_the_target() -> None:
    positions: dict[str, float] = {}
    p = plan(positions, 100_000.0, {"BTC/USDT": 0.5, "ETH/USDT": 0.3})
    after = weights_after(p, 100_000.0, positions, PRICES)  # type: ignore[arg-type]
    assert after["BTC/USDT"] == pytest.approx(0.5, abs=0.005)
    assert after["ETH/USDT"] == pytest.approx(0.3, abs=0.005)


@pytest.mark.parametrize("reference", [20_000.0, 1_523.37, 0.061234, 3.33333])
def test_limit_price_is_marketable_and_on_the_tick(reference: float) -> None:
    rule = MarketRules.synthetic("X/USDT", reference)
    buy = limit_price(Side.BUY, reference, 10.0, rule)
    sell = limit_price(Side.SELL, reference, 10.0, rule)
    assert rule.is_on_tick(buy) and rule.is_on_tick(sell)
    assert buy >= reference * 1.001 - 1e-12 and buy < reference * 1.001 + rule.price_tick
    assert sell <= reference * 0.999 + 1e-12 and sell > reference * 0.999 - rule.price_tick


def test_a_decision_is_trimmed_to_the_order_throttles_room() -> None:
    from risk.trade_plan import PlannedOrder, TradePlan, cap_order_count

    sells = [PlannedOrder("BTC/USDT", Side.SELL, 0.1, 20_000.0) for _ in range(3)]
    buys = [PlannedOrder("ETH/USDT", Side.BUY, 1.0, 1_500.0) for _ in range(4)]
    full = TradePlan(orders=[*sells, *buys], buys_deferred=False)
    roomy = cap_order_count(full, lambda symbol: 100)
    assert roomy is full
    # 5 in all, 2 of BTC: the plan's order (sells first) decides what goes now
    rooms = {None: 5, "BTC/USDT": 2, "ETH/USDT": 10}
    capped = cap_order_count(full, rooms.__getitem__)
    assert capped.orders == [*sells[:2], *buys[:3]]
    assert capped.buys_deferred  # the completion leg plans the cut buy again
    only_sells_cut = cap_order_count(TradePlan(orders=sells, buys_deferred=False),
                                     {None: 5, "BTC/USDT": 1}.__getitem__)
    assert only_sells_cut.orders == sells[:1] and not only_sells_cut.buys_deferred
    assert cap_order_count(full, lambda symbol: 0).orders == []
