"""Out-of-sample backtests of 1-bar VaR forecasts, so users can validate a `VarConfig` on their
own history before the gate trusts it.

Rolling: the model sees bars [t - window, t), forecasts VaR for bar t, and bar t's realised
portfolio return is compared with it; then t moves on one bar. The portfolio holds constant
`weights` (rebalanced every bar), so its return on bar t is weights @ returns[t]. An exception is
a realised loss strictly greater than the forecast VaR.

Statistics (all likelihood ratios are >= 0; rejection at the 5% level):

* Kupiec proportion of failures: are there as many exceptions as 1 - confidence predicts?
  LR_pof ~ chi2(1), reject above 3.841.
* Christoffersen independence: does an exception today make one tomorrow more likely?
  LR_ind ~ chi2(1), reject above 3.841.
* Conditional coverage LR_cc = LR_pof + LR_ind ~ chi2(2), reject above 5.991.
* Basel traffic light over the last 250 bars at 99%: green 0-4, yellow 5-9, red 10+ exceptions.
  Defined only for confidence 0.99 and at least 250 forecasts; otherwise None.

The terms x * log(x / n) with x = 0 are taken as 0 (their limit), so zero exceptions and all
exceptions give finite statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from risk.var import VarConfig, VarModel

CHI2_1DOF_95 = 3.841458820694124  # chi2(1).ppf(0.95)
CHI2_2DOF_95 = 5.991464547107979  # chi2(2).ppf(0.95) = -2 ln 0.05
BASEL_WINDOW = 250
BASEL_CONFIDENCE = 0.99


def chi2_sf(x: float, dof: int) -> float:
    """Upper tail P(X > x) of chi-squared with 1 or 2 degrees of freedom (closed forms, so the
    module needs no scipy)."""
    x = max(x, 0.0)
    if dof == 1:
        return math.erfc(math.sqrt(x / 2.0))
    if dof == 2:
        return math.exp(-x / 2.0)
    raise ValueError(f"dof = {dof}: only 1 and 2 are supported")


def _xlogy(x: float, y: float) -> float:
    # 0 * log(0) = 0: the limit, and what makes the zero/all-exception cases finite
    return 0.0 if x == 0 else x * math.log(y)


def kupiec_pof(observations: int, exceptions: int, p: float) -> float:
    """Kupiec's proportion-of-failures LR for `exceptions` in `observations` at exception
    probability p = 1 - confidence."""
    t, x = observations, exceptions
    if t <= 0 or not 0 <= x <= t:
        raise ValueError(f"need 0 <= exceptions <= observations > 0, got {x}, {t}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"p = {p}: must be in (0, 1)")
    phat = x / t
    null = _xlogy(t - x, 1.0 - p) + _xlogy(x, p)
    alt = _xlogy(t - x, 1.0 - phat) + _xlogy(x, phat)
    return max(-2.0 * (null - alt), 0.0)  # max(): rounding when phat == p


def transition_counts(hits: Sequence[bool] | np.ndarray) -> tuple[int, int, int, int]:
    """(n00, n01, n10, n11): n_ij counts bars with state i followed by state j (1 = exception)."""
    h = np.asarray(hits, dtype=bool)
    prev, nxt = h[:-1], h[1:]
    return (int(np.sum(~prev & ~nxt)), int(np.sum(~prev & nxt)),
            int(np.sum(prev & ~nxt)), int(np.sum(prev & nxt)))


def christoffersen_ind(hits: Sequence[bool] | np.ndarray) -> float:
    """Christoffersen's independence LR: first-order Markov exceptions against i.i.d. ones."""
    n00, n01, n10, n11 = transition_counts(hits)
    total = n00 + n01 + n10 + n11
    if total == 0:
        return 0.0
    pi = (n01 + n11) / total
    # an empty row (no bar in that state before the last) contributes 0 whatever pi_i is
    pi01 = n01 / (n00 + n01) if n00 + n01 else 0.0
    pi11 = n11 / (n10 + n11) if n10 + n11 else 0.0
    null = _xlogy(n00 + n10, 1.0 - pi) + _xlogy(n01 + n11, pi)
    alt = (_xlogy(n00, 1.0 - pi01) + _xlogy(n01, pi01)
           + _xlogy(n10, 1.0 - pi11) + _xlogy(n11, pi11))
    return max(-2.0 * (null - alt), 0.0)


def basel_zone(exceptions: int) -> str:
    """Basel traffic light for exceptions of 99% VaR over 250 bars."""
    if exceptions < 0:
        raise ValueError(f"exceptions = {exceptions}")
    return "green" if exceptions <= 4 else "yellow" if exceptions <= 9 else "red"


@dataclass(frozen=True)
class VarBacktestResult:
    """One (model, confidence) backtest. `hits`, `var` and `loss` are per forecast bar."""

    model: str
    confidence: float
    window_bars: int
    start: str  # first forecast bar
    end: str  # last forecast bar
    observations: int
    exceptions: int
    expected: float
    lr_pof: float
    lr_ind: float
    lr_cc: float
    basel_exceptions: int | None
    basel_zone: str | None
    # mean loss / mean CVaR over exception bars: near 1 if CVaR is calibrated, NaN if none
    es_ratio: float
    hits: tuple[bool, ...] = field(repr=False, compare=False)
    var: tuple[float, ...] = field(repr=False, compare=False)
    loss: tuple[float, ...] = field(repr=False, compare=False)

    @property
    def exception_rate(self) -> float:
        return self.exceptions / self.observations

    @property
    def p_pof(self) -> float:
        return chi2_sf(self.lr_pof, 1)

    @property
    def p_ind(self) -> float:
        return chi2_sf(self.lr_ind, 1)

    @property
    def p_cc(self) -> float:
        return chi2_sf(self.lr_cc, 2)

    @property
    def reject_pof(self) -> bool:
        return self.lr_pof > CHI2_1DOF_95

    @property
    def reject_ind(self) -> bool:
        return self.lr_ind > CHI2_1DOF_95

    @property
    def reject_cc(self) -> bool:
        return self.lr_cc > CHI2_2DOF_95


