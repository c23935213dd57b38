"""Value at Risk and Expected Shortfall (CVaR) of a portfolio, built for the pre-trade gate.

The work is split in two because the gate asks "VaR after this order" many times per bar:

    prepared = VarModel(cfg).prepare(returns_window)    # once per bar: covariance or scenarios
    var, cvar = prepared.var(exposures)                 # once per order: microseconds

A scenario model also answers from a P&L vector the caller keeps itself
(`ScenarioRisk.risk_of_pnl`, `columns`): the gate moves its book's P&L by the assets an order
or a fill changed, O(S) per order instead of the O(S x N) product.

Conventions (every model):

* `returns_window` holds simple per-bar returns, oldest row first, one column per asset in the
  order the exposures use. Only the last `window_bars` rows are used; fewer is an error.
* `exposures` are signed notionals per asset in quote currency, and VaR/CVaR come back in the
  same unit: pass notionals for a money amount, or weights (fractions of NAV) for a loss
  fraction. Both measures are positively homogeneous, so `var(w * nav) == nav * var(w)`.
* VaR and CVaR are positive for a loss. They are not clipped at zero: the gate compares
  before/after values and clipping would hide a change.
* Parametric and Monte Carlo assume a zero mean (RiskMetrics): a drift estimated from a year of
  crypto returns is mostly noise and, being positive in bull runs, would understate risk.

Horizon (`horizon_bars` = h):

* parametric_ewma: square-root-of-time, sigma_h = sqrt(h) * sigma_1 (i.i.d. normal returns).
* monte_carlo: draws from N(0, h * Sigma), i.e. the same square-root-of-time assumption.
* historical: overlapping h-bar buy-and-hold returns, prod(1 + r) - 1 over every run of h
  consecutive bars in the window (window - h + 1 scenarios). They overlap, so the effective
  sample is about window / h: keep h small relative to the window.

Empirical quantiles (historical, Monte Carlo) match `np.quantile(pnl, 1 - confidence)` (linear
interpolation); Expected Shortfall uses the Acerbi-Tasche estimator (mean of the worst
S * (1 - confidence) scenarios, the boundary one weighted by its fraction), which is >= VaR for
any confidence >= 0.5.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, fields
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

MODELS = ("historical", "parametric_ewma", "monte_carlo")
MC_COVARIANCES = ("ewma", "sample")


class VarError(ValueError):
    """The returns window cannot support the configured model (too short, non-finite, ...)."""


@dataclass(frozen=True)
class VarConfig:
    model: str = field(default="parametric_ewma", metadata={
        "doc": "VaR model", "choices": MODELS})
    confidence: float = field(default=0.99, metadata={
        "doc": "VaR/CVaR confidence level", "min": 0.5, "max": 1.0, "exclusive_max": True})
    horizon_bars: int = field(default=1, metadata={
        "doc": "horizon in bars (sqrt-time for parametric/MC, overlapping returns for "
               "historical)", "min": 1, "unit": "bars"})
    window_bars: int = field(default=250, metadata={
        "doc": "bars of returns each estimate sees (250 = about a year of daily bars)",
        "min": 20, "unit": "bars"})
    ewma_lambda: float = field(default=0.94, metadata={
        "doc": "RiskMetrics EWMA decay (parametric_ewma, and monte_carlo with ewma covariance)",
        "min": 0.0, "max": 1.0, "exclusive_min": True, "exclusive_max": True})
    mc_paths: int = field(default=2000, metadata={
        "doc": "Monte Carlo scenarios per bar", "min": 100})
    mc_covariance: str = field(default="ewma", metadata={
        "doc": "covariance the Monte Carlo draws from", "choices": MC_COVARIANCES})
    seed: int = field(default=20240601, metadata={
        "doc": "Monte Carlo seed; reused every bar (common random numbers), so a change in VaR "
               "between bars comes from the covariance, not from sampling noise", "min": 0})
    max_var_fraction: float = field(default=0.15, metadata={
        "doc": "reject an order that raises VaR above this fraction of NAV",
        "min": 0.0, "exclusive_min": True})
    max_cvar_fraction: float = field(default=0.20, metadata={
        "doc": "reject an order that raises CVaR above this fraction of NAV",
        "min": 0.0, "exclusive_min": True})
    always_allow_reductions: bool = field(default=True, metadata={
        "doc": "an order that only moves positions toward zero (no sign flip) passes even if it "
               "raises VaR, e.g. closing a hedge, so the book can always return to cash"})

    def __post_init__(self) -> None:
        # The settings loader enforces the metadata for TOML; this covers direct construction
        # (backtests, notebooks) so a typo cannot silently produce a meaningless VaR.
        for f in fields(self):
            _check_field(f.name, getattr(self, f.name), f.metadata)
        if self.model == "historical" and self.window_bars - self.horizon_bars + 1 < 20:
            raise ValueError(f"horizon_bars = {self.horizon_bars}: historical needs "
                             f"window_bars - horizon_bars + 1 >= 20 scenarios")


def _check_field(name: str, value: Any, meta: Any) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"{name} = {value!r}: must be one of {', '.join(map(repr, choices))}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("exclusive_min") and value == lo)):
        raise ValueError(f"{name} = {value!r}: must be {'>' if meta.get('exclusive_min') else '>='}"
                         f" {lo}")
    if hi is not None and (value > hi or (meta.get("exclusive_max") and value == hi)):
        raise ValueError(f"{name} = {value!r}: must be {'<' if meta.get('exclusive_max') else '<='}"
                         f" {hi}")


# --------------------------------------------------------------------------- prepared objects


@dataclass(frozen=True, eq=False)
class PreparedRisk:
    """One bar's risk model, ready for cheap per-order evaluation. Picklable."""

    model: str
    confidence: float
    horizon_bars: int
    assets: tuple[str, ...]

    @property
    def n_assets(self) -> int:
        raise NotImplementedError

    def var(self, exposures: np.ndarray) -> tuple[float, float]:
        """(VaR, CVaR) of `exposures`, in the exposures' unit."""
        raise NotImplementedError

    def var_fraction(self, exposures: np.ndarray, nav: float) -> tuple[float, float]:
        """(VaR, CVaR) of notional `exposures` as fractions of `nav`."""
        var, cvar = self.var(exposures)
        return var / nav, cvar / nav

    def _vector(self, exposures: np.ndarray) -> np.ndarray:
        e = np.asarray(exposures, dtype=float)
        if e.shape != (self.n_assets,):
            raise ValueError(f"exposures shape {e.shape}, model has {self.n_assets} assets")
        return e


