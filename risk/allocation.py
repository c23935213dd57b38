"""Target weights from a window of bar returns.

`solve` is a pure function of (returns, config): it runs in a worker process, so everything it
takes and returns pickles. Failures raise `SolveError` with the reason; the rebalancer then keeps
its last good targets. Too little history raises `InsufficientHistory` (a `SolveError`), on which
the rebalancer applies `on_short_history` (`fallback_equal_weight` builds the equal-weight case).

Pipeline: window -> estimators -> PSD check -> constraints -> method (`risk/solver_cache.py`'s
warm-started re-solve when the method allows, riskfolio-lib otherwise) -> constraint check ->
volatility target -> sizing overlay (`risk/overlays.py`) -> turnover cap -> annualised
statistics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

from risk import constraints as cons
from risk import methods, overlays, solver_cache, vol_target
from risk.constraints import ConstraintsConfig
from risk.errors import InsufficientHistory, SolveError
from risk.estimators import Estimates, EstimatorConfig, estimate, is_psd, nearest_psd
from risk.sizing import SizingConfig
from risk.strategy_allocation import StrategyAllocationConfig
from risk.vol_target import VolTargetConfig

METHODS = methods.METHODS
RISK_MEASURES = methods.RISK_MEASURES
__all__ = ["METHODS", "RISK_MEASURES", "Allocation", "AllocationConfig", "InsufficientHistory",
           "ReturnsWindow", "SolveError", "fallback_equal_weight", "periods_per_year", "solve",
           "summarise"]


@dataclass(frozen=True)
class AllocationConfig:
    method: str = field(default="min_variance", metadata={
        "doc": "allocation method", "choices": METHODS})
    risk_measure: str = field(default="MV", metadata={
        "doc": "risk measure of min_risk, max_sharpe, max_utility, target_risk, risk parity and "
               "HRP/HERC (riskfolio-lib codes; min_variance always uses MV)",
        "choices": RISK_MEASURES})
    lookback_bars: int = field(default=90, metadata={
        "doc": "bars of returns the estimators see", "min": 10})
    min_history_bars: int = field(default=30, metadata={
        "doc": "fewer bars than this raises InsufficientHistory", "min": 2})
    on_short_history: Literal["equal_weight", "hold"] = field(default="hold", metadata={
        "doc": "rebalancer's decision on InsufficientHistory: equal_weight targets or hold the "
               "current ones"})
    min_weight: float = field(default=0.0, metadata={
        "doc": "lowest weight of any asset", "min": 0.0, "max": 1.0})
    max_weight: float = field(default=1.0, metadata={
        "doc": "highest weight of any asset", "min": 0.0, "max": 1.0, "exclusive_min": True})
    risk_free_rate: float = field(default=0.0, metadata={
        "doc": "risk-free rate for max_sharpe and reported Sharpe", "unit": "per year"})
    risk_aversion: float = field(default=2.0, metadata={
        "doc": "lambda of max_utility: maximise mu'w - lambda * risk (risk = variance for MV)",
        "min": 0.0, "exclusive_min": True})
    target_return: float | None = field(default=None, metadata={
        "doc": "annualised expected return of the target_return frontier point",
        "unit": "per year"})
    target_risk: float | None = field(default=None, metadata={
        "doc": "risk of the target_risk frontier point: annualised for MV/MAD/MSV, per bar "
               "(CVaR, EVaR, WR) or per window (drawdown measures) otherwise",
        "min": 0.0, "exclusive_min": True})
    cvar_alpha: float = field(default=0.05, metadata={
        "doc": "tail probability of CVaR/EVaR/CDaR/EDaR", "min": 0.0, "max": 0.5,
        "exclusive_min": True})
    risk_budgets: dict[str, float] = field(default_factory=dict, metadata={
        "doc": "risk_budgeting: relative risk budget per asset; unlisted assets get 1.0",
        "min": 0.0, "exclusive_min": True})
    hc_linkage: str = field(default="ward", metadata={
        "doc": "hrp/herc hierarchical clustering linkage",
        "choices": ("single", "complete", "average", "ward", "DBHT")})
    hc_codependence: str = field(default="pearson", metadata={
        "doc": "hrp/herc codependence for the distance matrix",
        "choices": ("pearson", "spearman", "kendall", "abs_pearson", "custom_cov")})
    use_solver_cache: bool = field(default=True, metadata={
        "doc": "re-solve MV min-risk, MV Sharpe and CVaR min-risk warm-started from the "
               "previous solve (active-set QP, HiGHS LP) instead of a cold riskfolio-lib "
               "call (same weights, much faster)"})
    estimators: EstimatorConfig = field(default_factory=EstimatorConfig, metadata={
        "doc": "expected return and covariance estimators"})
    constraints: ConstraintsConfig = field(default_factory=ConstraintsConfig, metadata={
        "doc": "bounds, groups, shorts, cash buffer, turnover"})
    vol_target: VolTargetConfig = field(default_factory=VolTargetConfig, metadata={
        "doc": "volatility targeting overlay"})
    sizing: SizingConfig = field(default_factory=SizingConfig, metadata={
        "doc": "per-trade sizing overlays (fixed fractional, Kelly)"})
    strategies: StrategyAllocationConfig = field(default_factory=StrategyAllocationConfig,
                                                 metadata={"doc": "strategy-stream allocation"})

    def check(self) -> None:
        from daemon.settings import ConfigError

        if self.min_weight > self.max_weight:
            raise ConfigError("allocation.min_weight", self.min_weight,
                              f"must be <= max_weight ({self.max_weight})")
        if self.min_history_bars > self.lookback_bars:
            raise ConfigError("allocation.min_history_bars", self.min_history_bars,
                              f"must be <= lookback_bars ({self.lookback_bars})")
        if self.method == "target_return" and self.target_return is None:
            raise ConfigError("allocation.target_return", None, "required by target_return")
        if self.method == "target_risk" and self.target_risk is None:
            raise ConfigError("allocation.target_risk", None, "required by target_risk")
        if self.constraints.allow_short and self.method in (
                "risk_parity", "risk_budgeting", "hrp", "herc", "inverse_volatility"):
            raise ConfigError("allocation.constraints.allow_short", True,
                              f"method {self.method} is long-only")


@dataclass(frozen=True)
class Allocation:
    """Solved weights (sum to 1 unless a cash buffer or leverage says otherwise) and the
    annualised ex-ante statistics of that portfolio."""

    weights: dict[str, float]
    expected_return: float
    volatility: float
    sharpe: float
    solve_seconds: float = 0.0
    notes: tuple[str, ...] = ()
    span: tuple[str, str] | None = None  # first and last timestamp of the returns used
    method: str = ""
    leverage: float = 1.0  # volatility-target scaling applied (1.0 when off)
    cash: float = 0.0  # 1 - sum(weights): buffer, vol-target and turnover leftovers
    turnover: float | None = None  # sum |w - previous|, when previous weights were given


def periods_per_year(interval_s: int) -> float:
    """Crypto trades 24/7: a year is 365 days of bars."""
    return 365.0 * 86_400.0 / interval_s


@dataclass(frozen=True)
class ReturnsWindow:
    """Bar returns without pandas: `values` (bars x assets) laid out as a DataFrame's
    `to_numpy()` is (column-major), so every reduction and product over it adds in the same
    order and the solve's floats are the same as from the frame; `index` labels the rows
    (bar times). The rebalancer builds one per solve from its ring buffer
    (`CloseHistory.window`); a DataFrame costs more to build than a solve's estimators."""

    values: np.ndarray
    assets: tuple[str, ...]
    index: Sequence[Any]

    @classmethod
    def of(cls, returns: pd.DataFrame | ReturnsWindow) -> ReturnsWindow:
        if isinstance(returns, ReturnsWindow):
            return returns
        return cls(returns.to_numpy(dtype=float), tuple(str(c) for c in returns.columns),
                   returns.index)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def tail(self, bars: int) -> ReturnsWindow:
        """The last `bars` rows (a view, as `iloc[-bars:]` is)."""
        if bars >= len(self):
            return self
        return ReturnsWindow(self.values[-bars:], self.assets, self.index[-bars:])

    def span(self) -> tuple[str, str] | None:
        """First and last row label, as `str` of a DataFrame's index gives them."""
        if not len(self):
            return None
        first, last = self.index[0], self.index[-1]
        return (str(pd.Timestamp(first) if isinstance(first, datetime) else first),
                str(pd.Timestamp(last) if isinstance(last, datetime) else last))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.values, index=list(self.index), columns=list(self.assets))


