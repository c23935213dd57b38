"""Per-trade sizing overlays: fixed-fractional risk and Kelly, each with a cap.

All functions return a fraction of equity (position notional / equity), never negative, never
above the cap; turning that into a quantity goes through `risk.discrete` and MarketRules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class SizingConfig:
    mode: Literal["none", "fixed_fractional", "kelly"] = field(default="none", metadata={
        "doc": "per-asset cap on the solved weights: none, fixed_fractional (w <= "
               "risk_fraction / stop_distance) or kelly (w <= kelly_fraction * mu / sigma^2)"})
    risk_fraction: float = field(default=0.01, metadata={
        "doc": "fixed_fractional: fraction of equity lost if the stop is hit (R)",
        "min": 0.0, "max": 0.2, "exclusive_min": True})
    kelly_fraction: float = field(default=0.5, metadata={
        "doc": "fraction of the full Kelly bet taken (0.5 = half Kelly)", "min": 0.0, "max": 1.0,
        "exclusive_min": True})
    cap: float = field(default=1.0, metadata={
        "doc": "largest position as a fraction of equity any overlay may return",
        "min": 0.0, "exclusive_min": True})
    stop_distance: float = field(default=0.05, metadata={
        "doc": "fixed_fractional: distance from entry to the stop, as a fraction of price "
               "(0.05 = a stop 5% away)", "min": 0.0, "max": 1.0, "exclusive_min": True})


def fixed_fractional(equity: float, risk_fraction: float, entry: float, stop: float,
                     cap: float = 1.0) -> float:
    """Fraction of equity to hold so that a move from entry to stop loses risk_fraction of it:
    notional = equity * R / (|entry - stop| / entry)."""
    if equity <= 0 or entry <= 0:
        return 0.0
    stop_distance = abs(entry - stop) / entry
    if stop_distance == 0:
        return cap  # no stop distance would mean unbounded size; the cap is the limit
    return _capped(risk_fraction / stop_distance, cap)


def fixed_fractional_qty(equity: float, risk_fraction: float, entry: float, stop: float,
                         cap: float = 1.0) -> float:
    """The same size as a base-currency quantity (before lot rounding)."""
    return fixed_fractional(equity, risk_fraction, entry, stop, cap) * equity / entry


def kelly_binary(win_prob: float, win_loss_ratio: float, fraction: float = 1.0,
                 cap: float = 1.0) -> float:
    """Kelly for a bet won with probability p paying b per unit lost: f* = (b p - q) / b,
    scaled by `fraction` (fractional Kelly); no edge -> 0."""
    if not 0.0 <= win_prob <= 1.0 or win_loss_ratio <= 0:
        return 0.0
    f = (win_loss_ratio * win_prob - (1.0 - win_prob)) / win_loss_ratio
    return _capped(f * fraction, cap)


def kelly_from_trades(pnls: list[float], fraction: float = 1.0, cap: float = 1.0) -> float:
    """kelly_binary with p = share of winning trades and b = mean win / mean loss."""
    wins = [x for x in pnls if x > 0]
    losses = [-x for x in pnls if x < 0]
    if not wins or not losses:
        return 0.0  # without both outcomes the odds are unknown: do not bet on them
    p = len(wins) / (len(wins) + len(losses))
    b = (sum(wins) / len(wins)) / (sum(losses) / len(losses))
    return kelly_binary(p, b, fraction, cap)


def kelly_continuous(mean_return: float, variance: float, fraction: float = 1.0,
                     cap: float = 1.0) -> float:
    """Kelly leverage for continuous returns: f* = mu / sigma^2 (same period for both)."""
    if variance <= 0 or not math.isfinite(mean_return):
        return 0.0
    return _capped(mean_return / variance * fraction, cap)


def _capped(f: float, cap: float) -> float:
    return float(min(max(f, 0.0), cap))