@dataclass(frozen=True, eq=False)
class ParametricRisk(PreparedRisk):
    """Normal VaR: sqrt(h * e' Sigma e) * z, CVaR = sqrt(h * e' Sigma e) * phi(z) / (1 - c)."""

    covariance: np.ndarray = field(repr=False)  # 1-bar covariance of simple returns
    _k_var: float = field(init=False, repr=False)
    _k_cvar: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        k_var, k_cvar = _normal_factors(self.confidence, self.horizon_bars)
        object.__setattr__(self, "_k_var", k_var)
        object.__setattr__(self, "_k_cvar", k_cvar)

    @property
    def n_assets(self) -> int:
        return self.covariance.shape[0]

    def sigma(self, exposures: np.ndarray) -> float:
        """1-bar standard deviation of the P&L of `exposures`."""
        e = self._vector(exposures)
        # max(): a PSD matrix can still give -1e-20 through rounding. ndarray.dot, not `@`:
        # the same BLAS calls and bits, at half the dispatch cost on the gate's small vectors
        return math.sqrt(max(float(self.covariance.dot(e).dot(e)), 0.0))

    def var(self, exposures: np.ndarray) -> tuple[float, float]:
        # `sigma`, inlined: the gate calls this once per order
        e = self._vector(exposures)
        sd = math.sqrt(max(float(self.covariance.dot(e).dot(e)), 0.0))
        return sd * self._k_var, sd * self._k_cvar