def validate_returns(returns: pd.DataFrame | ReturnsWindow, min_bars: int = 2) -> None:
    window = ReturnsWindow.of(returns)
    values = window.values
    if values.shape[1] == 0:
        raise SolveError("no assets")
    if values.shape[0] < max(min_bars, 2):
        raise InsufficientHistory(needed=max(min_bars, 2), got=int(values.shape[0]))
    finite = np.isfinite(values)
    if not finite.all():
        bad = [a for a, ok in zip(window.assets, finite.all(axis=0).tolist(), strict=True)
               if not ok]
        raise SolveError(f"non-finite returns in {bad}")


def solve(returns: pd.DataFrame | ReturnsWindow, cfg: AllocationConfig, interval_s: int,
          previous: dict[str, float] | None = None) -> Allocation:
    started = time.perf_counter()
    window = ReturnsWindow.of(returns).tail(cfg.lookback_bars)
    validate_returns(window, cfg.min_history_bars)
    ppy = periods_per_year(interval_s)
    notes: list[str] = []
    est = _estimates(window.values, cfg, notes)
    lc = cons.build(list(window.assets), cfg.constraints, cfg.min_weight, cfg.max_weight)
    capped = cons.caps_below_budget(lc)
    reason = None if capped else cons.precheck(lc)
    if reason:
        raise SolveError(f"infeasible constraints: {reason}")

    if capped:
        # e.g. two listed coins at max_weight 0.4: the caps are the only portfolio left, and
        # refusing to solve would hold 100% cash instead of the 80% the caps allow
        notes.append(f"caps sum to {lc.hi.sum():.4f} < budget {lc.budget:.4f}: every asset "
                     f"at its cap, {lc.budget - lc.hi.sum():.4f} more in cash")
        w = lc.hi.copy()
        lc = replace(lc, budget=float(w.sum()))
    else:
        w = solver_cache.try_solve(window.values, est, cfg, lc, ppy) \
            if cfg.use_solver_cache else None
        if w is None:
            w = methods.weights_for(window.frame(), est, cfg, lc, ppy)
        else:
            notes.append("solver_cache")
    w = _snap(w, lc)
    broken = cons.violations(w, lc, tol=1e-7)
    if broken:
        raise SolveError(f"{cfg.method} cannot satisfy the constraints: {'; '.join(broken)}")

    lev = 1.0
    if cfg.vol_target.enabled:
        w, lev, realised = vol_target.apply(w, window.values, ppy, cfg.vol_target)
        notes.append(f"vol_target: realised {realised:.4f}, leverage {lev:.4f}")
    if cfg.sizing.mode != "none":  # last: its per-asset caps must hold on the final weights
        edge = est.mu - cfg.risk_free_rate / ppy  # Kelly bets on the excess return per bar
        w, cut = overlays.apply_sizing(w, edge, np.diag(est.cov), cfg.sizing, lc.assets)
        notes.extend(cut)
    weights = {a: float(x) for a, x in zip(lc.assets, w, strict=True)}
    moved = None
    if previous is not None:
        cap = cfg.constraints.max_turnover
        if cap is not None:
            weights, frac = cons.limit_turnover(weights, previous, cap)
            if frac < 1.0:
                notes.append(f"turnover cap: moved {frac:.4f} of the way to the target")
        moved = cons.turnover(weights, previous)
    span = window.span()
    stats_w = np.array([weights.get(a, 0.0) for a in lc.assets])
    alloc = summarise(weights, est.mu, est.cov, interval_s, time.perf_counter() - started,
                      tuple(notes), rf=cfg.risk_free_rate, stats_weights=stats_w)
    return _with(alloc, span=span, method=cfg.method, leverage=lev,
                 cash=1.0 - sum(weights.values()), turnover=moved)


