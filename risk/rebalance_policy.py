"""How far to trade once a rebalance is triggered, and whether it pays. Pure, no I/O.

Trade policies (weights to trade to, before lot rounding):

- target:   all the way back to the target weights.
- edge:     into the no-trade region with the least trading: every asset inside its band
            |x_i - t_i| <= b_i (and x_i >= 0, spot cannot short) and cash at its target.
            Assets outside their band go to its nearest edge; the cash that frees (or needs) is
            spread over the assets on the side of their targets that can take it, in proportion
            to their distance from target, so no other asset moves away from its target.
            Turnover = Σ |moves to the edges| + |cash imbalance|, the least any point of the
            region needs. When the portfolio rule is enabled and the result is still past its
            threshold, the drift is scaled down onto the threshold.
- partial:  a fixed `fraction` of the way from the current weights to the target.

Cost test (units stated because they differ): the estimated cost of a rebalance is

    cost = Σ_orders |quantity × reference price| × (fee_bps + slippage_bps) / 10⁴ / NAV

a fraction of NAV (logged in bps). Its benefit is the annualised tracking error it removes,

    removed = TE(d_before) - TE(d_after),   TE(d) = sqrt(d' Σ d × bars per year)

with d the drift of the weights before and after the planned orders (lot rounding and skipped
small trades included), a fraction per year (logged in bps). The rebalance is skipped when
cost > max_cost_share × removed: with 0.1, removing 100 bps of annualised tracking error may cost
at most 10 bps of NAV.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Mode = Literal["target", "edge", "partial"]


@dataclass(frozen=True)
class PolicyConfig:
    mode: Mode = field(default="target", metadata={
        "doc": "how far to trade when a drift rule fires: target (all the way), edge (to the "
               "band's edge: the nearest point of the no-trade region), partial (a fraction of "
               "the way)"})
    fraction: float = field(default=0.5, metadata={
        "doc": "partial: fraction of the way from current weights to target",
        "min": 0.0, "exclusive_min": True, "max": 1.0})
    order_type: Literal["market", "limit"] = field(default="market", metadata={
        "doc": "market orders, or marketable limit orders priced at the last close ± "
               "limit_offset_bps (buys above, sells below), rounded to the tick away from the "
               "market"})
    limit_offset_bps: float = field(default=10.0, metadata={
        "doc": "limit orders: how far through the last close the limit price sits; keep it "
               "inside risk.price_collar_pct", "min": 0.0, "max": 500.0, "unit": "bps"})
    limit_timeout_bars: int = field(default=2, metadata={
        "doc": "limit orders still working after this many bars are cancelled (the drift "
               "they were meant to close is then seen again)", "min": 1})


@dataclass(frozen=True)
class CostConfig:
    max_cost_share: float = field(default=0.0, metadata={
        "doc": "skip a rebalance whose estimated fees and slippage (fraction of NAV) exceed "
               "this share of the annualised tracking error it removes; 0 = no cost test",
        "min": 0.0})
    slippage_bps: float = field(default=5.0, metadata={
        "doc": "slippage assumed per traded notional in the cost estimate (fees come from the "
               "venue's fee rate)", "min": 0.0, "max": 1000.0, "unit": "bps"})


def to_target(targets: Mapping[str, float], current: Mapping[str, float]) -> dict[str, float]:
    return {s: targets.get(s, 0.0) for s in _names(current, targets)}


def partial(current: Mapping[str, float], targets: Mapping[str, float],
            fraction: float) -> dict[str, float]:
    return {s: current.get(s, 0.0) + fraction * (targets.get(s, 0.0) - current.get(s, 0.0))
            for s in _names(current, targets)}


def to_band_edge(current: Mapping[str, float], targets: Mapping[str, float],
                 bands: Mapping[str, float]) -> dict[str, float]:
    """The least trading that puts every asset inside its band with cash at its target.

    Assets outside their band [max(t-b, 0), t+b] move to its nearest edge. That frees (or needs)
    cash r = Σt - Σx, which is spread over the assets on the side of their targets that can take
    it (below target when r > 0, above when r < 0) in proportion to their distance from target.
    Since Σ(t - x) = r, those distances always add up to at least |r|: no asset passes its
    target, so every asset not breaching only moves towards its target, never away."""
    names = _names(current, targets)
    w = np.array([current.get(s, 0.0) for s in names])
    t = np.array([targets.get(s, 0.0) for s in names])
    b = np.array([bands.get(s, 0.0) if s in targets else 0.0 for s in names])
    x = np.clip(w, np.maximum(t - b, 0.0), t + b)  # an infinite band leaves the asset alone
    r = float(t.sum() - x.sum())
    room = np.maximum(t - x, 0.0) if r > 0 else np.maximum(x - t, 0.0)
    if r != 0 and room.sum() > 0:
        x = x + np.sign(r) * abs(r) * room / room.sum()
    return dict(zip(names, x.tolist(), strict=True))


def shrink_to_threshold(weights: Mapping[str, float], targets: Mapping[str, float],
                        measure: Callable[[Mapping[str, float]], float],
                        threshold: float) -> dict[str, float]:
    """Scale the drift of `weights` so `measure(drift)` equals `threshold` when it is above it.
    Both portfolio measures (sum |d|, tracking error) are proportional to the drift's size, so
    the scale is exact; the budget and the bands still hold because the drift only shrinks."""
    names = _names(weights, targets)
    d = {s: weights.get(s, 0.0) - targets.get(s, 0.0) for s in names}
    value = measure(d)
    if value <= threshold or value <= 0:
        return {s: weights.get(s, 0.0) for s in names}
    k = threshold / value
    return {s: targets.get(s, 0.0) + k * d[s] for s in names}


def estimated_cost(notionals: Iterable[float], nav: float, fee_rate: float,
                   slippage_bps: float) -> float:
    """Fees plus slippage of trading these notionals, as a fraction of NAV."""
    if nav <= 0:
        return math.inf
    return sum(abs(n) for n in notionals) * (fee_rate + slippage_bps / 10_000.0) / nav


@dataclass(frozen=True)
class CostVerdict:
    passed: bool
    cost: float  # fraction of NAV
    te_before: float | None  # annualised tracking error, fraction
    te_after: float | None
    reason: str

    @property
    def te_removed(self) -> float | None:
        if self.te_before is None or self.te_after is None:
            return None
        return self.te_before - self.te_after


def cost_test(cost: float, te_before: float | None, te_after: float | None,
              max_cost_share: float) -> CostVerdict:
    """Pass unless cost > max_cost_share × (te_before - te_after); see the module docstring."""
    if max_cost_share <= 0:
        return CostVerdict(True, cost, te_before, te_after, "cost test off")
    if te_before is None or te_after is None:
        # no covariance yet (too little history): the benefit cannot be measured, so the
        # drift rule that fired decides alone
        return CostVerdict(True, cost, te_before, te_after, "no covariance: not tested")
    removed = te_before - te_after
    allowed = max_cost_share * removed
    bps = 10_000.0
    text = (f"cost {cost * bps:.2f} bps of NAV vs {max_cost_share:g} × TE removed "
            f"{removed * bps:.2f} bps = {allowed * bps:.2f} bps")
    if cost > allowed:
        return CostVerdict(False, cost, te_before, te_after, text)
    return CostVerdict(True, cost, te_before, te_after, text)


def _names(a: Mapping[str, float], b: Mapping[str, float]) -> list[str]:
    return sorted(set(a) | set(b))