@functools.lru_cache(maxsize=64)
def _normal_factors(confidence: float, horizon_bars: int) -> tuple[float, float]:
    # (VaR, CVaR) per unit of sigma: the same for every bar's model (NormalDist is pure Python)
    nd = NormalDist()
    z = nd.inv_cdf(confidence)
    root_h = math.sqrt(horizon_bars)
    return z * root_h, nd.pdf(z) / (1.0 - confidence) * root_h


@dataclass(frozen=True, eq=False)
class ScenarioRisk(PreparedRisk):
    """Empirical VaR/CVaR over a scenario matrix (historical or simulated)."""

    # (S, N): the return of each asset over the horizon in each scenario
    scenarios: np.ndarray = field(repr=False)
    _j: int = field(init=False, repr=False)
    _g: float = field(init=False, repr=False)
    _m: float = field(init=False, repr=False)
    _fm: int = field(init=False, repr=False)
    _frac: float = field(init=False, repr=False)
    _need: int = field(init=False, repr=False)
    columns: np.ndarray = field(init=False, repr=False)  # scenarios.T, C-contiguous (N, S)

    def __post_init__(self) -> None:
        s = self.scenarios.shape[0]
        tail = 1.0 - self.confidence
        pos = (s - 1) * tail  # np.quantile's 'linear' virtual index
        j = math.floor(pos)
        m = s * tail  # Acerbi-Tasche: the worst m scenarios, m fractional
        fm = math.floor(m)
        # the order statistics up to `need` are all the per-order call has to sort
        object.__setattr__(self, "_j", j)
        object.__setattr__(self, "_g", pos - j)
        object.__setattr__(self, "_m", m)
        object.__setattr__(self, "_fm", fm)
        object.__setattr__(self, "_frac", m - fm)
        object.__setattr__(self, "_need", min(s - 1, max(j + 1, fm)))
        # one asset's returns across the scenarios as a contiguous row: the gate moves a
        # book's P&L vector by one asset per order (`pnl + delta * columns[i]`)
        object.__setattr__(self, "columns", np.ascontiguousarray(self.scenarios.T))

    @property
    def n_assets(self) -> int:
        return self.scenarios.shape[1]

    def pnl(self, exposures: np.ndarray) -> np.ndarray:
        """P&L of `exposures` in every scenario."""
        return self.scenarios.dot(self._vector(exposures))

    def var(self, exposures: np.ndarray) -> tuple[float, float]:
        return self.risk_of_pnl(self.scenarios.dot(self._vector(exposures)))

    def risk_of_pnl(self, pnl: np.ndarray) -> tuple[float, float]:
        """(VaR, CVaR) of a P&L vector over the scenarios (`pnl(exposures)`, or one kept up
        to date by the caller): what `var` does after its matrix product."""
        need = self._need
        # partition puts the need+1 worst outcomes first; sorting those few is cheap
        worst = np.partition(pnl, need)[: need + 1]
        worst.sort()
        j, fm = self._j, self._fm
        lo = float(worst[j])
        q = lo + self._g * (float(worst[j + 1]) - lo)  # j + 1 <= need as confidence < 1
        tail_sum = float(worst[:fm].sum())
        if self._frac > 0.0:
            tail_sum += self._frac * float(worst[fm])
        return -q, -tail_sum / self._m


# --------------------------------------------------------------------------- estimators


def ewma_covariance(returns: np.ndarray, lam: float) -> np.ndarray:
    """RiskMetrics EWMA covariance (zero mean) of `returns` (T, N), newest row weighted most.

    Weights (1 - lam) * lam**age are renormalised to sum to one, so a short window is not biased
    low; at lam = 0.94 and 250 rows the correction is below 1e-6."""
    return (returns * _ewma_weights(returns.shape[0], lam)).T @ returns


