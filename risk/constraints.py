"""Portfolio constraints as plain arrays: per-asset bounds, group caps, budget, turnover.

`build` turns the `[allocation.constraints]` table into a `LinearConstraints` for one asset list;
every solver path (riskfolio-lib, the parameterised cache, the heuristic methods) consumes that
one object and `violations` checks any result against it, so a method that cannot honour a
constraint fails loudly instead of returning weights that break it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ConstraintsConfig:
    allow_short: bool = field(default=False, metadata={
        "doc": "allow negative weights (margin accounts only; spot cannot short)"})
    max_short: float = field(default=0.0, metadata={
        "doc": "largest short weight of any one asset, as a positive number",
        "min": 0.0, "max": 1.0})
    max_gross_short: float = field(default=0.0, metadata={
        "doc": "largest sum of short weights", "min": 0.0, "max": 1.0})
    asset_min: dict[str, float] = field(default_factory=dict, metadata={
        "doc": "per-asset lower weight bounds overriding min_weight, e.g. {'BTC/USDT' = 0.1}",
        "min": -1.0, "max": 1.0})
    asset_max: dict[str, float] = field(default_factory=dict, metadata={
        "doc": "per-asset upper weight bounds overriding max_weight", "min": 0.0, "max": 1.0})
    groups: dict[str, list[str]] = field(default_factory=dict, metadata={
        "doc": "named asset groups, e.g. {smart_contract = ['ETH/USDT', 'SOL/USDT']}"})
    group_max: dict[str, float] = field(default_factory=dict, metadata={
        "doc": "cap on the summed weight of each group named in groups", "min": 0.0, "max": 1.0})
    group_min: dict[str, float] = field(default_factory=dict, metadata={
        "doc": "floor on the summed weight of each group named in groups",
        "min": 0.0, "max": 1.0})
    cash_buffer: float = field(default=0.0, metadata={
        "doc": "fraction of equity kept in the quote currency: risky weights sum to 1 - this",
        "min": 0.0, "max": 1.0, "exclusive_max": True})
    max_turnover: float | None = field(default=None, metadata={
        "doc": "cap on sum |w_new - w_previous| per rebalance (a full switch is 2.0); "
               "unset = no cap", "min": 0.0, "max": 2.0, "exclusive_min": True})

    def check(self) -> None:
        from daemon.settings import ConfigError

        for name in (*self.group_max, *self.group_min):
            if name not in self.groups:
                raise ConfigError("allocation.constraints.group_max", name,
                                  f"group {name!r} is not defined in groups")
        if not self.allow_short:
            if self.max_short > 0 or self.max_gross_short > 0:
                raise ConfigError("allocation.constraints.max_short", self.max_short,
                                  "must be 0 unless allow_short = true")
            neg = {k: v for k, v in self.asset_min.items() if v < 0}
            if neg:
                raise ConfigError("allocation.constraints.asset_min", neg,
                                  "negative bounds need allow_short = true")


@dataclass(frozen=True)
class LinearConstraints:
    """lo <= w <= hi, a @ w <= b, sum(w) == budget, for `assets` in this order."""

    assets: tuple[str, ...]
    lo: np.ndarray
    hi: np.ndarray
    a: np.ndarray
    b: np.ndarray
    budget: float
    allow_short: bool
    max_gross_short: float
    row_names: tuple[str, ...] = ()

    @property
    def has_rows(self) -> bool:
        return self.a.shape[0] > 0

    def bounds_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Bounds as extra rows of a @ w <= b, for solvers that take only one matrix."""
        n = len(self.assets)
        eye = np.eye(n)
        a = np.vstack([self.a, eye, -eye])
        b = np.concatenate([self.b, self.hi, -self.lo])
        return a, b


