"""The gate's cheaper per-bar and per-bar-with-orders paths decide exactly as the plain ones.

* The VaR model: when the whole window of returns is finite (`risk_gate._all_finite`, one
  sum) the model is prepared from the window as it is, with `VarModel.prepare(finite=True)`;
  otherwise the per-column test picks the covered assets. Two gates fed the same bars,
  orders, fills and state changes, one forced down the per-column path, must publish the same
  decisions and hold bit-identical models.
* The loss limits (per bar, per fill, per order) read the daily loss and drawdown inline and
  the NAV from a kept positions vector: a reference `NavWatch` fed the same marks must trip at
  the same mark, on bars without any order too.
"""

from __future__ import annotations

import math
import random
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

import daemon.risk_gate as risk_gate
from daemon.events import (
    Bar,
    BarsClosed,
    Fill,
    OrderApproved,
    RiskRejected,
    Side,
    TradingStateChanged,
)
from daemon.trading_state import NavWatch, TradingState
from risk.limits import StateLimits
from risk.var import VarConfig, VarError, VarModel
from tests.test_gate_fast_path import _drive, _limits
from tests.test_risk_gate import SYMBOLS, Harness, _young_sol, limits


def _decisions(h: Harness) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in h.bus.events:
        if isinstance(e, OrderApproved):
            out.append(("approved", e.intent.client_order_id))
        elif isinstance(e, RiskRejected):
            out.append(("rejected", e.intent.client_order_id, e.code, repr(e.context)))
        elif isinstance(e, TradingStateChanged):
            out.append(("state", e.state, e.reason, repr(e.context)))
    return out


def _model(h: Harness) -> tuple[Any, ...]:
    view = h.gate.var_view()
    prepared = view.prepared
    return (view.bars, view.unavailable, view.covered.tolist(), view.uncovered.tolist(),
            view.positions, view.all_covered, view.history, view.young_unit,
            view.young_tradeable, view.proxy,
            None if prepared is None else prepared.covariance.tobytes())  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", [1, 2])