@functools.lru_cache(maxsize=64)
def _ewma_weights(t: int, lam: float) -> np.ndarray:
    # the same weights every bar once the window is full: computed once (half the cost of a
    # covariance at 250 x 6), read-only as every caller shares them
    w = lam ** np.arange(t - 1, -1, -1, dtype=float)
    w /= w.sum()
    column = w[:, None]
    column.flags.writeable = False
    return column


def psd_factor(cov: np.ndarray) -> np.ndarray:
    """A with A @ A.T == cov, via eigenvalues so a singular covariance (two identical assets,
    a window shorter than the asset count) still works where Cholesky would fail."""
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2.0)
    return vecs * np.sqrt(np.clip(vals, 0.0, None))


def horizon_returns(returns: np.ndarray, h: int) -> np.ndarray:
    """Overlapping h-bar buy-and-hold returns, shape (T - h + 1, N)."""
    if h == 1:
        return returns
    growth = np.log1p(returns)
    csum = np.vstack([np.zeros((1, returns.shape[1])), np.cumsum(growth, axis=0)])
    return np.expm1(csum[h:] - csum[:-h])


class VarModel:
    """Builds a `PreparedRisk` for one bar from a window of returns, per `VarConfig`."""

    def __init__(self, cfg: VarConfig) -> None:
        self.cfg = cfg

    def prepare(self, returns_window: np.ndarray | pd.DataFrame, *,
                finite: bool = False) -> PreparedRisk:
        """`finite`: the caller has checked that every value is finite (the gate, which
        tests its whole window once); the checks are then one pass instead of two."""
        cfg = self.cfg
        assets: tuple[str, ...] = ()
        if isinstance(returns_window, pd.DataFrame):
            assets = tuple(str(c) for c in returns_window.columns)
            values = returns_window.to_numpy(dtype=float)
        else:
            values = np.asarray(returns_window, dtype=float)
        if values.ndim != 2:
            raise VarError(f"returns must be 2-D (bars, assets), got shape {values.shape}")
        if values.shape[0] < cfg.window_bars:
            raise VarError(f"{values.shape[0]} bars of returns, window_bars = {cfg.window_bars}")
        r = values[-cfg.window_bars:]
        if not finite and not np.isfinite(r).all():
            bad = np.flatnonzero(~np.isfinite(r).all(axis=0)).tolist()
            names = [assets[i] for i in bad] if assets else bad
            raise VarError(f"non-finite returns in columns {names}")
        # on finite values "some r <= -1" is "min(r) <= -1", without a boolean temporary
        if (r.min() <= -1.0) if finite else (r <= -1.0).any():
            raise VarError("a return <= -100%: prices must stay positive")
        common = (cfg.model, cfg.confidence, cfg.horizon_bars, assets)
        if cfg.model == "parametric_ewma":
            return ParametricRisk(*common, covariance=ewma_covariance(r, cfg.ewma_lambda))
        if cfg.model == "historical":
            return ScenarioRisk(*common, scenarios=np.ascontiguousarray(
                horizon_returns(r, cfg.horizon_bars)))
        if cfg.model == "monte_carlo":
            cov = (ewma_covariance(r, cfg.ewma_lambda) if cfg.mc_covariance == "ewma"
                   else np.atleast_2d(np.cov(r, rowvar=False)))
            z = np.random.default_rng(cfg.seed).standard_normal((cfg.mc_paths, r.shape[1]))
            scen = z @ (psd_factor(cov) * math.sqrt(cfg.horizon_bars)).T
            return ScenarioRisk(*common, scenarios=np.ascontiguousarray(scen))
        raise VarError(f"unknown model {cfg.model!r}")


