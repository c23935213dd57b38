"""The gate's pass path (`risk.checks.order_checks_pass`, `portfolio_checks_pass_before_var`,
`daemon.risk_gate._order_approved`) decides exactly as the named checks do.

The fast predicates may only say "passes" when every named check would pass; on anything else
the gate runs the named pipeline, which makes the denial. Two gates fed the same random
orders, bars, fills and state changes, one with the fast path switched off, must publish the
same decisions with the same codes and contexts."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

import daemon.risk_gate as risk_gate
from daemon.events import OrderApproved, OrderIntent, OrderType, RiskRejected, Side
from risk.checks import (
    ORDER_CHECKS,
    PORTFOLIO_CHECKS,
    VAR_CHECK,
    check_halted,
    evaluate,
    order_checks_pass,
    order_effect,
    portfolio_checks_pass_before_var,
)
from risk.limits import StateLimits, ThrottleLimits
from risk.var import VarConfig
from tests.test_risk_gate import SYMBOLS, Harness, limits


class _Sym(str):
    """A str subclass: the checks accept it, the fast path leaves it to them."""


def _random_intent(h: Harness, rnd: random.Random, k: int) -> OrderIntent:
    symbol: Any = rnd.choice(SYMBOLS * 6 + ["DOGE/USDT", 7, _Sym("BTC/USDT")])
    known = symbol if isinstance(symbol, str) and symbol in h.prices else "BTC/USDT"
    last = h.prices[known]
    # sizes and prices on both sides of each cap (notional 50,000, volume ~45,000, collar
    # 4% / 6%), and far beyond
    value = rnd.choice([500.0, 2_000.0, 2_000.0, 8_000.0, 8_000.0, 30_000.0, 47_000.0,
                        49_000.0, 60_000.0, 300_000.0])
    qty: Any = h.qty(known, value) if rnd.random() < 0.9 else rnd.choice(
        [0.0, -1.0, float("nan"), float("inf"), 3, np.float64(0.01), 0.123456789, 1e-9])
    side: Any = rnd.choice([Side.BUY, Side.SELL, Side.BUY] * 6 + ["buy"])
    order_type: Any = rnd.choice([OrderType.MARKET, OrderType.LIMIT] * 10 + ["x"])
    drift = rnd.choice([0.0, 0.0, 0.0, 0.001, -0.02, 0.03, 0.05, -0.05, -0.07, 0.2])
    limit: Any = float(h.rules[known].round_price(last * (1 + drift)))
    if rnd.random() < 0.1:
        limit = rnd.choice([last * 1.0000001, None, float("nan"), 5])
    ref: Any = last if rnd.random() < 0.95 else rnd.choice([0.0, float("nan"), 100])
    cid: Any = f"c{k}" if rnd.random() < 0.9 else rnd.choice(["", "  ", None, f"c{k - 1}"])
    return OrderIntent(client_order_id=cid, symbol=symbol, side=side, quantity=qty,
                       order_type=order_type, limit_price=limit, reference_price=ref,
                       ts=h.ts, decision_id=rnd.choice([f"d{k}", f"d{k // 3}", ""]))


def _limits() -> Any:
    # tight enough that every kind of denial happens within a few hundred orders
    return limits(max_order_notional=50_000.0, max_asset_fraction=0.3, max_gross_exposure=0.9,
                  max_volume_share=0.015, price_collar_buy_pct=4.0,
                  price_collar_sell_pct=6.0, groups={"majors": ["BTC/USDT", "ETH/USDT"]},
                  max_group_fraction=0.5,
                  throttle=ThrottleLimits(orders_per_second=3, symbol_orders_per_second=2,
                                          orders_per_minute=40, symbol_orders_per_minute=20),
                  var=VarConfig(max_var_fraction=0.003, max_cvar_fraction=0.0035),
                  # no storm: the drive's malformed orders would halt it for good
                  state=StateLimits(max_rejections=1_000_000, max_daily_loss_fraction=0.9,
                                    max_drawdown_fraction=0.9))


def _events(h: Harness) -> list[tuple[Any, ...]]:
    out = []
    for e in h.bus.events:
        if isinstance(e, OrderApproved):
            out.append(("approved", e.intent.client_order_id))
        elif isinstance(e, RiskRejected):
            out.append(("rejected", e.intent.client_order_id, e.code, repr(e.context)))
    return out


def _drive(h: Harness, seed: int) -> None:
    rnd = random.Random(seed)
    for k in range(600):
        r = rnd.random()
        if r < 0.08:
            h.step()
        elif r < 0.12:
            h.take_in()
            s = rnd.choice(SYMBOLS)
            h.portfolio.positions[s] = h.portfolio.positions.get(s, 0.0) + h.qty(s, 1_000.0)
        elif r < 0.13:
            h.gate.reduce("test")
        elif r < 0.132:
            h.gate.halt("test")
        elif r < 0.16:
            h.gate.resume()
        h.clock.t += rnd.choice([0.01, 0.2, 1.0, 5.0])
        h.gate.on_intent(_random_intent(h, rnd, k))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fast_path_decides_as_the_named_checks(monkeypatch: pytest.MonkeyPatch,
                                                   seed: int) -> None:
    fast = Harness(_limits(), seed=seed)
    _drive(fast, seed)
    with monkeypatch.context() as m:
        m.setattr(risk_gate, "order_checks_pass", lambda intent, ctx: False)
        m.setattr(risk_gate, "portfolio_checks_pass_before_var", lambda intent, ctx: False)
        slow = Harness(_limits(), seed=seed)
        _drive(slow, seed)
    got, want = _events(fast), _events(slow)
    assert got == want
    codes = {e[2] for e in want if e[0] == "rejected"}
    # the drive reaches the denials the fast path must leave to the named checks
    assert sum(e[0] == "approved" for e in want) > 60 and len(codes) >= 14, codes


def test_the_fast_predicates_never_pass_what_a_named_check_denies() -> None:
    h = Harness(_limits(), seed=5)
    rnd = random.Random(5)
    passed = 0
    for k in range(3000):
        if k % 50 == 0:
            h.step()
        h.clock.t += rnd.choice([0.01, 0.5, 2.0])
        intent = _random_intent(h, rnd, k)
        ctx = h.gate.ctx
        ctx.now = h.gate._now()
        try:
            fast = order_checks_pass(intent, ctx)
        except Exception:
            fast = False
        denial = evaluate(intent, ctx, ORDER_CHECKS)
        assert not (fast and denial is not None), (intent, denial)
        if denial is not None:
            continue
        passed += fast
        book = ctx.book = h.gate._build_book()
        h.gate._ensure_var(book)
        ctx.effect = order_effect(intent, ctx, book)
        if portfolio_checks_pass_before_var(intent, ctx):
            assert check_halted(intent, ctx) is None
            assert evaluate(intent, ctx, PORTFOLIO_CHECKS) == evaluate(intent, ctx, VAR_CHECK)
        if rnd.random() < 0.5:
            h.gate.on_intent(intent)  # approvals feed the throttles and duplicates
    assert passed > 300


def test_order_approved_is_built_as_the_constructor_builds_it() -> None:
    h = Harness()
    intent = h.intent()
    ts = datetime(2024, 5, 1, tzinfo=UTC)
    event = risk_gate._order_approved(intent, ts)
    assert type(event) is OrderApproved
    assert event == OrderApproved(intent=intent, ts=ts) and event.intent is intent
    with pytest.raises(AttributeError):
        event.ts = ts  # type: ignore[misc]  # still frozen
