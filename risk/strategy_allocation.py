"""Allocation across strategies: each "asset" is a strategy's daily return stream.

File format (read and validated by `adapters/strategy_files.py`, whose docstring has every
rule; this module only takes parsed data):

* one CSV per strategy, `strategies/<name>/returns.csv`, header `date,return`: ISO date
  (UTC day) and that day's simple return of the strategy's own equity at 1x, e.g.
  `2022-10-09,0.0123`; one row per day, no gaps (a flat day is 0.0).
* current positions per strategy, `strategies/<name>/positions.json`:
  `{"as_of": "2022-10-10T00:00:00Z", "positions": {"BTC/USDT": 0.5, "ETH/USDT": 0.25}}`,
  each value the strategy's position in that market as a fraction of its own capital, signed;
  negative (short) positions are refused on a spot account.
The daemon side (`daemon/strategy_targets.py`) turns these into coin weights
leverage × Σ_s w_s × position[s, coin] and publishes them as TargetWeights.

Objective: maximise slope / std of the combined cumulative-return curve over the last N days,
c_t = sum_{s<=t} r_s(w), where slope is the OLS slope of c on t and std is the standard deviation
of c. Note slope/std(c) = corr(t, c) / std(t): it rewards a straight, rising equity line and is
invariant to scaling w, so it is solved on the simplex. `k_ratio` instead divides the slope by
its OLS standard error (Kestner's K-ratio). Both are non-convex: SLSQP from several starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from risk.errors import InsufficientHistory, SolveError
from risk.vol_target import VolTargetConfig
from risk.vol_target import apply as apply_vol_target


@dataclass(frozen=True)
class StrategyAllocationConfig:
    lookback_days: int = field(default=90, metadata={
        "doc": "days of strategy returns the objective sees", "min": 10, "unit": "days"})
    objective: Literal["slope_over_std", "k_ratio"] = field(default="slope_over_std", metadata={
        "doc": "slope_over_std: OLS slope of the cumulative curve / its std; k_ratio: slope / "
               "standard error of the slope"})
    max_weight: float = field(default=1.0, metadata={
        "doc": "highest weight of any strategy", "min": 0.0, "max": 1.0,
        "exclusive_min": True})
    starts: int = field(default=8, metadata={
        "doc": "random simplex starts of the optimiser besides equal weights", "min": 0})
    seed: int = field(default=0, metadata={"doc": "seed of the random starts"})


@dataclass(frozen=True)
class StrategyAllocation:
    weights: dict[str, float]
    score: float  # objective value at the weights
    leverage: float
    realised_vol: float


def curve_score(r: np.ndarray, objective: str = "slope_over_std") -> float:
    """Score of one per-day return stream under `objective` (higher is better)."""
    c = np.cumsum(r)
    t = np.arange(c.size, dtype=float)
    tc = t - t.mean()
    slope = float(tc @ (c - c.mean()) / (tc @ tc))
    if objective == "k_ratio":
        resid = c - c.mean() - slope * tc
        se = np.sqrt(resid @ resid / max(c.size - 2, 1) / (tc @ tc))
        return slope / se if se > 0 else 0.0
    sd = float(np.std(c, ddof=1))
    return slope / sd if sd > 0 else 0.0


def optimise(returns: pd.DataFrame, cfg: StrategyAllocationConfig) -> tuple[np.ndarray, float]:
    x = returns.to_numpy(dtype=float)[-cfg.lookback_days:]
    if x.shape[0] < cfg.lookback_days:
        raise InsufficientHistory(needed=cfg.lookback_days, got=x.shape[0])
    if not np.isfinite(x).all():
        raise SolveError("non-finite strategy returns")
    k = x.shape[1]
    if cfg.max_weight * k < 1.0 - 1e-12:
        raise SolveError(f"infeasible: {k} strategies x max_weight {cfg.max_weight} < 1")

    def neg(w: np.ndarray) -> float:
        return -curve_score(x @ w, cfg.objective)

    rng = np.random.default_rng(cfg.seed)
    starts = [np.full(k, 1.0 / k)] + [rng.dirichlet(np.ones(k)) for _ in range(cfg.starts)]
    best_w, best = starts[0], neg(starts[0])
    for w0 in starts:
        w0 = np.minimum(w0, cfg.max_weight)
        w0 = w0 / w0.sum()
        res = minimize(neg, w0, method="SLSQP", bounds=[(0.0, cfg.max_weight)] * k,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
                       options={"maxiter": 500, "ftol": 1e-12})
        w = np.clip(res.x, 0.0, cfg.max_weight)
        w = w / w.sum()
        if neg(w) < best:
            best_w, best = w, neg(w)
    return best_w, -best


def allocate(returns: pd.DataFrame, cfg: StrategyAllocationConfig, vol: VolTargetConfig
             ) -> StrategyAllocation:
    """Strategy weights on the simplex, then the volatility target on the combined stream
    (daily bars: 365 per year)."""
    w, score = optimise(returns, cfg)
    x = returns.to_numpy(dtype=float)[-cfg.lookback_days:]
    lev, realised = 1.0, float("nan")
    if vol.enabled:
        _, lev, realised = apply_vol_target(w, x, 365.0, vol)
    return StrategyAllocation(weights={str(c): float(v) for c, v in zip(returns.columns, w,
                                                                          strict=True)},
                              score=score, leverage=lev, realised_vol=realised)


def order_notional(account_value: float, leverage: float, strategy_weight: float,
                   strategy_position: float) -> float:
    """Signed notional for one strategy's position in one market."""
    return account_value * leverage * strategy_weight * strategy_position


def target_notionals(account_value: float, alloc: StrategyAllocation,
                     positions: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Net signed notional per market, summed over strategies (positions[strategy][symbol])."""
    out: dict[str, float] = {}
    for strategy, weight in alloc.weights.items():
        for symbol, pos in positions.get(strategy, {}).items():
            out[symbol] = out.get(symbol, 0.0) + order_notional(
                account_value, alloc.leverage, weight, pos)
    return out
