from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from risk.errors import InsufficientHistory
from risk.strategy_allocation import (
    StrategyAllocationConfig,
    allocate,
    curve_score,
    order_notional,
    target_notionals,
)
from risk.vol_target import VolTargetConfig


def streams(seed: int = 0, days: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    common = rng.normal(0, 0.01, days)
    a = 0.002 + common + rng.normal(0, 0.005, days)
    b = 0.002 - common + rng.normal(0, 0.005, days)  # hedges a: the mix is smoother
    c = rng.normal(-0.001, 0.02, days)  # a loser
    return pd.DataFrame({"trend": a, "meanrev": b, "noise": c})


def test_score_is_scale_invariant_and_rewards_straight_lines():
    r = streams()["trend"].to_numpy()
    assert curve_score(r) == pytest.approx(curve_score(3 * r))
    assert curve_score(np.full(50, 0.01)) > curve_score(r)


def test_optimiser_beats_every_simplex_vertex_and_random_mixes():
    r = streams()
    cfg = StrategyAllocationConfig(lookback_days=120)
    alloc = allocate(r, cfg, VolTargetConfig())
    w = np.array(list(alloc.weights.values()))
    assert w.sum() == pytest.approx(1.0) and w.min() >= 0
    assert alloc.weights["noise"] < 0.05
    x = r.to_numpy()
    rand = np.random.default_rng(1).dirichlet(np.ones(3), 1000)
    assert alloc.score >= max(curve_score(x @ p) for p in [*rand, *np.eye(3)]) - 1e-9
    assert alloc.score == pytest.approx(curve_score(x @ w))


def test_k_ratio_and_vol_target():
    r = streams()
    cfg = StrategyAllocationConfig(lookback_days=120, objective="k_ratio", max_weight=0.7)
    alloc = allocate(r, cfg, VolTargetConfig(enabled=True, target_vol=0.05, cap=1.0))
    assert max(alloc.weights.values()) <= 0.7 + 1e-9
    assert alloc.leverage == pytest.approx(min(0.05 / alloc.realised_vol, 1.0))


def test_short_history():
    with pytest.raises(InsufficientHistory):
        allocate(streams(days=30), StrategyAllocationConfig(lookback_days=90), VolTargetConfig())


def test_order_notional():
    assert order_notional(10_000, 0.5, 0.4, -0.25) == pytest.approx(-500.0)
    r = streams()
    alloc = allocate(r, StrategyAllocationConfig(lookback_days=120), VolTargetConfig())
    pos = {"trend": {"BTC/USDT": 1.0}, "meanrev": {"BTC/USDT": -0.5, "ETH/USDT": 1.0}}
    n = target_notionals(1_000, alloc, pos)
    wt, wm = alloc.weights["trend"], alloc.weights["meanrev"]
    assert n["BTC/USDT"] == pytest.approx(1_000 * (wt - 0.5 * wm))
    assert n["ETH/USDT"] == pytest.approx(1_000 * wm)
