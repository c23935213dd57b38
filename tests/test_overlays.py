"""Sizing overlays on solved weights: the defining property of each (fixed fractional: no
weight above R / stop_distance; Kelly: the cut weight is exactly fraction * mu / sigma^2), the
cap, the direction of a short, and the overlay inside `solve`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from daemon.settings import ConfigError, load
from risk.allocation import AllocationConfig, solve
from risk.estimators import EstimatorConfig, estimate
from risk.overlays import apply_sizing, sizing_limits
from risk.sizing import SizingConfig
from risk.vol_target import VolTargetConfig

ASSETS = ["A", "B", "C", "D"]


def test_fixed_fractional_never_above_r_over_stop() -> None:
    cfg = SizingConfig(mode="fixed_fractional", risk_fraction=0.01, stop_distance=0.04)
    rng = np.random.default_rng(3)
    for _ in range(200):
        w = rng.dirichlet(np.ones(4))
        sized, notes = apply_sizing(w, np.zeros(4), np.ones(4), cfg, ASSETS)
        assert np.all(sized <= 0.01 / 0.04 + 1e-15)
        below = w <= 0.25
        assert np.array_equal(sized[below], w[below])  # only shrinks what is over the limit
        assert len(notes) == int((~below).sum())
    # a tighter cap wins over R / stop
    tight = replace(cfg, cap=0.1)
    assert sizing_limits(np.ones(4), np.zeros(4), np.ones(4), tight) == pytest.approx([0.1] * 4)


def test_kelly_cut_equals_fraction_mu_over_var_below_the_cap() -> None:
    cfg = SizingConfig(mode="kelly", kelly_fraction=0.5, cap=1.0)
    mu = np.array([0.0004, 0.0010, -0.0005, 0.0002])
    var = np.array([0.0004, 0.0004, 0.0004, 0.0001])
    w = np.array([0.40, 0.30, 0.20, 0.10])
    sized, _ = apply_sizing(w, mu, var, cfg, ASSETS)
    kelly = 0.5 * mu / var  # 0.5, 1.25, -0.625, 1.0
    assert sized[0] == pytest.approx(0.40)  # below its Kelly limit 0.5: untouched
    assert sized[1] == pytest.approx(0.30)  # Kelly 1.25 > cap 1.0 > w: untouched
    assert sized[2] == 0.0  # a long with negative expected return: no edge, no position
    assert sized[3] == pytest.approx(0.10)
    big = np.array([0.9, 0.9, 0.9, 0.9])
    cut, notes = apply_sizing(big, mu, var, cfg, ASSETS)
    assert cut[0] == pytest.approx(kelly[0])  # exactly fraction * mu / sigma^2
    assert cut[1] == pytest.approx(0.9)  # Kelly 1.25 and cap 1.0 both above 0.9
    assert cut[3] == pytest.approx(0.9)
    assert any(n.startswith("sizing kelly: A 0.9000 -> 0.5000") for n in notes)
    capped = apply_sizing(big, mu, var, replace(cfg, cap=0.2), ASSETS)[0]
    assert capped == pytest.approx([0.2, 0.2, 0.0, 0.2])


def test_kelly_short_needs_a_negative_mean() -> None:
    cfg = SizingConfig(mode="kelly", kelly_fraction=1.0, cap=1.0)
    mu = np.array([-0.0002, 0.0002])
    var = np.array([0.0004, 0.0004])
    sized, _ = apply_sizing(np.array([-0.8, -0.8]), mu, var, cfg, ["A", "B"])
    assert sized[0] == pytest.approx(-0.5)  # short earns -mu: Kelly 0.5 on the short side
    assert sized[1] == 0.0  # a short into a positive drift has no edge


def test_none_leaves_weights_alone() -> None:
    w = np.array([0.9, 0.1])
    sized, notes = apply_sizing(w, np.array([-1.0, -1.0]), np.ones(2), SizingConfig(), ["A", "B"])
    assert np.array_equal(sized, w) and notes == []


def returns(seed: int = 1, bars: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    drift = np.array([0.002, 0.0005, -0.001, 0.001])
    vol = np.array([0.02, 0.01, 0.015, 0.03])
    return pd.DataFrame(drift + vol * rng.standard_normal((bars, 4)), columns=ASSETS)


def test_solve_applies_the_overlay_to_its_final_weights() -> None:
    r = returns()
    base = AllocationConfig(method="equal_weight", lookback_bars=200, min_history_bars=30,
                            estimators=EstimatorConfig(mean="hist", cov="sample"))
    plain = solve(r, base, 86_400)
    assert plain.weights == pytest.approx({a: 0.25 for a in ASSETS})

    kelly = replace(base, sizing=SizingConfig(mode="kelly", kelly_fraction=0.25, cap=1.0))
    sized = solve(r, kelly, 86_400)
    est = estimate(r, base.estimators)
    limit = np.clip(0.25 * est.mu / np.diag(est.cov), 0.0, 1.0)
    for i, a in enumerate(ASSETS):
        assert sized.weights[a] == pytest.approx(min(0.25, limit[i]), rel=1e-9)
    assert sized.weights["C"] == 0.0  # negative drift
    assert sized.cash == pytest.approx(1.0 - sum(sized.weights.values()))
    assert any(n.startswith("sizing kelly: C") for n in sized.notes)

    ff = replace(base, sizing=SizingConfig(mode="fixed_fractional", risk_fraction=0.01,
                                           stop_distance=0.05))
    assert max(solve(r, ff, 86_400).weights.values()) <= 0.2 + 1e-12


def test_solve_overlay_holds_after_the_vol_target() -> None:
    r = returns()
    cfg = AllocationConfig(method="equal_weight", lookback_bars=200, min_history_bars=30,
                           vol_target=VolTargetConfig(enabled=True, target_vol=5.0, cap=3.0,
                                                      spot=False),
                           sizing=SizingConfig(mode="fixed_fractional", risk_fraction=0.02,
                                               stop_distance=0.05))
    alloc = solve(r, cfg, 86_400)
    assert alloc.leverage == pytest.approx(3.0)  # 0.75 per asset before the overlay
    assert alloc.weights == pytest.approx({a: 0.4 for a in ASSETS})


def test_stop_distance_is_validated() -> None:
    with pytest.raises(ConfigError) as exc:
        load(AllocationConfig, {"sizing": {"stop_distance": 0.0}}, "allocation")
    assert exc.value.key == "allocation.sizing.stop_distance"
    cfg = load(AllocationConfig, {"sizing": {"mode": "fixed_fractional", "stop_distance": 0.08}},
               "allocation")
    assert cfg.sizing.stop_distance == 0.08
