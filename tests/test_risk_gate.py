"""The pre-trade risk gate (daemon/risk_gate.py) driven through its bus handlers with a fake
clock, a fake OMS and a real Portfolio: every reason code, the book it judges, the per-bar
work, the trading state and its triggers. Nothing here sleeps or reads the wall clock."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.events import (
    Bar,
    BarsClosed,
    Fill,
    OrderApproved,
    OrderIntent,
    OrderRejected,
    OrderType,
    RiskRejected,
    Side,
    TradingStateChanged,
)
from daemon.portfolio import Portfolio
from daemon.risk_gate import RiskGate
from daemon.trading_state import TradingState
from risk import var as var_module
from risk.checks import Denial, evaluate
from risk.limits import RiskLimits, StateLimits, ThrottleLimits
from risk.market_rules import MarketRules
from risk.var import VarConfig

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
START = {"BTC/USDT": 30_000.0, "ETH/USDT": 2_000.0, "SOL/USDT": 40.0}
# base units per bar: ~3M quote each, so 2% of a bar is ~60k, above the notional cap
VOLUME = {"BTC/USDT": 100.0, "ETH/USDT": 1_500.0, "SOL/USDT": 75_000.0}
INTERVAL = 3600


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def mono(self) -> float:
        return self.t

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.t)


class FakeBus:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.tasks: list[asyncio.Future[Any]] = []

    def publish(self, event: Any) -> None:
        self.events.append(event)

    def track(self, coro: Any, name: str) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class FakeOMS:
    def __init__(self) -> None:
        self.orders: dict[str, Any] = {}
        self.halted_reason: str | None = None
        self.working: dict[str, float] = {}
        self.cancelled: list[str] = []
        self.cancel_all_calls: list[str] = []

    def working_quantity(self) -> dict[str, float]:
        return dict(self.working)

    async def cancel(self, client_order_id: str, reason: str) -> None:
        self.cancelled.append(client_order_id)

    async def cancel_all(self, reason: str) -> int:
        self.cancel_all_calls.append(reason)
        return 0


class Harness:
    """A gate on three symbols, warmed up with `warmup` bars of a seeded random walk (0.5% per
    bar), so prices, volumes, rules and a VaR model exist."""

    def __init__(self, limits: RiskLimits | None = None, *, cash: float = 100_000.0,
                 warmup: int = 40, journal: Any = None, seed: int = 3) -> None:
        self.clock = FakeClock()
        self.bus = FakeBus()
        self.oms = FakeOMS()
        self.portfolio = Portfolio(quote="USDT", cash=cash)
        self.rules = {s: MarketRules.synthetic(s, p) for s, p in START.items()}
        self.venue_rules = dict(self.rules)  # what venue.markets() answers
        self.limits = limits or RiskLimits()
        self.gate = RiskGate(self.bus, self.limits, self.clock.now,  # type: ignore[arg-type]
                             symbols=SYMBOLS, portfolio=self.portfolio, oms=self.oms,
                             markets=lambda: self.venue_rules, journal=journal,
                             interval_s=INTERVAL, monotonic=self.clock.mono)
        self.rng = np.random.default_rng(seed)
        self.prices = dict(START)
        self.bar_no = 0
        self.seq = 0
        for _ in range(warmup):
            self.step()

    @property
    def ts(self) -> datetime:
        return T0 + timedelta(seconds=INTERVAL * self.bar_no)

    def step(self, moves: dict[str, float] | None = None, symbols: list[str] | None = None,
             advance: float = INTERVAL) -> None:
        """One bar per symbol (`moves`: return per symbol, else a random walk), BarsClosed."""
        self.clock.t += advance
        self.bar_no += 1
        for s in symbols or SYMBOLS:
            r = (moves or {}).get(s, float(self.rng.normal(0.0, 0.005)))
            self.prices[s] = float(self.rules[s].round_price(self.prices[s] * (1.0 + r)))
            p = self.prices[s]
            self.gate.on_bar(Bar(s, self.ts, p, p, p, p, VOLUME[s], INTERVAL))
        self.gate.on_bars_closed(BarsClosed(ts=self.ts, count=len(symbols or SYMBOLS)))

    def qty(self, symbol: str, value: float) -> float:
        return self.rules[symbol].floor_qty(value / self.prices[symbol])

    def hold(self, **values: float) -> None:
        """Positions worth `values` (quote) at current prices, paid from cash."""
        for key, value in values.items():
            s = f"{key}/USDT"
            q = self.qty(s, value)
            self.portfolio.positions[s] = q
            self.portfolio.cash -= q * self.prices[s]

    def intent(self, symbol: str = "BTC/USDT", side: Side = Side.BUY,
               qty: float | None = None, value: float = 3_000.0, **kw: Any) -> OrderIntent:
        self.seq += 1
        # sized on BTC when the symbol is one the gate does not know (or not a string)
        known = symbol if isinstance(symbol, str) and symbol in self.rules else "BTC/USDT"
        fields: dict[str, Any] = dict(
            client_order_id=f"t-{self.seq}", symbol=symbol, side=side,
            quantity=self.qty(known, value) if qty is None else qty,
            order_type=OrderType.MARKET, reference_price=self.prices[known],
            ts=self.ts, decision_id=f"d{self.seq}")
        fields.update(kw)
        return OrderIntent(**fields)

    def submit(self, intent: OrderIntent | None = None, **kw: Any) -> RiskRejected | None:
        """None if approved, else the RiskRejected event."""
        intent = intent or self.intent(**kw)
        before = len(self.bus.events)
        self.gate.on_intent(intent)
        new = self.bus.events[before:]
        decisions = [e for e in new if isinstance(e, OrderApproved | RiskRejected)]
        assert len(decisions) == 1, new
        return decisions[0] if isinstance(decisions[0], RiskRejected) else None

    def code(self, intent: OrderIntent | None = None, **kw: Any) -> str | None:
        out = self.submit(intent, **kw)
        return None if out is None else out.code

    def take_in(self) -> None:
        """The OMS registers every approved order (as its worker would)."""
        for e in self.bus.of(OrderApproved):
            self.oms.orders[e.intent.client_order_id] = e


def limits(**kw: Any) -> RiskLimits:
    return replace(RiskLimits(), **kw)


# ----------------------------------------------------------------------- the happy path


def test_a_sound_order_is_approved_and_published() -> None:
    h = Harness()
    intent = h.intent()
    assert h.submit(intent) is None
    approved = h.bus.of(OrderApproved)
    assert [e.intent for e in approved] == [intent]
    assert h.gate.approved == 1 and not h.gate.rejections


# ----------------------------------------------------------------------- bad orders


@pytest.mark.parametrize(("change", "code"), [
    ({"quantity": math.nan}, "ORDER_BAD_QUANTITY"),
    ({"quantity": math.inf}, "ORDER_BAD_QUANTITY"),
    ({"quantity": 0.0}, "ORDER_BAD_QUANTITY"),
    ({"quantity": -0.1}, "ORDER_BAD_QUANTITY"),
    ({"quantity": "0.1"}, "ORDER_BAD_QUANTITY"),
    ({"quantity": True}, "ORDER_BAD_QUANTITY"),
    ({"reference_price": math.nan}, "ORDER_BAD_PRICE"),
    ({"reference_price": -1.0}, "ORDER_BAD_PRICE"),
    ({"reference_price": None}, "ORDER_BAD_PRICE"),
    ({"order_type": OrderType.LIMIT, "limit_price": None}, "ORDER_BAD_PRICE"),
    ({"order_type": OrderType.LIMIT, "limit_price": math.inf}, "ORDER_BAD_PRICE"),
    ({"order_type": OrderType.LIMIT, "limit_price": 0.0}, "ORDER_BAD_PRICE"),
    ({"symbol": "DOGE/USDT"}, "ORDER_UNKNOWN_SYMBOL"),
    ({"symbol": ["BTC/USDT"]}, "ORDER_UNKNOWN_SYMBOL"),
    ({"side": "buy"}, "ORDER_BAD_SIDE"),  # equal to Side.BUY, but not one: fails closed
    ({"side": "short"}, "ORDER_BAD_SIDE"),
    ({"side": None}, "ORDER_BAD_SIDE"),
    ({"order_type": "stop"}, "ORDER_BAD_TYPE"),
    ({"client_order_id": ""}, "ORDER_BAD_CLIENT_ID"),
    ({"client_order_id": None}, "ORDER_BAD_CLIENT_ID"),
])
def test_bad_orders_are_rejected_with_a_reason_and_the_gate_never_raises(
        change: dict[str, Any], code: str) -> None:
    h = Harness()
    out = h.submit(h.intent(**change))
    assert out is not None and out.code == code, out
    assert not h.bus.of(OrderApproved)


def test_an_unexpected_error_is_a_rejection_not_an_exception(
        monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()

    def broken() -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(h.gate, "_build_book", broken)
    out = h.submit()
    assert out is not None and out.code == "GATE_INTERNAL_ERROR"
    assert "boom" in out.context["error"]
    assert h.gate.errors == 1


def test_a_check_that_raises_becomes_gate_check_failed() -> None:
    h = Harness()

    def exploding(intent: OrderIntent, ctx: Any) -> Denial | None:
        raise ZeroDivisionError("x")

    denial = evaluate(h.intent(), h.gate.ctx, (exploding,))
    assert denial == Denial("GATE_CHECK_FAILED", {"check": "exploding",
                                                  "error": "ZeroDivisionError: x"})


def test_bad_bars_are_ignored_not_fatal() -> None:
    h = Harness()
    before = h.gate.market.last_close["BTC/USDT"]
    for close in (math.nan, -5.0, 0.0, math.inf):
        h.gate.on_bar(Bar("BTC/USDT", h.ts, close, close, close, close, 1.0, INTERVAL))
    h.gate.on_bar(Bar("DOGE/USDT", h.ts, 1, 1, 1, 1, 1.0, INTERVAL))
    assert h.gate.market.last_close["BTC/USDT"] == before
    assert h.gate.errors == 0


# ----------------------------------------------------------------------- order level


def test_collar_has_separate_buy_and_sell_tolerances() -> None:
    h = Harness(limits(price_collar_buy_pct=2.0, price_collar_sell_pct=8.0))
    h.hold(BTC=20_000.0)
    last = h.prices["BTC/USDT"]
    far = h.rules["BTC/USDT"].round_price(last * 1.05)
    out = h.submit(h.intent(reference_price=far))
    assert out is not None and out.code == "PRICE_OUTSIDE_COLLAR"
    assert out.context["collar_pct"] == 2.0 and out.context["side"] == "buy"
    assert out.context["deviation_pct"] == pytest.approx(5.0, abs=0.01)
    low = h.rules["BTC/USDT"].round_price(last * 0.95)
    assert h.code(h.intent(side=Side.SELL, reference_price=low)) is None
    lower = h.rules["BTC/USDT"].round_price(last * 0.90)
    assert h.code(h.intent(side=Side.SELL, reference_price=lower)) == "PRICE_OUTSIDE_COLLAR"
    # a limit order is judged at its limit price
    assert h.code(h.intent(order_type=OrderType.LIMIT, limit_price=far)) == \
        "PRICE_OUTSIDE_COLLAR"


def test_max_notional_and_max_quantity() -> None:
    h = Harness(limits(max_order_notional=10_000.0, max_order_qty={"ETH/USDT": 2.0}))
    out = h.submit(value=12_000.0)
    assert out is not None and out.code == "QUANTITY_ABOVE_MAX"
    assert out.context["source"] == "max_order_notional/last_close"
    # a wrong (low) reference price hides the notional, the quantity cap still holds
    q = h.qty("BTC/USDT", 12_000.0)
    low = h.intent(qty=q, reference_price=h.prices["BTC/USDT"] * 0.5, value=0)
    assert h.code(low) in ("QUANTITY_ABOVE_MAX", "PRICE_OUTSIDE_COLLAR")
    out = h.submit(h.intent("ETH/USDT", qty=3.0))
    assert out is not None and out.code == "QUANTITY_ABOVE_MAX"
    assert out.context["max"] == 2.0 and out.context["source"] == "max_order_qty"
    # notional at the order's own price: a limit above the last close
    h2 = Harness(limits(max_order_notional=10_000.0, price_collar_buy_pct=10.0))
    last = h2.prices["BTC/USDT"]
    q = h2.qty("BTC/USDT", 9_900.0)
    limit = h2.rules["BTC/USDT"].round_price(last * 1.05)
    out = h2.submit(h2.intent(qty=q, order_type=OrderType.LIMIT, limit_price=limit))
    assert out is not None and out.code == "NOTIONAL_ABOVE_MAX"
    assert out.context["notional"] > 10_000.0


def test_share_of_average_bar_volume() -> None:
    h = Harness(limits(max_volume_share=0.01, volume_window_bars=5,
                       max_order_notional=100_000.0))
    # average BTC volume 100 per bar: 1% is 1 BTC
    out = h.submit(qty=1.2)
    assert out is not None and out.code == "VOLUME_SHARE_ABOVE_MAX"
    assert out.context["avg_bar_volume"] == pytest.approx(100.0)
    assert out.context["share"] == pytest.approx(0.012)
    assert h.code(qty=0.5) is None
    # five bars without volume: nothing to size against
    for _ in range(5):
        h.clock.t += INTERVAL
        h.bar_no += 1
        for s in SYMBOLS:
            p = h.prices[s]
            h.gate.on_bar(Bar(s, h.ts, p, p, p, p, 0.0, INTERVAL))
        h.gate.on_bars_closed(BarsClosed(ts=h.ts, count=3))
    assert h.code(qty=0.01) == "VOLUME_UNKNOWN"


def test_exchange_filters_before_sending() -> None:
    h = Harness()
    rules = h.rules["BTC/USDT"]
    out = h.submit(qty=0.1 + rules.amount_step / 3)
    assert out is not None and out.code == "FILTER_LOT_STEP"
    assert h.code(qty=rules.amount_step) == "FILTER_MIN_NOTIONAL"  # 0.3 USDT < 10
    off_tick = h.prices["BTC/USDT"] + rules.price_tick / 2
    out = h.submit(h.intent(order_type=OrderType.LIMIT, limit_price=off_tick))
    assert out is not None and out.code == "FILTER_PRICE_TICK"
    h.venue_rules["BTC/USDT"] = replace(rules, max_qty=0.05)
    h.step()
    assert h.code(qty=0.06) == "FILTER_MAX_QTY"
    del h.venue_rules["SOL/USDT"]
    h.step()
    assert h.code(h.intent("SOL/USDT")) == "FILTER_UNKNOWN_MARKET"


def test_duplicates_within_the_window_unless_retry_or_sibling() -> None:
    h = Harness(limits(throttle=ThrottleLimits(duplicate_window_s=2.0)))
    first = h.intent(qty=0.1)
    assert h.submit(first) is None
    # same client order id: a retry, not a duplicate
    assert h.submit(first) is None
    # equal child of the same decision: intended
    assert h.code(h.intent(qty=0.1, decision_id=first.decision_id)) is None
    # same symbol, side and size from another decision
    out = h.submit(h.intent(qty=0.1))
    assert out is not None and out.code == "DUPLICATE_ORDER"
    assert out.context["previous_client_order_id"] == first.client_order_id
    assert h.code(h.intent(qty=0.1, side=Side.SELL, decision_id="x")) != "DUPLICATE_ORDER"
    assert h.code(h.intent(qty=0.11)) is None
    h.clock.t += 2.5
    assert h.code(h.intent(qty=0.1)) is None


def test_order_throttles_per_second_and_minute_in_total_and_per_symbol() -> None:
    h = Harness(limits(throttle=ThrottleLimits(
        orders_per_second=3, orders_per_minute=5, symbol_orders_per_second=2,
        symbol_orders_per_minute=100)))
    assert h.code(value=1000) is None
    assert h.code(value=1100) is None
    out = h.submit(value=1200)
    assert out is not None and out.code == "THROTTLE_SYMBOL_ORDERS_PER_SECOND"
    assert out.context == {"symbol": "BTC/USDT", "count": 2, "limit": 2, "window_s": 1}
    assert h.code(h.intent("ETH/USDT")) is None
    assert h.code(h.intent("SOL/USDT")) == "THROTTLE_ORDERS_PER_SECOND"
    h.clock.t += 1.0
    assert h.code(h.intent("SOL/USDT")) is None
    assert h.code(h.intent("ETH/USDT", value=1500)) is None
    assert h.code(value=1600) == "THROTTLE_ORDERS_PER_MINUTE"  # 5 in the last 60 s
    h.clock.t += 58.0
    assert h.code(value=1700) == "THROTTLE_ORDERS_PER_MINUTE"
    h.clock.t += 1.01  # the first three leave the window
    assert h.code(value=1800) is None


def test_rejected_orders_do_not_use_up_the_throttle() -> None:
    h = Harness(limits(throttle=ThrottleLimits(orders_per_second=2)))
    for _ in range(5):
        assert h.code(qty=math.nan) == "ORDER_BAD_QUANTITY"
    assert h.code(value=1000) is None
    assert h.code(value=1100) is None
    assert h.code(value=1200) == "THROTTLE_ORDERS_PER_SECOND"


async def test_cancels_per_minute_are_throttled_but_cancel_all_is_not() -> None:
    h = Harness(limits(throttle=ThrottleLimits(cancels_per_minute=2)))
    assert await h.gate.cancel("a", "operator") is None
    assert await h.gate.cancel("b", "operator") is None
    denial = await h.gate.cancel("c", "operator")
    assert denial is not None and denial.code == "THROTTLE_CANCELS_PER_MINUTE"
    assert h.oms.cancelled == ["a", "b"]
    h.gate.halt("test")
    await asyncio.gather(*h.bus.tasks)
    assert len(h.oms.cancel_all_calls) == 1


def test_market_time_runs_throttles_on_bar_time() -> None:
    h = Harness(limits(throttle=ThrottleLimits(orders_per_second=2)))
    h.gate.use_market_time()
    h.step()
    assert h.code(value=1000) is None
    h.clock.t += 100.0  # wall time means nothing in a lockstep replay
    assert h.code(value=1100) is None
    assert h.code(value=1200) == "THROTTLE_ORDERS_PER_SECOND"
    h.step()
    assert h.code(value=1300) is None
    assert h.gate.status()["clock"] == "market"


# ----------------------------------------------------------------------- the book


def test_gross_exposure_counts_positions_and_working_orders() -> None:
    h = Harness()
    h.hold(BTC=45_000.0, ETH=45_000.0)
    assert h.code(h.intent("SOL/USDT", value=5_000.0)) is None  # ~0.95
    h.take_in()
    h.oms.working["SOL/USDT"] = h.qty("SOL/USDT", 5_000.0)
    out = h.submit(h.intent("SOL/USDT", value=5_100.0))
    assert out is not None and out.code == "EXPOSURE_GROSS_ABOVE_MAX"
    assert out.context["gross"] > 1.0 >= out.context["gross_before"]


def test_orders_approved_but_not_yet_in_the_oms_count() -> None:
    # the rebalancer publishes sibling orders together; the OMS registers them later
    h = Harness(limits(max_asset_fraction=0.3))
    assert h.code(value=20_000.0) is None
    out = h.submit(value=20_500.0)
    assert out is not None and out.code == "EXPOSURE_ASSET_ABOVE_MAX"
    assert out.context["fraction_before"] == pytest.approx(0.2, abs=0.01)
    # once the OMS has it, it counts through the OMS (not twice)
    h.take_in()
    approved = h.bus.of(OrderApproved)[0].intent
    h.oms.working["BTC/USDT"] = approved.quantity
    assert h.code(value=5_000.0) is None
    assert h.gate.status()["in_flight"] == 1
    # a refused order stops counting
    h.gate.on_order_rejected(OrderRejected(h.bus.of(OrderApproved)[-1].intent.client_order_id,
                                           "BTC/USDT", "TRADING_HALTED", h.clock.now()))
    assert h.gate.status()["in_flight"] == 0


def test_nav_is_cash_plus_positions_not_working_orders() -> None:
    h = Harness()
    h.oms.working["BTC/USDT"] = 1.0  # 30k of buying, not yet paid for
    assert h.gate.status()["nav"] == pytest.approx(100_000.0)


def test_net_asset_and_group_caps() -> None:
    h = Harness(limits(max_net_exposure=0.5, groups={"majors": ["BTC/USDT", "ETH/USDT"]},
                       group_limits={"majors": 0.45}))
    h.hold(SOL=40_000.0)
    out = h.submit(h.intent("SOL/USDT", value=15_000.0))
    assert out is not None and out.code == "EXPOSURE_NET_ABOVE_MAX"
    h2 = Harness(limits(groups={"majors": ["BTC/USDT", "ETH/USDT"]},
                        group_limits={"majors": 0.45}))
    h2.hold(BTC=25_000.0, ETH=15_000.0)
    out = h2.submit(h2.intent("ETH/USDT", value=10_000.0))
    assert out is not None and out.code == "EXPOSURE_GROUP_ABOVE_MAX"
    assert out.context["group"] == "majors" and out.context["max"] == 0.45
    assert h2.code(h2.intent("SOL/USDT", value=10_000.0)) is None
    h3 = Harness(limits(max_asset_fraction=0.25))
    assert h3.submit(value=24_000.0) is None
    out = h3.submit(value=2_000.0)
    assert out is not None and out.code == "EXPOSURE_ASSET_ABOVE_MAX"
    assert out.context["symbol"] == "BTC/USDT" and out.context["max"] == 0.25


def test_risk_reducing_orders_pass_a_book_the_market_pushed_over_the_limits() -> None:
    h = Harness(limits(max_asset_fraction=0.4, var=VarConfig(max_var_fraction=0.001,
                                                             max_cvar_fraction=0.001)))
    h.hold(BTC=70_000.0, ETH=25_000.0)
    assert h.code(h.intent(side=Side.SELL, value=10_000.0)) is None
    assert h.code(value=1_000.0) in ("EXPOSURE_ASSET_ABOVE_MAX", "EXPOSURE_GROSS_ABOVE_MAX")
    assert h.code(h.intent("ETH/USDT", side=Side.SELL, value=5_000.0)) is None


def test_unknown_nav_fails_closed_except_for_reductions() -> None:
    h = Harness(warmup=0)
    for s in ("BTC/USDT", "ETH/USDT"):
        p = h.prices[s]
        h.gate.on_bar(Bar(s, h.ts, p, p, p, p, VOLUME[s], INTERVAL))
    h.portfolio.positions["SOL/USDT"] = 100.0  # held, never priced: NAV unknown
    h.portfolio.positions["BTC/USDT"] = 1.0
    h.step(symbols=["BTC/USDT", "ETH/USDT"])
    assert h.code(h.intent("ETH/USDT", value=1_000.0)) == "PORTFOLIO_NAV_INVALID"
    assert h.code(h.intent(side=Side.SELL, qty=0.5)) is None


# ----------------------------------------------------------------------- VaR


def test_var_above_limit_is_rejected_and_lowering_risk_always_passes() -> None:
    h = Harness(limits(var=VarConfig(max_var_fraction=0.002, max_cvar_fraction=1.0)))
    out = h.submit(value=20_000.0)
    assert out is not None and out.code == "VAR_ABOVE_LIMIT"
    assert out.context["var"] > out.context["limit"] == pytest.approx(200.0)
    assert out.context["model"] == "parametric_ewma" and out.context["symbol"] == "BTC/USDT"
    h.hold(BTC=40_000.0)
    h.step()
    assert h.code(h.intent(side=Side.SELL, value=5_000.0)) is None  # lowers VaR
    h2 = Harness(limits(var=VarConfig(max_var_fraction=1.0, max_cvar_fraction=0.002)))
    assert h2.code(value=20_000.0) == "CVAR_ABOVE_LIMIT"


@pytest.mark.parametrize("model", ["historical", "monte_carlo"])
def test_other_var_models_are_selectable(model: str) -> None:
    h = Harness(limits(var=VarConfig(model=model, max_var_fraction=0.002,
                                     max_cvar_fraction=1.0, mc_paths=500)))
    view = h.gate.var_view()
    assert view.prepared is not None and view.prepared.model == model
    assert h.code(value=20_000.0) == "VAR_ABOVE_LIMIT"
    assert h.code(value=500.0) is None


def test_var_unavailable_until_enough_history_then_short_window() -> None:
    h = Harness(limits(var_min_bars=30), warmup=20)
    out = h.submit()
    assert out is not None and out.code == "VAR_UNAVAILABLE"
    assert out.context["bars"] == 19 and out.context["min_bars"] == 30
    h.hold(BTC=10_000.0)
    assert h.code(h.intent(side=Side.SELL, value=1_000.0)) is None  # reducing passes
    for _ in range(11):
        h.step()
    view = h.gate.var_view()
    assert view.prepared is not None and view.bars == 30
    assert h.code() is None


def test_var_model_is_prepared_once_per_bar_with_orders_and_book_risk_reused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    prepares: list[int] = []
    evaluations: list[int] = []
    real_prepare = var_module.VarModel.prepare
    real_var = var_module.ParametricRisk.var

    def counting_prepare(self: Any, returns: Any, **kwargs: Any) -> Any:
        prepares.append(1)
        return real_prepare(self, returns, **kwargs)

    def counting_var(self: Any, exposures: Any) -> Any:
        evaluations.append(1)
        return real_var(self, exposures)

    monkeypatch.setattr(var_module.VarModel, "prepare", counting_prepare)
    monkeypatch.setattr(var_module.ParametricRisk, "var", counting_var)
    h = Harness(limits(var=VarConfig(max_var_fraction=0.002, max_cvar_fraction=1.0)),
                warmup=35)
    assert prepares == [] and evaluations == []  # bars without orders prepare nothing
    # the bar's first order prepares the model and the book's risk (one evaluation); above
    # the limit, the rule needs the book's risk too: it is reused, plus one for "after"
    assert h.code(value=20_000.0) == "VAR_ABOVE_LIMIT"
    assert len(prepares) == 1 and len(evaluations) == 2
    for value in (1_000.0, 1_100.0, 1_200.0):
        assert h.code(value=value) is None
    assert len(evaluations) == 5  # one per order: the book after it
    assert len(prepares) == 1
    # the book has changed (three approved orders): "before" is evaluated, not stale
    assert h.code(value=20_100.0) == "VAR_ABOVE_LIMIT"
    assert len(evaluations) == 7
    h.step()
    h.step()
    assert len(prepares) == 1  # not until an order needs it
    h.code(value=1_000.0)
    assert len(prepares) == 2  # once for the two bars' window, the newest


def test_an_order_in_a_symbol_without_clean_history_cannot_add_risk() -> None:
    h = Harness(warmup=0)
    for _ in range(35):
        h.step(symbols=["BTC/USDT", "ETH/USDT"])
    h.step()  # SOL's first bar: priced, but no history
    out = h.submit(h.intent("SOL/USDT", value=1_000.0))
    assert out is not None and out.code == "VAR_UNAVAILABLE"
    assert out.context["symbol"] == "SOL/USDT"
    assert out.context["bars"] == 0 and out.context["min_bars"] == 30
    assert h.code(value=1_000.0) is None


def _young_sol(limits_: RiskLimits | None = None, sol_bars: int = 1,
               sol_move: float | None = None) -> Harness:
    """BTC and ETH for 40 bars, then SOL listed: `sol_bars` bars of all three (SOL moving
    `sol_move` per bar, alternating sign, if given)."""
    h = Harness(limits_, warmup=0)
    for _ in range(40):
        h.step(symbols=["BTC/USDT", "ETH/USDT"])
    for b in range(sol_bars):
        moves = None if sol_move is None else {
            "BTC/USDT": 0.001, "ETH/USDT": -0.001, "SOL/USDT": sol_move * (-1) ** b}
        h.step(moves)
    return h


def test_a_held_young_asset_does_not_block_orders_in_other_assets() -> None:
    h = _young_sol()
    h.hold(SOL=2_000.0)  # e.g. held before a restart: the gate has no history for it
    assert h.code(value=1_000.0) is None  # BTC: judged with SOL's proxied risk
    assert h.code(h.intent("SOL/USDT", side=Side.SELL, value=500.0)) is None  # reduces it
    assert h.code(h.intent("SOL/USDT", value=500.0)) == "VAR_UNAVAILABLE"  # adds to it
    view = h.gate.var_view()
    sol = h.gate.market.index["SOL/USDT"]
    assert view.history[sol] == 0 and sol not in view.young_tradeable
    assert view.young_unit[sol] == var_module.unit_risk(
        view.prepared, int(view.positions[view.proxy]))  # type: ignore[arg-type]
    assert h.gate.var_usage()["young"] == {"SOL/USDT": 0}


def test_the_var_limit_binds_on_the_book_with_the_young_assets_proxied_risk() -> None:
    # proxy: ~0.6% per bar, 99%: ~1.3% of a position's value; the limit 0.3% of NAV
    tight = limits(var=VarConfig(max_var_fraction=0.003, max_cvar_fraction=1.0))
    h = _young_sol(tight)
    assert h.code(value=3_000.0) is None  # without SOL: ~40 of a 300 limit
    h2 = _young_sol(tight)
    h2.hold(SOL=20_000.0)  # ~270 of proxied VaR
    out = h2.submit(value=3_000.0)
    assert out is not None and out.code == "VAR_ABOVE_LIMIT"
    assert out.context["young"] == ["SOL/USDT"] and out.context["proxy"] in SYMBOLS
    assert out.context["var"] > out.context["limit"] > out.context["var_before"]
    # selling SOL lowers the total: passes, though the book is near the limit
    assert h2.code(h2.intent("SOL/USDT", side=Side.SELL, value=5_000.0)) is None


def test_a_young_asset_with_var_min_bars_trades_at_the_riskier_of_its_own_and_the_proxy() -> None:
    h = _young_sol(sol_bars=31, sol_move=0.03)  # 30 returns of +-3%, BTC and ETH 0.1%
    view = h.gate.var_view()
    sol = h.gate.market.index["SOL/USDT"]
    assert view.history[sol] == 30 and sol in view.young_tradeable
    proxy = var_module.unit_risk(view.prepared, int(view.positions[view.proxy]))  # type: ignore[arg-type]
    assert view.young_unit[sol][0] > 2.0 * proxy[0]  # its own, far riskier
    assert h.code(h.intent("SOL/USDT", value=1_000.0)) is None
    # the limit binds on it: 3% x 2.33 = 7% of the order's value
    h2 = _young_sol(limits(var=VarConfig(max_var_fraction=0.005, max_cvar_fraction=1.0)),
                    sol_bars=31, sol_move=0.03)
    out = h2.submit(h2.intent("SOL/USDT", value=10_000.0))
    assert out is not None and out.code == "VAR_ABOVE_LIMIT"
    assert out.context["young"] == ["SOL/USDT"]
    # once a whole window is clean, SOL is in the model itself
    h3 = _young_sol(sol_bars=260)
    assert h3.gate.var_view().uncovered.size == 0


# ----------------------------------------------------------------------- trading state


def test_reducing_lets_only_risk_reducing_orders_through() -> None:
    h = Harness()
    h.hold(BTC=20_000.0)
    h.gate.reduce("desk review")
    assert h.gate.state is TradingState.REDUCING
    out = h.submit(value=1_000.0)
    assert out is not None and out.code == "STATE_REDUCING"
    assert out.context["reason"] == "desk review"
    assert h.code(h.intent(side=Side.SELL, value=5_000.0)) is None
    # selling more than is held would open a short: not a reduction
    assert h.code(h.intent("ETH/USDT", side=Side.SELL, value=1_000.0)) == "STATE_REDUCING"


async def test_halt_rejects_everything_cancels_working_orders_and_resume_undoes_it() -> None:
    h = Harness()
    h.hold(BTC=20_000.0)
    record = h.gate.halt("exchange maintenance", by="alice")
    assert record.state is TradingState.HALTED and record.by == "alice"
    await asyncio.gather(*h.bus.tasks)
    assert h.oms.cancel_all_calls == ["trading halted: exchange maintenance"]
    assert h.oms.halted_reason == "GATE_exchange maintenance"  # approved orders in its inbox
    for intent in (h.intent(), h.intent(side=Side.SELL), h.intent(qty=math.nan)):
        out = h.submit(intent)
        assert out is not None and out.code == "STATE_HALTED"
    changed = h.bus.of(TradingStateChanged)
    assert changed[-1].state == "HALTED" and changed[-1].previous == "ACTIVE"
    assert changed[-1].by == "alice" and changed[-1].reason == "exchange maintenance"
    h.gate.resume(by="alice")
    assert h.gate.state is TradingState.ACTIVE and h.oms.halted_reason is None
    assert h.code() is None
    assert h.bus.of(TradingStateChanged)[-1].state == "ACTIVE"


def test_cancel_on_halt_can_be_turned_off() -> None:
    h = Harness(limits(state=StateLimits(cancel_working_on_halt=False)))
    h.gate.halt("x")
    assert h.bus.tasks == []


def test_an_oms_halt_halts_the_gate() -> None:
    h = Harness()
    h.oms.halted_reason = "AUTHENTICATION"
    out = h.submit()
    assert out is not None and out.code == "STATE_HALTED"
    record = h.gate.trading.record
    assert record.by == "oms" and record.reason == "OMS_AUTHENTICATION"
    assert h.oms.halted_reason == "AUTHENTICATION"  # the OMS's own words are kept
    h2 = Harness()
    h2.oms.halted_reason = "RECONCILIATION_MISMATCH"
    h2.gate.heartbeat()  # noticed without any order
    assert h2.gate.state is TradingState.HALTED
    h2.gate.resume()
    assert h2.oms.halted_reason is None and h2.gate.state is TradingState.ACTIVE


def test_daily_loss_switches_to_reducing_and_stays_until_resumed() -> None:
    h = Harness(warmup=30)  # bar 30 = 2024-01-02 06:00
    h.hold(BTC=45_000.0, ETH=45_000.0)
    h.step(moves={"BTC/USDT": 0.0, "ETH/USDT": 0.0})
    h.step(moves={"BTC/USDT": -0.06, "ETH/USDT": -0.06})  # ~5.4% of NAV
    assert h.gate.state is TradingState.ACTIVE
    h.step(moves={"BTC/USDT": -0.06, "ETH/USDT": -0.06})  # ~10.5% since the day began
    assert h.gate.state is TradingState.REDUCING
    record = h.gate.trading.record
    assert record.reason == "DAILY_LOSS_LIMIT" and record.by == "gate"
    assert record.context is not None and record.context["loss"] > 0.10
    assert h.code(value=1_000.0) == "STATE_REDUCING"
    for _ in range(30):  # a new day: the loss is forgiven by the clock, not the latch
        h.step(moves={"BTC/USDT": 0.0, "ETH/USDT": 0.0})
    assert h.gate.state is TradingState.REDUCING
    h.gate.resume()
    h.step(moves={"BTC/USDT": 0.0, "ETH/USDT": 0.0})
    assert h.gate.state is TradingState.ACTIVE


def test_resume_rebases_a_breached_loss_limit() -> None:
    h = Harness(warmup=30)
    h.hold(BTC=45_000.0, ETH=45_000.0)
    h.step(moves={"BTC/USDT": -0.15, "ETH/USDT": -0.15})
    assert h.gate.state is TradingState.REDUCING
    h.gate.trading.resume("bob")  # the ops CLI may call the state machine directly
    h.step(moves={"BTC/USDT": -0.01, "ETH/USDT": -0.01})
    assert h.gate.state is TradingState.ACTIVE
    h.step(moves={"BTC/USDT": -0.12, "ETH/USDT": -0.12})  # a fresh 10% from the resume
    assert h.gate.state is TradingState.REDUCING


async def test_drawdown_from_peak_halts_and_cancels() -> None:
    h = Harness(limits(state=StateLimits(max_daily_loss_fraction=0.9)))
    h.hold(BTC=90_000.0)
    h.step(moves={"BTC/USDT": 0.10})
    peak = h.gate.nav_watch.peak_nav
    assert peak is not None and peak > 105_000
    for _ in range(5):
        h.step(moves={"BTC/USDT": -0.09})
    assert h.gate.state is TradingState.HALTED
    assert h.gate.trading.record.reason == "DRAWDOWN_LIMIT"
    assert h.gate.trading.record.context["peak_nav"] == pytest.approx(peak, abs=0.01)
    await asyncio.gather(*h.bus.tasks)
    assert h.oms.cancel_all_calls


def test_stale_data_halts_on_the_heartbeat_and_fresh_data_undoes_it() -> None:
    h = Harness()
    h.gate.reduce("desk review")
    h.clock.t += 3 * INTERVAL + 1
    h.gate.heartbeat()
    assert h.gate.state is TradingState.HALTED
    assert h.gate.trading.record.reason == "DATA_STALE"
    h.step(advance=0)
    # back to what the stale switch replaced, not to ACTIVE
    assert h.gate.state is TradingState.REDUCING
    assert h.gate.trading.record.reason == "desk review"
    h.gate.resume()
    assert h.gate.state is TradingState.ACTIVE


def test_stale_data_is_also_checked_on_each_order() -> None:
    h = Harness()
    h.clock.t += 3 * INTERVAL + 1
    assert h.code() == "STATE_HALTED"
    assert h.gate.trading.record.reason == "DATA_STALE"


def test_one_symbol_without_bars_is_stale_for_its_own_orders() -> None:
    h = Harness()
    for _ in range(4):
        h.step(symbols=["BTC/USDT", "ETH/USDT"])
    out = h.submit(h.intent("SOL/USDT"))
    assert out is not None and out.code == "DATA_STALE"
    assert out.context["age_s"] > out.context["max_age_s"] == 3 * INTERVAL
    assert h.code() is None and h.gate.state is TradingState.ACTIVE


def test_an_operator_halt_is_not_undone_by_fresh_data() -> None:
    h = Harness()
    h.clock.t += 4 * INTERVAL
    h.gate.heartbeat()
    h.gate.halt("investigating")
    h.step(advance=0)
    assert h.gate.state is TradingState.HALTED
    assert h.gate.trading.record.reason == "investigating"


def test_a_burst_of_rejections_halts_but_state_refusals_do_not_count() -> None:
    h = Harness(limits(state=StateLimits(max_rejections=5, rejection_window_s=60.0)))
    for _ in range(5):
        h.code(qty=math.nan)
        h.clock.t += 1
    assert h.gate.state is TradingState.ACTIVE
    h.code(qty=math.nan)
    assert h.gate.state is TradingState.HALTED
    assert h.gate.trading.record.reason == "REJECTION_STORM"
    h.gate.resume()
    h.clock.t += 1
    h.gate.reduce("x")
    for _ in range(10):
        assert h.code(value=500.0) == "STATE_REDUCING"
    assert h.gate.state is TradingState.REDUCING


def test_a_fill_reevaluates_the_loss_limits() -> None:
    h = Harness(limits(state=StateLimits(max_drawdown_fraction=0.05)))
    h.portfolio.cash -= 6_000.0  # as if fees had been charged
    h.gate.on_fill(Fill("t-1", "v-1", "tr-1", "BTC/USDT", Side.BUY, 0.001, 30_000, 6_000.0,
                        h.clock.now()))
    assert h.gate.state is TradingState.HALTED


# ----------------------------------------------------------------------- status


def test_status_counts_and_recent_rejections_are_json_ready() -> None:
    h = Harness()
    h.code(qty=math.nan)
    h.code(h.intent("DOGE/USDT"))
    h.code()
    status = h.gate.status()
    text = json.dumps(status)  # no default=: everything is plain JSON
    assert "ORDER_UNKNOWN_SYMBOL" in text
    assert status["approved"] == 1 and status["rejected"] == 2
    assert status["rejections_by_code"] == {"ORDER_BAD_QUANTITY": 1, "ORDER_UNKNOWN_SYMBOL": 1}
    assert [r["code"] for r in status["recent_rejections"]] == [
        "ORDER_UNKNOWN_SYMBOL", "ORDER_BAD_QUANTITY"]  # newest first
    assert status["state"] == "ACTIVE" and status["var"]["var"] is not None
    assert status["nav"] == pytest.approx(100_000.0)
    usage = h.gate.var_usage()
    assert usage["limit"] == RiskLimits().var.max_var_fraction


def test_rejections_are_events_with_context() -> None:
    h = Harness()
    h.code(h.intent("DOGE/USDT"))
    (event,) = h.bus.of(RiskRejected)
    assert event.code == "ORDER_UNKNOWN_SYMBOL" and event.context == {"symbol": "DOGE/USDT"}
    assert event.describe() == "ORDER_UNKNOWN_SYMBOL symbol=DOGE/USDT"


async def test_heartbeat_runs_as_a_service() -> None:
    h = Harness(limits(state=StateLimits(heartbeat_s=0.05)))
    await h.gate.start()
    h.clock.t += 10 * INTERVAL
    for _ in range(100):
        if h.gate.state is TradingState.HALTED:
            break
        await asyncio.sleep(0.02)
    await h.gate.stop()
    assert h.gate.state is TradingState.HALTED


def test_the_journal_keeps_state_across_restarts(tmp_path: Path) -> None:
    from daemon.journal import Journal

    journal = Journal(tmp_path / "journal.sqlite")
    h = Harness(journal=journal)
    h.hold(BTC=50_000.0)
    h.step(moves={"BTC/USDT": 0.04})
    peak = h.gate.nav_watch.peak_nav
    h.gate.halt("end of day", by="carol")
    journal.close()
    journal = Journal(tmp_path / "journal.sqlite")
    h2 = Harness(journal=journal, warmup=0)
    assert h2.gate.state is TradingState.HALTED
    assert h2.gate.trading.record.reason == "end of day" and h2.gate.trading.record.by == "carol"
    assert h2.oms.halted_reason == "GATE_end of day"
    assert h2.gate.nav_watch.peak_nav == pytest.approx(peak, rel=1e-3)
    journal.close()


def test_new_limits_at_runtime_keep_windows_state_and_history() -> None:
    h = Harness(limits(throttle=ThrottleLimits(orders_per_second=5)))
    for value in (1_000.0, 1_100.0):
        assert h.code(value=value) is None
    h.gate.reduce("desk")
    new = limits(throttle=ThrottleLimits(orders_per_second=2), max_asset_fraction=0.2,
                 volume_window_bars=3, var=VarConfig(window_bars=30, model="historical"),
                 groups={"g": ["SOL/USDT"]})
    h.gate.update_limits(new)
    assert h.gate.limits is new and h.gate.ctx.limits is new
    assert h.gate.state is TradingState.REDUCING  # a reload is not a resume
    h.gate.resume()
    assert h.code(value=1_200.0) == "THROTTLE_ORDERS_PER_SECOND"  # the two still count
    prepared = h.gate.ctx.var.prepared
    assert prepared is not None and prepared.model == "historical"
    assert h.gate.ctx.groups[0].name == "g"
    h.step()
    assert h.gate.var_view().bars == 30