def _estimates(window: np.ndarray, cfg: AllocationConfig, notes: list[str]) -> Estimates:
    est = estimate(window, cfg.estimators)
    if not np.isfinite(est.cov).all() or not np.isfinite(est.mu).all():
        raise SolveError("estimators produced non-finite mean or covariance")
    if not is_psd(est.cov):
        low = float(np.linalg.eigvalsh(est.cov)[0])
        if not cfg.estimators.repair_covariance:
            raise SolveError(f"covariance not PSD (min eigenvalue {low:.3g}); "
                             "set estimators.repair_covariance to clip it")
        notes.append(f"covariance repaired (min eigenvalue {low:.3g})")
        est = Estimates(mu=est.mu, cov=nearest_psd(est.cov), repaired=True)
    return est


def _snap(w: np.ndarray, lc: cons.LinearConstraints) -> np.ndarray:
    """Interior-point solutions sit a hair outside their bounds (~1e-10): clip to the box and
    put the rounding residue on the assets with room, so bounds hold exactly."""
    w = np.clip(w, lc.lo, lc.hi)
    resid = lc.budget - w.sum()
    if abs(resid) > 1e-7:  # a real miss, not rounding: let the check report it
        return w
    room = (lc.hi - w) if resid > 0 else (w - lc.lo)
    if room.sum() > 0:
        w = w + resid * room / room.sum()
    return w


