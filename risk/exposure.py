"""The book as the gate sees it, and the portfolio-level exposure limits.

`Book` holds signed quantities per asset: positions plus every working order plus orders the
gate approved that the OMS has not yet taken in; values are those quantities at the last
close. An order changes one asset, so the "after" measures are the "before" ones with that
asset's term swapped: O(1) per order once the book is built.

`BookKeeper` keeps the book between orders so that it is not rebuilt per order: the gate reads
positions and pending quantities (they live in the portfolio and the OMS, which change them
without telling the gate), and the keeper finds the assets whose quantity moved since the last
order and swaps their terms in gross, net and each group's gross. Between two bars a book
changes by an order or a fill at a time, so that is one or two assets, where a rebuild is
several numpy passes over all of them. New prices (a bar), new groups, many changes or a
non-finite sum rebuild from scratch, so rounding from the swaps never outlives a bar; NAV is
always `book_nav`'s arithmetic (recomputed when positions or cash change), bit-identical to
the loss limits' per-bar NAV.

Rule for every measure: an order is rejected only if it raises the measure AND leaves it above
its cap. An order that lowers a measure always passes, so the gate never blocks de-risking a
book that the market (not an order) pushed over a limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import compress, count
from operator import is_not
from typing import Any, Final

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
    # sum of |value| per group, in the order of the groups the book was kept for
    # (`BookKeeper`); None: `exposure_violation` sums the group's members itself
    group_gross: list[float] | None = None

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

    kept = book.group_gross
    for k, group in enumerate(groups):
        if i not in group.member_set:
            continue
        g_b = kept[k] if kept is not None else float(np.abs(book.values[group.members]).sum())
        g_a = g_b - abs_b + abs_a
        if g_a > group.cap * nav and g_a > g_b:
            return "EXPOSURE_GROUP_ABOVE_MAX", {
                "group": group.name, "symbol": symbol, "fraction": _frac(g_a, nav),
                "fraction_before": _frac(g_b, nav), "max": group.cap, "nav": round(nav, 2)}
    return None


class BookKeeper:
    """The book, kept between orders: `update` returns what `Book.build` would, with group
    sums, doing only the work the change since the last call needs.

    Inputs are plain Python: `held` a list of positions in asset order (a `map` over the
    portfolio's dict costs half a `np.fromiter` of it, and comparing two lists is one C loop),
    `pending` a dict asset index -> quantity of working and approved orders, accumulated in
    the order `Book.build`'s `pending` vector would be (so the quantities are bit-identical).
    The changed assets are then the few whose pending quantity moved, plus, after a fill, the
    positions that differ.

    A returned `Book` is a snapshot: the keeper never writes into arrays it has handed out
    (an unchanged book is returned as the same object, so callers can cache by identity)."""

    # beyond this many changed assets a rebuild is as cheap as the swaps (and drifts less)
    MAX_SWAPS: Final = 8

    def __init__(self) -> None:
        self.book: Book | None = None
        self._groups: tuple[Group, ...] | None = None
        self._member_of: list[tuple[int, ...]] = []
        self._prices_version = -1
        self._all_priced = False
        self._held: list[float] = []
        self._held_vector = np.zeros(0)
        self._pending: dict[int, float] = {}
        self._cash = math.nan
        self.rebuilds = 0  # for tests and benches: how often the keeper started afresh

    def reset(self) -> None:
        """Forget the kept book: the next `update` rebuilds it."""
        self.book = None

    def update(self, held: list[float], pending: dict[int, float], prices: np.ndarray,
               prices_version: int, cash: float, groups: tuple[Group, ...],
               all_priced: bool = False) -> Book:
        """The book of positions `held` plus `pending` at `prices`, cash `cash`.
        `prices_version` must change whenever `prices` does (the gate counts bars): the keeper
        does not compare prices, it is told. The keeper keeps `held` and `pending`: the caller
        must not change them afterwards."""
        book = self.book
        if (book is None or prices_version != self._prices_version or groups is not self._groups
                or all_priced != self._all_priced or len(held) != len(self._held)):
            return self._rebuild(held, pending, prices, prices_version, cash, groups, all_priced)
        old_pending = self._pending
        same_held = cash == self._cash and held == self._held
        if same_held and pending == old_pending:
            return book  # nothing moved since the last order
        # an index twice in `changed` is swapped twice: the second swap changes nothing
        changed = [i for i, q in pending.items() if old_pending.get(i) != q]
        changed += [i for i in old_pending if i not in pending]
        held_vector = self._held_vector
        if not same_held:
            # a fill (or a reconciliation): few positions move, but any may. A position the
            # portfolio did not touch is the same float object as last time, so identity
            # finds the moved ones in one C loop (an equal value under a new object is
            # merely swapped for itself)
            changed += compress(count(), map(is_not, held, self._held))
            held_vector = np.fromiter(held, float, len(held))  # NAV, `book_nav`'s arithmetic
        if len(changed) > self.MAX_SWAPS:
            return self._rebuild(held, pending, prices, prices_version, cash, groups, all_priced)
        qty = book.qty.copy()
        values = book.values.copy()
        gross, net = book.gross, book.net
        group_gross = list(book.group_gross) if book.group_gross is not None else None
        member_of = self._member_of
        for i in changed:
            p = float(prices[i])
            if not all_priced and p != p:
                p = 0.0  # never priced: worth nothing in the exposures, as in `Book.build`
            q = float(held[i]) + pending.get(i, 0.0)  # `positions + pending`, element i
            old, new = float(values[i]), q * p
            qty[i] = q
            values[i] = new
            net += new - old
            swing = abs(new) - abs(old)
            gross += swing
            if group_gross is not None:
                for k in member_of[i]:
                    group_gross[k] += swing
        if not (math.isfinite(gross) and math.isfinite(net)):
            # a NaN or inf entered or left: a swap cannot take it back out again
            return self._rebuild(held, pending, prices, prices_version, cash, groups, all_priced)
        nav = book.nav if same_held else book_nav(held_vector, prices, cash, all_priced)
        self._held, self._held_vector = held, held_vector
        self._pending, self._cash = pending, cash
        self.book = Book(qty=qty, values=values, nav=nav, gross=gross, net=net,
                         group_gross=group_gross)
        return self.book

    def _rebuild(self, held: list[float], pending: dict[int, float], prices: np.ndarray,
                 prices_version: int, cash: float, groups: tuple[Group, ...],
                 all_priced: bool) -> Book:
        n = len(held)
        pending_vector = np.zeros(n)
        for i, q in pending.items():
            pending_vector[i] = q
        held_vector = np.fromiter(held, float, n)
        book = Book.build(held_vector, pending_vector, prices, cash, all_priced)
        if groups is not self._groups or len(self._member_of) != n:
            member_of: list[list[int]] = [[] for _ in range(n)]
            for k, group in enumerate(groups):
                for i in group.members.tolist():
                    member_of[i].append(k)
            self._member_of = [tuple(m) for m in member_of]
            self._groups = groups
        book.group_gross = [float(np.abs(book.values[g.members]).sum()) for g in groups]
        self._prices_version, self._all_priced = prices_version, all_priced
        self._held, self._held_vector = held, held_vector
        self._pending, self._cash = pending, cash
        self.book = book
        self.rebuilds += 1
        return book


def _frac(x: float, nav: float) -> float:
    return round(x / nav, 6)