def build(assets: Sequence[str], cfg: ConstraintsConfig, min_weight: float,
          max_weight: float) -> LinearConstraints:
    n = len(assets)
    index = {a: i for i, a in enumerate(assets)}
    floor = -cfg.max_short if cfg.allow_short else min_weight
    lo = np.array([cfg.asset_min.get(a, floor) for a in assets], dtype=float)
    hi = np.array([cfg.asset_max.get(a, max_weight) for a in assets], dtype=float)
    rows: list[np.ndarray] = []
    rhs: list[float] = []
    names: list[str] = []
    for group, members in cfg.groups.items():
        row = np.zeros(n)
        for m in members:
            if m in index:  # a group may list assets outside today's universe
                row[index[m]] = 1.0
        if group in cfg.group_max:
            rows.append(row)
            rhs.append(cfg.group_max[group])
            names.append(f"group_max:{group}")
        if group in cfg.group_min:
            rows.append(-row)
            rhs.append(-cfg.group_min[group])
            names.append(f"group_min:{group}")
    a = np.vstack(rows) if rows else np.zeros((0, n))
    return LinearConstraints(
        assets=tuple(assets), lo=lo, hi=hi, a=a, b=np.array(rhs, dtype=float),
        budget=1.0 - cfg.cash_buffer, allow_short=cfg.allow_short,
        max_gross_short=cfg.max_gross_short, row_names=tuple(names))


def caps_below_budget(lc: LinearConstraints) -> bool:
    """Long-only upper bounds that cannot reach the budget (while the rest is consistent):
    the one portfolio left is every asset at its cap, the remainder in cash."""
    return (not lc.allow_short and lc.hi.sum() < lc.budget - 1e-12
            and bool(np.all(lc.lo <= lc.hi + 1e-12))
            and (not lc.has_rows or bool(np.all(lc.a @ lc.hi <= lc.b + 1e-12))))


def precheck(lc: LinearConstraints) -> str | None:
    """A reason the box and budget are infeasible, or None (groups are left to the solver)."""
    if np.any(lc.lo > lc.hi + 1e-12):
        bad = [a for a, lo, hi in zip(lc.assets, lc.lo, lc.hi, strict=True) if lo > hi]
        return f"lower bound above upper bound for {bad}"
    if lc.lo.sum() > lc.budget + 1e-12:
        return f"minimum weights sum to {lc.lo.sum():.6g} > budget {lc.budget:.6g}"
    if lc.hi.sum() < lc.budget - 1e-12:
        return f"maximum weights sum to {lc.hi.sum():.6g} < budget {lc.budget:.6g}"
    return None


def violations(w: np.ndarray, lc: LinearConstraints, tol: float = 1e-8) -> list[str]:
    out = []
    if abs(w.sum() - lc.budget) > tol:
        out.append(f"weights sum to {w.sum():.10g}, budget {lc.budget:.10g}")
    for asset, wi, lo, hi in zip(lc.assets, w, lc.lo, lc.hi, strict=True):
        if wi < lo - tol or wi > hi + tol:
            out.append(f"{asset} weight {wi:.10g} outside [{lo:.6g}, {hi:.6g}]")
    if lc.has_rows:
        slack = lc.a @ w - lc.b
        out += [f"{name} exceeded by {s:.3g}"
                for name, s in zip(lc.row_names, slack, strict=True) if s > tol]
    if lc.allow_short and np.sum(np.maximum(-w, 0.0)) > lc.max_gross_short + tol:
        out.append(f"gross short {np.sum(np.maximum(-w, 0.0)):.6g} > {lc.max_gross_short:.6g}")
    return out


def turnover(w: Mapping[str, float], previous: Mapping[str, float]) -> float:
    # summed in the maps' own order: a set's order changes with the process's hash seed, and
    # with it the sum's last bits (and `limit_turnover`'s weights): replays must repeat exactly
    keys = dict.fromkeys([*w, *previous])
    return float(sum(abs(w.get(k, 0.0) - previous.get(k, 0.0)) for k in keys))


def limit_turnover(w: Mapping[str, float], previous: Mapping[str, float],
                   max_turnover: float) -> tuple[dict[str, float], float]:
    """Move from `previous` towards `w` only as far as the cap allows: w' = p + a (w - p).

    riskfolio-lib only bounds each asset's |w_i - p_i|, not the sum, so the total cap is applied
    here for every method. When `previous` satisfies the linear constraints the blend does too
    (they are convex). Returns the blended weights (over the union of both universes, so an asset
    leaving the universe is phased out) and the fraction a of the move that was made.
    """
    t = turnover(w, previous)
    if t <= max_turnover:
        return dict(w), 1.0
    a = max_turnover / t
    keys = list(dict.fromkeys([*w, *previous]))
    out = {k: previous.get(k, 0.0) + a * (w.get(k, 0.0) - previous.get(k, 0.0)) for k in keys}
    return out, a
