"""When to trade: drift triggers, the calendar fallback and the cooldown. Pure, no I/O.

Drift d_i = w_i - t_i is an asset's weight (working orders included) minus its target, as a
fraction of NAV. The asset-level rules give each asset a half-width b_i of its no-trade band and
fire when |d_i| > b_i; combined, the tightest band wins, so any enabled rule can fire:

- absolute:          b_i = band                         (e.g. ±5 pp)
- relative:          b_i = relative_band × t_i          (e.g. ±25% of the target)
- five_twenty_five:  b_i = min(band, relative_band × t_i): absolute for targets of at least
                     band / relative_band (20% with 5/25), relative below — the "5/25" rule.

The portfolio rule looks at all drifts together and fires when its measure exceeds
`portfolio_threshold`:

- sum_abs:         Σ_i |d_i|  (risky assets only; cash drift is minus their sum)
- tracking_error:  TE(d) = sqrt(d' Σ d × P), the annualised ex-ante tracking error of the drifted
                   portfolio against the target portfolio; Σ is the covariance of per-bar simple
                   returns, P the bars per year (cash has no variance, so it drops out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

ASSET_RULES = ("absolute", "relative", "five_twenty_five")
RULES = (*ASSET_RULES, "portfolio")


@dataclass(frozen=True)
class TriggerConfig:
    rules: list[str] = field(default_factory=lambda: ["absolute"], metadata={
        "doc": "drift rules, any of which triggers a rebalance: absolute (|drift| > band), "
               "relative (|drift| > relative_band × target), five_twenty_five (the tighter of "
               "the two), portfolio (portfolio_measure > portfolio_threshold); empty = only the "
               "calendar", "choices": RULES})
    relative_band: float = field(default=0.25, metadata={
        "doc": "relative band, as a fraction of each asset's target weight",
        "min": 0.0, "exclusive_min": True, "max": 10.0})
    portfolio_measure: Literal["sum_abs", "tracking_error"] = field(
        default="sum_abs", metadata={
            "doc": "portfolio rule's measure: sum of |drift| (fraction of NAV) or annualised "
                   "tracking error of the drift against the target portfolio"})
    portfolio_threshold: float = field(default=0.10, metadata={
        "doc": "the portfolio rule fires above this (fraction of NAV, or annualised TE as a "
               "fraction: 0.02 = 2%)", "min": 0.0, "exclusive_min": True})
    calendar_days: float = field(default=0.0, metadata={
        "doc": "rebalance at least this often if anything drifted (days of bar time since the "
               "last rebalance); 0 = off", "min": 0.0, "unit": "days"})
    calendar_min_drift: float = field(default=0.0, metadata={
        "doc": "the calendar fallback needs some asset's |drift| above this (fraction of NAV)",
        "min": 0.0, "max": 1.0})
    cooldown_bars: int = field(default=0, metadata={
        "doc": "no two rebalances within this many bars", "min": 0})
    rejected_retry_bars: int = field(default=10, metadata={
        "doc": "after a rebalance none of whose orders reached the market (all rejected by the "
               "risk gate or the venue), wait this many bars before trading again", "min": 1})

    def check(self) -> None:
        from daemon.settings import ConfigError

        if len(set(self.rules)) != len(self.rules):
            raise ConfigError("rules", self.rules, "must not repeat a rule")


@dataclass(frozen=True)
class TriggerCheck:
    """What the drift rules saw: `reasons` is empty when nothing fired."""

    reasons: tuple[str, ...]
    breaches: dict[str, tuple[float, float]]  # symbol -> (drift, band half-width)
    max_abs_drift: float
    sum_abs_drift: float
    tracking_error: float | None

    @property
    def fired(self) -> bool:
        return bool(self.reasons)


def asset_bands(targets: Mapping[str, float], rules: Sequence[str], band: float,
                relative_band: float) -> dict[str, float]:
    """Half-width of each asset's no-trade band: the tightest among the enabled asset rules,
    infinite when none is enabled."""
    out = {}
    for symbol, t in targets.items():
        widths = [math.inf]
        if "absolute" in rules:
            widths.append(band)
        if "relative" in rules:
            widths.append(relative_band * abs(t))
        if "five_twenty_five" in rules:
            widths.append(min(band, relative_band * abs(t)))
        out[symbol] = min(widths)
    return out


def tracking_error(drifts: Mapping[str, float], assets: Sequence[str], cov: np.ndarray,
                   periods_per_year: float) -> float:
    """sqrt(d' Σ d × P) over `assets` (the order of `cov`); other assets' drift is not seen."""
    d = np.array([drifts.get(a, 0.0) for a in assets], dtype=float)
    return math.sqrt(max(float(d @ cov @ d), 0.0) * periods_per_year)


def check_drift(drifts: Mapping[str, float], bands: Mapping[str, float], cfg: TriggerConfig,
                te: float | None = None) -> TriggerCheck:
    """Apply the drift rules. `te` is the annualised tracking error of `drifts` (None when there
    is no covariance yet: the tracking-error portfolio rule then does not fire)."""
    # 1e-12: float residue of a position exactly on target (or of a zero target) is not drift
    breaches = {s: (d, bands.get(s, math.inf)) for s, d in drifts.items()
                if abs(d) > bands.get(s, math.inf) + 1e-12}
    reasons: list[str] = []
    if breaches:
        worst = max(breaches, key=lambda s: abs(breaches[s][0]) - breaches[s][1])
        d, b = breaches[worst]
        more = f" (+{len(breaches) - 1} more)" if len(breaches) > 1 else ""
        reasons.append(f"band: {worst} drift {d:+.4f} outside ±{b:.4f}{more}")
    sum_abs = float(sum(abs(d) for d in drifts.values()))
    if "portfolio" in cfg.rules:
        # without a covariance (too little history) the tracking-error rule cannot judge
        value = te if cfg.portfolio_measure == "tracking_error" else sum_abs
        if value is not None and value > cfg.portfolio_threshold:
            reasons.append(f"portfolio: {cfg.portfolio_measure} {value:.4f} > "
                           f"{cfg.portfolio_threshold:.4f}")
    max_abs = max((abs(d) for d in drifts.values()), default=0.0)
    return TriggerCheck(reasons=tuple(reasons), breaches=breaches, max_abs_drift=max_abs,
                        sum_abs_drift=sum_abs, tracking_error=te)


def calendar_due(days_since_rebalance: float, max_abs_drift: float, cfg: TriggerConfig) -> bool:
    """The calendar fallback: at least every `calendar_days`, if anything drifted."""
    return (cfg.calendar_days > 0 and days_since_rebalance >= cfg.calendar_days
            and max_abs_drift > cfg.calendar_min_drift)


def cooldown_left(bars_since_rebalance: int | None, cfg: TriggerConfig) -> int:
    """Bars still to wait before another rebalance (0 = free to trade)."""
    if bars_since_rebalance is None:
        return 0
    return max(cfg.cooldown_bars - bars_since_rebalance, 0)