def portfolio_var(returns_window: np.ndarray | pd.DataFrame, exposures: np.ndarray,
                  cfg: VarConfig) -> tuple[float, float]:
    """One-shot (VaR, CVaR) of `exposures` (weights -> loss fraction, notionals -> money)."""
    return VarModel(cfg).prepare(returns_window).var(np.asarray(exposures, dtype=float))


def unit_risk(prepared: PreparedRisk, k: int) -> tuple[float, float]:
    """(VaR, CVaR) of one unit of value in asset `k` alone, long or short, whichever is larger
    (a scenario model's tails differ by side): the risk per unit of |value|."""
    e = np.zeros(prepared.n_assets)
    e[k] = 1.0
    long_var, long_cvar = prepared.var(e)
    short_var, short_cvar = prepared.var(-e)
    return max(long_var, short_var), max(long_cvar, short_cvar)


# --------------------------------------------------------------------------- the gate's rule


def _only_reduces(before: np.ndarray, after: np.ndarray) -> bool:
    # a * (b - a) >= 0 <=> a lies between 0 and b (a == 0 when b == 0): one pass, no branches
    return bool(np.all(after * (before - after) >= 0.0))


def var_check(prepared: PreparedRisk, exposures_before: np.ndarray, exposures_after: np.ndarray,
              nav: float, cfg: VarConfig, *, risk_before: tuple[float, float] | None = None,
              risk_after: tuple[float, float] | None = None,
              ) -> tuple[str, dict[str, Any]] | None:
    """None if the order (before -> after exposures, notionals) may go, else (code, context).

    An order is rejected only if it raises a measure AND leaves it above its limit: an order
    that lowers risk always passes, even while the book is still above the limit, so the gate
    never blocks de-risking. With `always_allow_reductions`, an order that only shrinks
    positions toward zero also passes (historical VaR is not monotone: closing a hedge can raise
    it). A non-finite VaR (NaN exposures) fails closed with `VAR_NOT_FINITE`.

    `risk_before` = `prepared.var(exposures_before)` may be passed by a caller that checks many
    orders against the same book in one bar, saving the second evaluation; `risk_after` =
    `prepared.var(exposures_after)` by a caller that keeps it up to date more cheaply (the
    gate's scenario P&L, moved by one asset per order)."""
    before = np.asarray(exposures_before, dtype=float)
    after = np.asarray(exposures_after, dtype=float)
    var_a, cvar_a = prepared.var(after) if risk_after is None else risk_after
    if not (math.isfinite(var_a) and math.isfinite(cvar_a) and math.isfinite(nav)):
        # a NaN compares False with everything, which would let the order through
        return "VAR_NOT_FINITE", {"var": var_a, "cvar": cvar_a, **_context(prepared, nav)}
    var_limit = cfg.max_var_fraction * nav
    cvar_limit = cfg.max_cvar_fraction * nav
    if var_a <= var_limit and cvar_a <= cvar_limit:
        return None  # the common case: one evaluation, no need for the "before" side
    if cfg.always_allow_reductions and _only_reduces(before, after):
        return None
    var_b, cvar_b = prepared.var(before) if risk_before is None else risk_before
    # `not a <= b`: a NaN "before" (caller bug) must not make every order look risk-reducing
    if var_a > var_limit and not var_a <= var_b:
        return "VAR_ABOVE_LIMIT", {"var": round(var_a, 8), "var_before": round(var_b, 8),
                                   "limit": round(var_limit, 8), **_context(prepared, nav)}
    if cvar_a > cvar_limit and not cvar_a <= cvar_b:
        return "CVAR_ABOVE_LIMIT", {"cvar": round(cvar_a, 8), "cvar_before": round(cvar_b, 8),
                                    "var": round(var_a, 8), "limit": round(cvar_limit, 8),
                                    **_context(prepared, nav)}
    return None


def _context(prepared: PreparedRisk, nav: float) -> dict[str, Any]:
    return {"nav": nav, "model": prepared.model, "confidence": prepared.confidence,
            "horizon_bars": prepared.horizon_bars}
