"""When to re-estimate target weights: on a schedule or on a change of volatility regime. Pure.

Re-estimating is separate from trading: a new solve replaces the targets, and only the drift
rules (risk/triggers.py) decide whether the portfolio trades towards them. Counted in bars:

- every_bars:         N bars since the last solve attempt (successful or not);
- window_moved_bars:  the estimation window has N new bars since the last successful solve
                      (after failed solves this keeps asking, at most every retry_after_bars);
- vol_change:         regime change: the annualised realised volatility of the target portfolio
                      over the last vol_window_bars differs from its value at the last solve by
                      more than this fraction (|σ_now / σ_solve - 1| > vol_change).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ScheduleConfig:
    every_bars: int = field(default=24, metadata={
        "doc": "re-solve the targets every this many bars; 0 = off", "min": 0})
    window_moved_bars: int = field(default=0, metadata={
        "doc": "re-solve when the estimation window holds this many bars the last successful "
               "solve did not see; 0 = off", "min": 0})
    vol_change: float = field(default=0.0, metadata={
        "doc": "re-solve when the target portfolio's realised volatility moves by more than "
               "this fraction of its value at the last solve (0.5 = ±50%); 0 = off", "min": 0.0})
    vol_window_bars: int = field(default=20, metadata={
        "doc": "bars of returns in the realised volatility of vol_change", "min": 2})
    retry_after_bars: int = field(default=10, metadata={
        "doc": "after a failed solve, wait this many bars before a scheduled retry", "min": 1})


def realised_vol(returns: np.ndarray, weights: np.ndarray, periods_per_year: float) -> float:
    """Annualised standard deviation of the fixed-weight portfolio's per-bar returns."""
    if returns.shape[0] < 2:
        return math.nan
    port = returns @ weights
    return float(np.std(port, ddof=1) * math.sqrt(periods_per_year))


def resolve_reason(cfg: ScheduleConfig, bars_since_attempt: int | None,
                   bars_since_success: int | None, failed_last: bool,
                   vol_now: float | None = None, vol_at_solve: float | None = None
                   ) -> str | None:
    """Why the targets should be re-solved now, or None. `bars_since_*` are None before the
    first attempt/success; `failed_last` says the latest attempt failed."""
    if bars_since_attempt is None:
        return None
    if failed_last and bars_since_attempt < cfg.retry_after_bars:
        return None
    if cfg.every_bars and bars_since_attempt >= cfg.every_bars:
        return f"schedule: {bars_since_attempt} bars since the last solve"
    if cfg.window_moved_bars and bars_since_success is not None \
            and bars_since_success >= cfg.window_moved_bars and bars_since_attempt >= 1:
        return f"schedule: estimation window moved {bars_since_success} bars"
    if cfg.vol_change and vol_now is not None and vol_at_solve is not None \
            and math.isfinite(vol_now) and math.isfinite(vol_at_solve) and vol_at_solve > 0:
        change = vol_now / vol_at_solve - 1.0
        if abs(change) > cfg.vol_change:
            return (f"regime: realised vol {vol_now:.4f} vs {vol_at_solve:.4f} at the last solve "
                    f"({change:+.1%})")
    return None