def _with(alloc: Allocation, **changes: object) -> Allocation:
    return replace(alloc, **changes)  # type: ignore[arg-type]


def fallback_equal_weight(assets: list[str], cfg: AllocationConfig,
                          span: tuple[str, str] | None = None) -> Allocation:
    """Equal weights over `assets`, after the cash buffer: the on_short_history decision.

    The configured caps hold here too: a weight above its max (max_weight or asset_max) is cut
    to it, and a group above its group_max is scaled down to the cap; what is cut stays in
    cash, as a sizing overlay's cut does (handing it to the others could break their caps)."""
    budget = 1.0 - cfg.constraints.cash_buffer
    lc = cons.build(assets, cfg.constraints, cfg.min_weight, cfg.max_weight)
    w = np.minimum(np.full(len(assets), budget / len(assets)), lc.hi)
    for name, row, cap in zip(lc.row_names, lc.a, lc.b, strict=True):
        held = float(row @ w)
        if name.startswith("group_max:") and held > cap:
            w = np.where(row > 0, w * (cap / held), w)
    notes = ["on_short_history: equal_weight"]
    if w.sum() < budget - 1e-12:
        notes.append(f"caps hold {w.sum():.4f} of the budget {budget:.4f}; the rest in cash")
    weights = {a: float(x) for a, x in zip(assets, w, strict=True)}
    return Allocation(weights=weights, expected_return=math.nan, volatility=math.nan,
                      sharpe=math.nan, notes=tuple(notes), span=span, method="equal_weight",
                      cash=1.0 - float(w.sum()))


def summarise(weights: dict[str, float], mu: np.ndarray, cov: np.ndarray, interval_s: int,
              seconds: float, notes: tuple[str, ...] = (), rf: float = 0.0,
              stats_weights: np.ndarray | None = None) -> Allocation:
    """Annualised expected return, volatility and Sharpe of `weights` (or of `stats_weights`
    when the weights also name assets outside mu/cov, e.g. ones a turnover cap phases out)."""
    n = periods_per_year(interval_s)
    w = np.array(list(weights.values())) if stats_weights is None else stats_weights
    ret = float(w @ mu) * n
    vol = math.sqrt(max(float(w @ cov @ w), 0.0) * n)
    return Allocation(weights=weights, expected_return=ret, volatility=vol,
                      sharpe=(ret - rf) / vol if vol > 0 else 0.0, solve_seconds=seconds,
                      notes=notes)