def evaluate(hits: Sequence[bool] | np.ndarray, confidence: float) -> dict[str, float]:
    """The coverage statistics of an exception sequence: exceptions, expected, LRs."""
    h = np.asarray(hits, dtype=bool)
    t, x = int(h.size), int(h.sum())
    pof = kupiec_pof(t, x, 1.0 - confidence)
    ind = christoffersen_ind(h)
    return {"observations": t, "exceptions": x, "expected": t * (1.0 - confidence),
            "lr_pof": pof, "lr_ind": ind, "lr_cc": pof + ind}


def rolling_forecasts(returns: pd.DataFrame | np.ndarray, weights: np.ndarray,
                      cfg: VarConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(var, cvar, realised loss) per forecast bar t = window_bars .. T-1, as return fractions."""
    if cfg.horizon_bars != 1:
        # overlapping multi-bar exceptions are autocorrelated by construction, which breaks
        # the independence every test here assumes
        raise ValueError(f"horizon_bars = {cfg.horizon_bars}: the backtest is 1-bar only")
    values = (returns.to_numpy(dtype=float) if isinstance(returns, pd.DataFrame)
              else np.asarray(returns, dtype=float))
    w = np.asarray(weights, dtype=float)
    if values.ndim != 2 or w.shape != (values.shape[1],):
        raise ValueError(f"returns {values.shape} and weights {w.shape} do not match")
    n = values.shape[0] - cfg.window_bars
    if n < 1:
        raise ValueError(f"{values.shape[0]} bars: need more than window_bars = "
                         f"{cfg.window_bars} for one out-of-sample forecast")
    model = VarModel(cfg)
    var = np.empty(n)
    cvar = np.empty(n)
    for i in range(n):
        t = cfg.window_bars + i
        var[i], cvar[i] = model.prepare(values[t - cfg.window_bars:t]).var(w)
    loss = -(values[cfg.window_bars:] @ w)
    return var, cvar, loss


def backtest_var(returns: pd.DataFrame | np.ndarray, weights: np.ndarray,
                 cfg: VarConfig) -> VarBacktestResult:
    """Rolling out-of-sample 1-bar backtest of `cfg` on `returns` (simple returns, oldest first)
    for a constant-weight portfolio."""
    var, cvar, loss = rolling_forecasts(returns, weights, cfg)
    hits = loss > var
    stats = evaluate(hits, cfg.confidence)
    basel_x = basel = None
    if math.isclose(cfg.confidence, BASEL_CONFIDENCE) and hits.size >= BASEL_WINDOW:
        basel_x = int(hits[-BASEL_WINDOW:].sum())
        basel = basel_zone(basel_x)
    es_ratio = float(loss[hits].mean() / cvar[hits].mean()) if hits.any() else math.nan
    if isinstance(returns, pd.DataFrame):
        labels = returns.index[cfg.window_bars:]
        start, end = str(labels[0]), str(labels[-1])
    else:
        start, end = str(cfg.window_bars), str(cfg.window_bars + hits.size - 1)
    return VarBacktestResult(
        model=cfg.model, confidence=cfg.confidence, window_bars=cfg.window_bars,
        start=start, end=end, observations=int(stats["observations"]),
        exceptions=int(stats["exceptions"]), expected=stats["expected"],
        lr_pof=stats["lr_pof"], lr_ind=stats["lr_ind"], lr_cc=stats["lr_cc"],
        basel_exceptions=basel_x, basel_zone=basel, es_ratio=es_ratio,
        hits=tuple(bool(b) for b in hits), var=tuple(map(float, var)),
        loss=tuple(map(float, loss)))


def format_table(results: Sequence[VarBacktestResult]) -> str:
    """A fixed-width text table of backtest results; '*' marks a rejection at 5%."""
    head = (f"{'model':<16}{'conf':>6}{'T':>6}{'exc':>5}{'expct':>7}{'rate%':>7}"
            f"{'LRpof':>9}{'LRind':>9}{'LRcc':>9}  {'basel250':<12}{'ES/CVaR':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        zone = f"{r.basel_exceptions} {r.basel_zone}" if r.basel_zone else "n/a"
        lines.append(
            f"{r.model:<16}{r.confidence:>6.3f}{r.observations:>6d}{r.exceptions:>5d}"
            f"{r.expected:>7.1f}{100 * r.exception_rate:>7.2f}"
            f"{r.lr_pof:>8.3f}{'*' if r.reject_pof else ' '}"
            f"{r.lr_ind:>8.3f}{'*' if r.reject_ind else ' '}"
            f"{r.lr_cc:>8.3f}{'*' if r.reject_cc else ' '}"
            f"  {zone:<12}{r.es_ratio:>8.3f}")
    if results:
        lines.append(f"forecasts {results[0].start[:10]} .. {results[0].end[:10]}; "
                     f"* = rejected at 5% (3.841 for 1 dof, 5.991 for 2)")
    return "\n".join(lines)
