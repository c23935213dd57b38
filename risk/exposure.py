"""The book as the gate sees it, and the portfolio-level exposure limits.

`Book` holds signed quantities per asset: positions plus every working order plus orders the
gate approved that the OMS has not yet taken in; values are those quantities at the last
close. An order changes one asset, so the "after" measures are the "before" ones with that
asset's term swapped: O(1) per order once the book is built.

Rule for every measure: an order is rejected only if it raises the measure AND leaves it above
its cap. An order that lowers a measure always passes, so the gate never blocks de-risking a
book that the market (not an order) pushed over a limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from risk.limits import RiskLimits

Violation = tuple[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    members: np.ndarray  # asset indices
    cap: float  # fraction of NAV
    member_set: frozenset[int]


def build_groups(limits: RiskLimits, index: dict[str, int]) -> tuple[Group, ...]:
    """Groups as index arrays; symbols the gate does not trade are dropped (the config check
    reports them at start-up)."""
    out = []
    for name, members in limits.groups.items():
        idx = sorted({index[s] for s in members if s in index})
        if idx:
            out.append(Group(name, np.asarray(idx, dtype=np.intp), limits.group_cap(name),
                             frozenset(idx)))
    return tuple(out)


@dataclass(slots=True)
class Book:
    """Signed quantities and values per asset before the order under test (positions plus
    pending orders), and NAV (cash plus positions only)."""

    qty: np.ndarray
    values: np.ndarray
    nav: float
    gross: float
    net: float

    @classmethod
    def build(cls, positions: np.ndarray, pending: np.ndarray, prices: np.ndarray,
              cash: float, all_priced: bool = False) -> Book:
        """`positions` are what the portfolio holds (they and cash make NAV); `pending` is what
        working and approved orders would add (they count toward exposure, not NAV: their cash
        has not moved yet). `prices` is NaN for an asset never priced: a position there makes
        NAV NaN (unknown, so `nav_valid` fails closed); `all_priced` skips that test."""
        qty = positions + pending
        values = qty * (prices if all_priced else np.where(np.isnan(prices), 0.0, prices))
        nav = book_nav(positions, prices, cash, all_priced)
        return cls(qty=qty, values=values, nav=nav, gross=float(np.abs(values).sum()),
                   net=float(values.sum()))

    def reduces(self, i: int, signed_qty: float) -> bool:
        """The order only moves asset i's position (working orders included) toward zero,
        without crossing it."""
        before = float(self.qty[i])
        after = before + signed_qty
        return before != 0.0 and after * (before - after) >= 0.0

    @property
    def nav_valid(self) -> bool:
        return nav_valid(self.nav)


def book_nav(positions: np.ndarray, prices: np.ndarray, cash: float,
             all_priced: bool = False) -> float:
    """NAV as `Book.build` computes it (cash plus positions at `prices`; NaN when a held asset
    has no price), without the exposures: the gate's per-bar loss limits need only this, and
    sharing the arithmetic keeps their NAV bit-identical to the book's."""
    if all_priced:
        return cash + float(positions @ prices)
    unpriced = np.isnan(prices)
    if bool(np.any(positions[unpriced] != 0.0)):
        return math.nan
    return cash + float(positions @ np.where(unpriced, 0.0, prices))


def nav_valid(nav: float) -> bool:
    return math.isfinite(nav) and nav > 0.0


def exposure_violation(book: Book, i: int, delta_value: float, limits: RiskLimits,
                       groups: tuple[Group, ...], symbol: str) -> Violation | None:
    """First exposure cap that the order (asset i's value changing by `delta_value`) breaks."""
    nav = book.nav
    b_i = float(book.values[i])
    a_i = b_i + delta_value
    abs_b, abs_a = abs(b_i), abs(a_i)

    gross_b = book.gross
    gross_a = gross_b - abs_b + abs_a
    cap = limits.max_gross_exposure * nav
    if gross_a > cap and gross_a > gross_b:
        return "EXPOSURE_GROSS_ABOVE_MAX", {
            "gross": _frac(gross_a, nav), "gross_before": _frac(gross_b, nav),
            "max": limits.max_gross_exposure, "nav": round(nav, 2)}

    net_b = book.net
    net_a = net_b + delta_value
    cap = limits.max_net_exposure * nav
    if abs(net_a) > cap and abs(net_a) > abs(net_b):
        return "EXPOSURE_NET_ABOVE_MAX", {
            "net": _frac(net_a, nav), "net_before": _frac(net_b, nav),
            "max": limits.max_net_exposure, "nav": round(nav, 2)}

    cap = limits.max_asset_fraction * nav
    if abs_a > cap and abs_a > abs_b:
        return "EXPOSURE_ASSET_ABOVE_MAX", {
            "symbol": symbol, "fraction": _frac(abs_a, nav),
            "fraction_before": _frac(abs_b, nav), "max": limits.max_asset_fraction,
            "nav": round(nav, 2)}

    for group in groups:
        if i not in group.member_set:
            continue
        g_b = float(np.abs(book.values[group.members]).sum())
        g_a = g_b - abs_b + abs_a
        if g_a > group.cap * nav and g_a > g_b:
            return "EXPOSURE_GROUP_ABOVE_MAX", {
                "group": group.name, "symbol": symbol, "fraction": _frac(g_a, nav),
                "fraction_before": _frac(g_b, nav), "max": group.cap, "nav": round(nav, 2)}
    return None


def _frac(x: float, nav: float) -> float:
    return round(x / nav, 6)
