"""Parameterised cvxpy problems kept between solves (one set per solver worker process).

riskfolio-lib rebuilds and re-canonicalises its whole model on every call; for the three hot
objectives we build the problem once per shape with cvxpy Parameters (covariance factor F with
F'F = cov, mean vector, scenario matrix, bounds, group rows, budget) and only refresh parameter
values afterwards, so a re-solve skips cvxpy's compilation. The formulations are riskfolio-lib's:

* mv_min:    min ||F w||^2                 s.t. sum w = B, lo <= w <= hi, A w <= b
* mv_sharpe: min ||F y||^2 s.t. (mu - rf)'y = 1, sum y = B k, lo k <= y <= hi k, A y <= b k,
             k >= 0; w = y / k (Cornuejols-Tutuncu homogenisation, as riskfolio's 'Sharpe')
* cvar_min:  min VaR + sum(z) / (alpha T)  s.t. z >= -R w - VaR, z >= 0, and the w constraints

so the weights equal riskfolio-lib's up to solver tolerance (checked by tests and the bench).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from risk.constraints import LinearConstraints
from risk.errors import SolveError
from risk.estimators import Estimates, cov_factor

if TYPE_CHECKING:
    from risk.allocation import AllocationConfig

MAX_PROBLEMS = 16
_PROBLEMS: OrderedDict[tuple[Any, ...], _Problem] = OrderedDict()


@dataclass
class _Problem:
    problem: Any
    params: dict[str, Any]
    w: Any
    k: Any | None = None
    solves: int = 0


def kind_for(cfg: AllocationConfig, lc: LinearConstraints) -> str | None:
    """Which cached formulation serves this config, or None for the riskfolio-lib path."""
    if lc.allow_short:
        return None
    rm = "MV" if cfg.method == "min_variance" else cfg.risk_measure
    if cfg.method in ("min_variance", "min_risk") and rm == "MV":
        return "mv_min"
    if cfg.method == "max_sharpe" and rm == "MV":
        return "mv_sharpe"
    if cfg.method == "min_risk" and rm == "CVaR":
        return "cvar_min"
    return None


def try_solve(returns: pd.DataFrame, est: Estimates, cfg: AllocationConfig,
              lc: LinearConstraints, ppy: float) -> np.ndarray | None:
    kind = kind_for(cfg, lc)
    if kind is None:
        return None
    rf = cfg.risk_free_rate / ppy
    if kind == "mv_sharpe" and not np.any(est.mu - rf > 0):
        return None  # riskfolio-lib switches formulation when no asset beats rf: let it
    try:
        return solve_kind(kind, returns.to_numpy(dtype=float), est.mu, est.cov, lc, rf=rf,
                          alpha=cfg.cvar_alpha)
    except SolveError:
        return None  # the cache only accelerates: riskfolio-lib gets the final word


def solve_kind(kind: str, x: np.ndarray, mu: np.ndarray, cov: np.ndarray,
               lc: LinearConstraints, rf: float = 0.0, alpha: float = 0.05) -> np.ndarray:
    import cvxpy as cp

    n = len(lc.assets)
    t = x.shape[0] if kind == "cvar_min" else 0
    key = (kind, n, t, lc.a.shape[0], alpha if kind == "cvar_min" else None)
    prob = _PROBLEMS.get(key)
    if prob is None:
        prob = _build(kind, n, t, lc.a.shape[0], alpha)
        _PROBLEMS[key] = prob
        while len(_PROBLEMS) > MAX_PROBLEMS:
            _PROBLEMS.popitem(last=False)
    _PROBLEMS.move_to_end(key)
    p = prob.params
    p["lo"].value, p["hi"].value, p["budget"].value = lc.lo, lc.hi, lc.budget
    if lc.a.shape[0]:
        p["a"].value, p["b"].value = lc.a, lc.b
    # Rescaled data (argmin unchanged): near the optimum the objective is flat to second order,
    # so with raw variances ~1e-4 the solver's gap tolerance leaves weights loose by ~1e-5;
    # variance scaled to ~1e6 (as riskfolio-lib's x1000) pins them to ~1e-9
    if kind in ("mv_min", "mv_sharpe"):
        p["f"].value = cov_factor(cov / np.mean(np.diag(cov))) * 1e3
    if kind == "mv_sharpe":
        excess = mu - rf
        p["mu"].value = excess / np.abs(excess).max()
    if kind == "cvar_min":
        p["r"].value = x / x.std()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an inaccurate status is handled below
            prob.problem.solve(solver=cp.CLARABEL)  # default gaps suffice on scaled data
    except cp.SolverError as exc:
        raise SolveError(f"{kind}: solver failure: {exc}") from exc
    prob.solves += 1
    if prob.problem.status != "optimal" or prob.w.value is None:
        raise SolveError(f"{kind}: {prob.problem.status}")
    w = np.asarray(prob.w.value, dtype=float)
    if kind == "mv_sharpe":
        k = float(prob.k.value)
        if k <= 0:
            raise SolveError("mv_sharpe: degenerate homogenisation (k <= 0)")
        w = w / k
    # riskfolio-lib returns |w| / sum|w| * budget for long-only; do the same so both agree
    w = np.abs(w)
    return w / w.sum() * lc.budget


def _build(kind: str, n: int, t: int, g: int, alpha: float) -> _Problem:
    import cvxpy as cp

    p: dict[str, Any] = {"lo": cp.Parameter(n), "hi": cp.Parameter(n),
                         "budget": cp.Parameter(nonneg=True)}
    if g:
        p["a"], p["b"] = cp.Parameter((g, n)), cp.Parameter(g)
    w = cp.Variable(n)
    k = None
    if kind == "mv_sharpe":
        k = cp.Variable(nonneg=True)
        p["f"], p["mu"] = cp.Parameter((n, n)), cp.Parameter(n)
        cons = [p["mu"] @ w == 1, cp.sum(w) == p["budget"] * k,
                w >= p["lo"] * k, w <= p["hi"] * k]
        if g:
            cons.append(p["a"] @ w <= p["b"] * k)
        objective = cp.Minimize(cp.sum_squares(p["f"] @ w))
    else:
        cons = [cp.sum(w) == p["budget"], w >= p["lo"], w <= p["hi"]]
        if g:
            cons.append(p["a"] @ w <= p["b"])
        if kind == "mv_min":
            p["f"] = cp.Parameter((n, n))
            objective = cp.Minimize(cp.sum_squares(p["f"] @ w))
        else:
            p["r"] = cp.Parameter((t, n))
            var = cp.Variable()
            z = cp.Variable(t, nonneg=True)
            cons.append(z >= -(p["r"] @ w) - var)
            objective = cp.Minimize(var + cp.sum(z) / (alpha * t))
    problem = cp.Problem(objective, cons)
    if not problem.is_dcp(dpp=True):
        raise SolveError(f"{kind}: problem is not DPP; parameters would not be cached")
    return _Problem(problem=problem, params=p, w=w, k=k)


def clear() -> None:
    _PROBLEMS.clear()
