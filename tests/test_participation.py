"""Participation: one decision trades at most the gate's share of recent bar volume per symbol,
and the rest of the drift follows on later bars, instead of orders the gate refuses."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from daemon.app import Daemon
from daemon.events import Side
from risk.market_rules import MarketRules
from risk.trade_plan import PlannedOrder, TradePlan, cap_participation
from tests.test_slice import fast_config

RULES = {"BTC/USDT": MarketRules("BTC/USDT", "BTC", "USDT", 0.001, 0.01, 0.001, 1e9, 10.0),
         "ETH/USDT": MarketRules("ETH/USDT", "ETH", "USDT", 0.01, 0.01, 0.01, 1e9, 10.0)}


def plan(*orders: tuple[str, Side, float, float]) -> TradePlan:
    return TradePlan([PlannedOrder(*o) for o in orders], buys_deferred=False)


def test_children_together_stay_within_the_cap() -> None:
    p = plan(("BTC/USDT", Side.BUY, 0.4, 20_000.0), ("BTC/USDT", Side.BUY, 0.4, 20_000.0),
             ("BTC/USDT", Side.BUY, 0.4, 20_000.0), ("ETH/USDT", Side.SELL, 2.0, 1_500.0))
    out = cap_participation(p, {"BTC/USDT": 0.7555, "ETH/USDT": 10.0}.__getitem__, RULES, 20.0)
    btc = [o.quantity for o in out.orders if o.symbol == "BTC/USDT"]
    assert btc == [0.4, pytest.approx(0.355)]  # 0.3555 floored to the 0.001 lot
    assert sum(btc) <= 0.7555
    assert [o.quantity for o in out.orders if o.symbol == "ETH/USDT"] == [2.0]


def test_a_cut_below_the_minimum_is_dropped_and_an_uncapped_plan_is_untouched() -> None:
    p = plan(("BTC/USDT", Side.SELL, 0.5, 20_000.0))
    assert cap_participation(p, lambda s: 0.0005, RULES, 20.0).orders == []  # < 1 lot
    assert cap_participation(p, lambda s: float("inf"), RULES, 20.0) is p


async def test_thin_market_trades_in_slices_without_volume_refusals(tmp_path: Path) -> None:
    cfg = fast_config(tmp_path)
    # a market so thin that the first deployment is several times one bar's allowed share
    sim = replace(cfg.market.simulated, daily_volume_quote=2_000_000.0)
    risk = replace(cfg.risk, max_volume_share=0.05)
    cfg = replace(cfg, market=replace(cfg.market, simulated=sim), risk=risk)
    daemon = Daemon(cfg)
    summary = await daemon.run(max_bars=250)
    assert summary.rejections_by_code.get("VOLUME_SHARE_ABOVE_MAX", 0) == 0
    # it still got invested, a slice a decision
    assert summary.rebalances >= 3
    invested = sum(summary.weights.values())
    assert invested > 0.8
