"""Volatility targeting: scale a portfolio so its realised volatility meets a target.

leverage = target annual vol / realised annual vol of the portfolio's own return stream over the
lookback, clipped to [floor, cap]. On a spot account the cap is 1.0: a quiet market cannot borrow,
and whatever is not invested stays in the quote currency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class VolTargetConfig:
    enabled: bool = field(default=False, metadata={
        "doc": "scale the solved weights towards target_vol"})
    target_vol: float = field(default=0.5, metadata={
        "doc": "target annualised volatility of the portfolio", "min": 0.0,
        "exclusive_min": True, "unit": "per year"})
    floor: float = field(default=0.0, metadata={
        "doc": "lowest leverage applied", "min": 0.0})
    cap: float = field(default=1.0, metadata={
        "doc": "highest leverage applied (at most 1.0 on a spot account)", "min": 0.0,
        "exclusive_min": True})
    spot: bool = field(default=True, metadata={
        "doc": "spot account: leverage can never exceed 1.0"})
    ewma_lambda: float | None = field(default=None, metadata={
        "doc": "decay of an EWMA estimate of realised vol; unset = equal-weighted std",
        "min": 0.0, "max": 1.0, "exclusive_min": True, "exclusive_max": True})

    def check(self) -> None:
        from daemon.settings import ConfigError

        if self.spot and self.cap > 1.0:
            raise ConfigError("allocation.vol_target.cap", self.cap,
                              "must be <= 1.0 on a spot account (spot = true)")
        if self.floor > self.cap:
            raise ConfigError("allocation.vol_target.floor", self.floor,
                              f"must be <= cap ({self.cap})")


def realised_vol(portfolio_returns: np.ndarray, ppy: float, ewma_lambda: float | None = None
                 ) -> float:
    """Annualised volatility of a per-bar return stream."""
    r = np.asarray(portfolio_returns, dtype=float)
    if r.size < 2:
        return 0.0
    if ewma_lambda is None:
        var = float(np.var(r, ddof=1))
    else:
        w = ewma_lambda ** np.arange(r.size - 1, -1, -1, dtype=float)
        w /= w.sum()
        var = float(w @ (r - w @ r) ** 2)
    return math.sqrt(max(var, 0.0) * ppy)


def leverage(realised: float, cfg: VolTargetConfig) -> float:
    cap = min(cfg.cap, 1.0) if cfg.spot else cfg.cap
    if realised <= 0 or not math.isfinite(realised):
        return cap  # a flat stream has no risk to scale down
    return float(min(max(cfg.target_vol / realised, cfg.floor), cap))


def apply(weights: np.ndarray, returns: np.ndarray, ppy: float, cfg: VolTargetConfig
          ) -> tuple[np.ndarray, float, float]:
    """(scaled weights, leverage, realised vol before scaling) for a weight vector over the
    columns of `returns` (bars x assets)."""
    vol = realised_vol(np.asarray(returns) @ weights, ppy, cfg.ewma_lambda)
    lev = leverage(vol, cfg)
    return weights * lev, lev, vol
