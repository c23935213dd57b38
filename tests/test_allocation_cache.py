"""The parameterised solver cache gives riskfolio-lib's weights, and reuses its problems."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from risk import solver_cache
from risk.allocation import AllocationConfig, solve
from risk.constraints import ConstraintsConfig

DAY = 86_400


def synthetic(n: int, t: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    factor = rng.normal(0.0005, 0.03, size=(t, 1))
    x = factor @ rng.uniform(0.5, 1.5, size=(1, n)) + rng.normal(0.001, 0.02, size=(t, n))
    return pd.DataFrame(x, columns=[f"A{i}/USDT" for i in range(n)],
                        index=pd.date_range("2022-01-01", periods=t, freq="D", tz="UTC"))


CASES = [("min_variance", "MV"), ("max_sharpe", "MV"), ("min_risk", "CVaR")]
CONS = ConstraintsConfig(groups={"g": ["A0/USDT", "A1/USDT", "A2/USDT"]}, group_max={"g": 0.2},
                         cash_buffer=0.05)


@pytest.mark.parametrize("method,rm", CASES)
@pytest.mark.parametrize("cons", [ConstraintsConfig(), CONS], ids=["plain", "groups"])
def test_cache_equals_riskfolio(method, rm, cons):
    r = synthetic(8, 200, seed=3)
    c = AllocationConfig(method=method, risk_measure=rm, lookback_bars=200, max_weight=0.4,
                         constraints=cons)
    cached = solve(r, c, DAY)
    plain = solve(r, replace(c, use_solver_cache=False), DAY)
    assert "solver_cache" in cached.notes and "solver_cache" not in plain.notes
    a, b = np.array(list(cached.weights.values())), np.array(list(plain.weights.values()))
    assert np.abs(a - b).max() < 1e-6


def test_problem_is_built_once_per_shape():
    solver_cache.clear()
    c = AllocationConfig(method="min_variance", lookback_bars=100)
    for seed in range(3):
        solve(synthetic(6, 100, seed), c, DAY)
    assert len(solver_cache._PROBLEMS) == 1
    assert next(iter(solver_cache._PROBLEMS.values())).solves == 3
    solve(synthetic(7, 100, 0), c, DAY)
    assert len(solver_cache._PROBLEMS) == 2


def test_shorts_and_other_measures_bypass_cache():
    r = synthetic(5, 100, 1)
    c = AllocationConfig(method="min_risk", risk_measure="CDaR", lookback_bars=100)
    assert "solver_cache" not in solve(r, c, DAY).notes