def test_the_whole_window_model_decides_as_the_per_column_one(
        monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    fast = Harness(_limits(), seed=seed)
    _drive(fast, seed)
    with monkeypatch.context() as m:
        m.setattr(risk_gate, "_all_finite", lambda returns: False)
        slow = Harness(_limits(), seed=seed)
        _drive(slow, seed)
        slow_model = _model(slow)
    assert _decisions(fast) == _decisions(slow)
    assert _model(fast) == slow_model and slow_model[-1] is not None
    codes = {e[2] for e in _decisions(slow) if e[0] == "rejected"}
    assert {"VAR_ABOVE_LIMIT", "CVAR_ABOVE_LIMIT"} & codes  # the models decided some


@pytest.mark.parametrize("sol_bars", [1, 31, 252, 260])
def test_young_assets_take_the_per_column_path_and_leave_it_once_clean(
        monkeypatch: pytest.MonkeyPatch, sol_bars: int) -> None:
    tight = limits(var=VarConfig(max_var_fraction=0.004, max_cvar_fraction=1.0))
    fast = _young_sol(tight, sol_bars=sol_bars, sol_move=0.02)
    with monkeypatch.context() as m:
        m.setattr(risk_gate, "_all_finite", lambda returns: False)
        slow = _young_sol(tight, sol_bars=sol_bars, sol_move=0.02)
        slow_model = _model(slow)
        for h in (fast, slow):
            h.hold(SOL=3_000.0)
            for value in (500.0, 5_000.0, 20_000.0):
                h.submit(h.intent("SOL/USDT", value=value))
                h.submit(h.intent("BTC/USDT", value=value))
                h.submit(h.intent("SOL/USDT", side=Side.SELL, value=value / 2))
    assert _model(fast) == slow_model
    assert _decisions(fast) == _decisions(slow)
    assert (slow_model[3] == []) == (sol_bars >= 252)  # a full clean window: covered


def test_all_finite_is_true_only_without_nan_or_inf() -> None:
    r = np.full((250, 6), 0.01)
    assert risk_gate._all_finite(r)
    for bad in (np.nan, np.inf, -np.inf):
        r2 = r.copy()
        r2[17, 3] = bad
        assert not risk_gate._all_finite(r2)
    # finite values whose sum overflows: not "all finite" here, the column test decides
    with np.errstate(over="ignore"):
        assert not risk_gate._all_finite(np.full((4, 2), 1e308))


@pytest.mark.parametrize("model", ["parametric_ewma", "historical", "monte_carlo"])
def test_prepare_of_a_checked_finite_window_is_the_same_model(model: str) -> None:
    rng = np.random.default_rng(4)
    r = rng.normal(0.0, 0.01, (250, 5))
    cfg = VarConfig(model=model, window_bars=200)
    a, b = VarModel(cfg).prepare(r), VarModel(cfg).prepare(r, finite=True)
    e = rng.normal(0.0, 1000.0, 5)
    assert a.var(e) == b.var(e)
    r[-3, 2] = -1.0  # a price gone to zero: the same refusal either way
    for finite in (False, True):
        with pytest.raises(VarError, match="<= -100%"):
            VarModel(cfg).prepare(r, finite=finite)


def test_the_loss_limits_trip_at_the_mark_a_plain_watch_says() -> None:
    daily, drawdown = 0.03, 0.07
    h = Harness(limits(state=StateLimits(max_daily_loss_fraction=daily,
                                         max_drawdown_fraction=drawdown)), warmup=30)
    h.hold(BTC=40_000.0, ETH=40_000.0)
    ref = NavWatch()
    ref.update(h.gate._nav(), h.ts.date())
    rnd = random.Random(7)
    want_rank, seen = 0, []
    for k in range(400):
        if k % 3 == 0:  # a fill between bars: positions and cash move, no day
            s = rnd.choice(SYMBOLS)
            q = h.qty(s, rnd.uniform(-3_000.0, 3_000.0))
            h.portfolio.positions[s] = h.portfolio.positions.get(s, 0.0) + q
            h.portfolio.cash -= q * h.prices[s] * 1.001
            h.gate.on_fill(Fill(client_order_id=f"f{k}", venue_order_id="v", trade_id=f"t{k}",
                                symbol=s, side=Side.BUY if q > 0 else Side.SELL,
                                quantity=abs(q), price=h.prices[s], fee=0.0, ts=h.ts))
            ref.update(h.gate._nav())
        else:  # a bar, no order
            h.step(moves={s: rnd.gauss(-0.0015, 0.012) for s in SYMBOLS})
            ref.update(h.gate._nav(), h.ts.date())
        if ref.daily_loss > daily:
            want_rank = max(want_rank, TradingState.REDUCING.rank)
        if ref.drawdown > drawdown:
            want_rank = max(want_rank, TradingState.HALTED.rank)
        assert h.gate.state.rank == want_rank, k
        assert (h.gate.nav_watch.peak_nav, h.gate.nav_watch.day,
                h.gate.nav_watch.day_start_nav) == (ref.peak_nav, ref.day, ref.day_start_nav)
        seen.append(want_rank)
    assert seen.count(1) > 0 and seen.count(2) > 0  # both limits tripped on the way


def test_volume_averages_computed_when_read_equal_the_per_bar_ones() -> None:
    h = Harness(limits(volume_window_bars=5), warmup=0)
    gate, rnd = h.gate, random.Random(3)
    windows: dict[str, deque[float]] = {s: deque(maxlen=5) for s in SYMBOLS}
    for _ in range(60):
        for s in SYMBOLS:
            volume: Any = rnd.choice([rnd.uniform(0.0, 100.0), 1e6, 0.0, math.nan, -1.0, 7])
            p = h.prices[s]
            gate.on_bar(Bar(s, h.ts, p, p, p, p, volume, 3600))
            if isinstance(volume, int | float) and math.isfinite(volume) and volume >= 0:
                windows[s].append(float(volume))
            if rnd.random() < 0.3:  # read between bars too, not only after a timestamp
                want = sum(windows[s]) / len(windows[s]) if windows[s] else None
                assert gate.market.avg_volume.get(s) == want
        gate.on_bars_closed(BarsClosed(ts=h.ts, count=len(SYMBOLS)))
        h.bar_no += 1
        for s in SYMBOLS:
            want = sum(windows[s]) / len(windows[s]) if windows[s] else None
            assert gate.market.avg_volume.get(s) == want
            assert gate.market.avg_volume.get(s, 0.0) == (want or 0.0)
            assert gate.participation_cap(s) == (0.0 if not want else 0.02 * want)
            if want is None:
                with pytest.raises(KeyError):
                    gate.market.avg_volume[s]
            else:
                assert gate.market.avg_volume[s] == want
    assert gate.market.avg_volume.get("DOGE/USDT", 0.0) == 0.0
    gate.update_limits(limits(volume_window_bars=3))  # a reload keeps the newest volumes
    for s in SYMBOLS:
        kept = list(windows[s])[-3:]
        assert gate.market.avg_volume.get(s) == (sum(kept) / len(kept) if kept else None)


def test_market_time_converts_each_bar_time_and_keeps_the_newest() -> None:
    h = Harness(warmup=0)
    gate = h.gate
    gate.use_market_time()
    t1 = h.ts
    t2 = t1 + timedelta(hours=1)
    t2_copy = datetime.fromtimestamp(t2.timestamp(), tz=UTC)  # equal, another object
    for s, ts in (("BTC/USDT", t2), ("ETH/USDT", t2), ("SOL/USDT", t1),  # a late bar
                  ("BTC/USDT", t2_copy), ("ETH/USDT", t1)):
        p = h.prices[s]
        gate.on_bar(Bar(s, ts, p, p, p, p, 1.0, 3600))
    assert gate.market.last_seen == {"BTC/USDT": t2.timestamp(), "ETH/USDT": t1.timestamp(),
                                     "SOL/USDT": t1.timestamp()}
    assert gate._market_now == gate._last_bar_at == t2.timestamp() == gate._now()
