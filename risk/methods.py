"""Weights for each allocation method, given estimates and constraints.

Classic mean-risk objectives, risk parity/budgeting and HRP/HERC are riskfolio-lib solves
(`rp.Portfolio.optimization`, `rp.Portfolio.rp_optimization`, `rp.HCPortfolio.optimization`);
equal weight and inverse volatility are closed forms. All functions return raw weights in the
asset order of `lc`, summing to `lc.budget`; checking them against the constraints is the
caller's job. riskfolio-lib prints when a problem has no solution, so its stdout is swallowed.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from risk.constraints import LinearConstraints
from risk.errors import SolveError
from risk.estimators import Estimates

if TYPE_CHECKING:
    from risk.allocation import AllocationConfig

Method = Literal["equal_weight", "inverse_volatility", "min_variance", "max_sharpe", "min_risk",
                 "max_return", "max_utility", "target_return", "target_risk", "risk_parity",
                 "risk_budgeting", "hrp", "herc"]
METHODS: tuple[str, ...] = ("equal_weight", "inverse_volatility", "min_variance", "max_sharpe",
                            "min_risk", "max_return", "max_utility", "target_return",
                            "target_risk", "risk_parity", "risk_budgeting", "hrp", "herc")
RiskMeasure = Literal["MV", "MAD", "MSV", "CVaR", "EVaR", "WR", "CDaR", "MDD", "ADD", "EDaR",
                      "UCI"]
RISK_MEASURES: tuple[str, ...] = ("MV", "MAD", "MSV", "CVaR", "EVaR", "WR", "CDaR", "MDD", "ADD",
                                  "EDaR", "UCI")
# riskfolio-lib's attribute holding an upper bound on each risk measure (target_risk)
_UPPER_ATTR = {"MV": "upperdev", "MAD": "uppermad", "MSV": "uppersdev", "CVaR": "upperCVaR",
               "EVaR": "upperEVaR", "WR": "upperwr", "CDaR": "upperCDaR", "MDD": "uppermdd",
               "ADD": "upperadd", "EDaR": "upperEDaR", "UCI": "upperuci"}
# dispersion measures grow with sqrt(time); tail and drawdown measures are quoted per bar/window
SQRT_TIME_MEASURES = ("MV", "MAD", "MSV")
_SOLVERS = ["CLARABEL"]
# Clarabel's defaults leave ~1e-5 of error in weights on these (x1000-scaled) models; the tighter
# gaps cost little at our sizes and make riskfolio-lib and the solver cache agree to ~1e-7
CLARABEL_TIGHT = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10,
                  "tol_ktratio": 1e-8}


def risk_scale(rm: str, ppy: float) -> float:
    """Factor from a per-bar risk value of measure `rm` to the unit target_risk is given in."""
    return math.sqrt(ppy) if rm in SQRT_TIME_MEASURES else 1.0


def weights_for(returns: pd.DataFrame, est: Estimates, cfg: AllocationConfig,
                lc: LinearConstraints, ppy: float) -> np.ndarray:
    method = "min_risk" if cfg.method == "min_variance" else cfg.method
    rm = "MV" if cfg.method == "min_variance" else cfg.risk_measure
    fn = _DISPATCH[method]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            w = fn(returns, est, cfg, lc, ppy, rm)
        except SolveError:
            raise
        except Exception as exc:  # riskfolio/cvxpy raise many types; the reason is what matters
            raise SolveError(f"{cfg.method}: {type(exc).__name__}: {exc}") from exc
    w = np.asarray(w, dtype=float).ravel()
    if w.shape[0] != len(lc.assets) or not np.isfinite(w).all():
        raise SolveError(f"{cfg.method}: solver returned no finite weights")
    return w


def _equal(returns, est, cfg, lc, ppy, rm) -> np.ndarray:
    n = len(lc.assets)
    return np.full(n, lc.budget / n)


def _inverse_vol(returns, est, cfg, lc, ppy, rm) -> np.ndarray:
    vol = np.sqrt(np.diag(est.cov))
    if np.any(vol <= 0):
        raise SolveError("inverse_volatility: an asset has zero volatility")
    inv = 1.0 / vol
    return inv / inv.sum() * lc.budget


def _portfolio(returns: pd.DataFrame, est: Estimates, cfg: AllocationConfig,
               lc: LinearConstraints, scale: float = 1.0) -> Any:
    """A riskfolio Portfolio on our estimates; bounds and groups go in as A w <= b rows, with
    the right-hand side divided by `scale` for solvers that work in a sum-to-one space."""
    import riskfolio as rp  # heavy import: only in the solver process

    port = rp.Portfolio(returns=returns, alpha=cfg.cvar_alpha, sht=lc.allow_short,
                        uppersht=float(max(-lc.lo.min(), 0.0)), upperlng=float(lc.hi.max()),
                        budget=lc.budget, budgetsht=lc.max_gross_short)
    port.solvers = _SOLVERS
    port.sol_params = {"CLARABEL": CLARABEL_TIGHT}
    cols = list(returns.columns)
    port.mu = pd.DataFrame(est.mu[None, :], columns=cols)
    port.cov = pd.DataFrame(est.cov, index=cols, columns=cols)
    a, b = lc.bounds_rows()
    port.ainequality = a
    port.binequality = (b / scale)[:, None]
    return port


def _frame_weights(frame: Any, what: str) -> np.ndarray:
    if frame is None or len(frame) == 0:
        raise SolveError(f"{what}: riskfolio-lib found no solution (infeasible or solver failure)")
    return frame.to_numpy(dtype=float).ravel()


def _classic(obj: str) -> Callable[..., np.ndarray]:
    def run(returns, est, cfg, lc, ppy, rm) -> np.ndarray:
        port = _portfolio(returns, est, cfg, lc)
        rf = cfg.risk_free_rate / ppy
        if cfg.method == "target_return":
            port.lowerret = cfg.target_return / ppy
        if cfg.method == "target_risk":
            setattr(port, _UPPER_ATTR[rm], cfg.target_risk / risk_scale(rm, ppy))
        w = port.optimization(model="Classic", rm=rm, obj=obj, rf=rf, l=cfg.risk_aversion,
                              hist=True)
        return _frame_weights(w, cfg.method)
    return run


def _risk_budget(returns, est, cfg, lc, ppy, rm) -> np.ndarray:
    if lc.allow_short:
        raise SolveError(f"{cfg.method} is long-only")
    port = _portfolio(returns, est, cfg, lc, scale=lc.budget)
    b = risk_budgets(lc.assets, cfg.risk_budgets if cfg.method == "risk_budgeting" else {})
    w = port.rp_optimization(model="Classic", rm=rm, rf=0, b=b[:, None], hist=True)
    return _frame_weights(w, cfg.method) * lc.budget


def risk_budgets(assets: tuple[str, ...], budgets: dict[str, float]) -> np.ndarray:
    """Budgets normalised to sum to one; an asset not listed gets 1.0 before normalising."""
    b = np.array([budgets.get(a, 1.0) for a in assets], dtype=float)
    if np.any(b <= 0):
        raise SolveError("risk budgets must be positive")
    return b / b.sum()


def _hierarchical(model: str) -> Callable[..., np.ndarray]:
    def run(returns, est, cfg, lc, ppy, rm) -> np.ndarray:
        import riskfolio as rp

        if lc.allow_short:
            raise SolveError(f"{cfg.method} is long-only")
        cols = list(returns.columns)
        port = rp.HCPortfolio(returns=returns, alpha=cfg.cvar_alpha, solvers=_SOLVERS,
                              w_max=pd.Series(np.minimum(lc.hi / lc.budget, 1.0), index=cols),
                              w_min=pd.Series(np.maximum(lc.lo / lc.budget, 0.0), index=cols))
        w = port.optimization(
            model=model, codependence=cfg.hc_codependence, rm=rm, rf=0,
            linkage=cfg.hc_linkage, method_mu="custom_mu", method_cov="custom_cov",
            custom_mu=pd.DataFrame(est.mu[None, :], columns=cols),
            custom_cov=pd.DataFrame(est.cov, index=cols, columns=cols), leaf_order=True)
        return _frame_weights(w, cfg.method) * lc.budget
    return run


_DISPATCH: dict[str, Callable[..., np.ndarray]] = {
    "equal_weight": _equal,
    "inverse_volatility": _inverse_vol,
    "min_risk": _classic("MinRisk"),
    "max_sharpe": _classic("Sharpe"),
    "max_return": _classic("MaxRet"),
    "max_utility": _classic("Utility"),
    "target_return": _classic("MinRisk"),
    "target_risk": _classic("MaxRet"),
    "risk_parity": _risk_budget,
    "risk_budgeting": _risk_budget,
    "hrp": _hierarchical("HRP"),
    "herc": _hierarchical("HERC"),
}
