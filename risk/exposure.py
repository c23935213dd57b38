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
from collections.abc import Sequence
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
    # ndarray.dot, not `@`: for two 1-D float vectors both are one BLAS ddot, the same bits,
    # and `dot` dispatches in half the time (the gate's NAV runs per bar and per fill)
    if all_priced:
        return cash + float(positions.dot(prices))
    unpriced = np.isnan(prices)
    if bool(np.any(positions[unpriced] != 0.0)):
        return math.nan
    return cash + float(positions.dot(np.where(unpriced, 0.0, prices)))


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

    Inputs are plain Python: `held` a tuple (or list) of positions in asset order (reading
    them from the portfolio's dict is one `itemgetter` call, and comparing two is a C loop),
    `pending` a dict symbol -> quantity of working and approved orders (what the OMS's
    `working_quantity` gives, plus orders in flight; symbols the keeper does not know are
    ignored). The changed assets are then the few whose pending quantity moved (one C-level
    symmetric difference of the two dicts' items), plus, after a fill, the positions that
    differ. Their terms are swapped with Python floats (numpy costs about a
    microsecond per call whatever the size: at tens of assets, a handful of scalar swaps is
    cheaper than one vector pass).

    Quantities and values are recomputed element by element (bit-identical to a rebuild);
    gross, net, group sums and NAV's positions term are kept as sums with the changed terms
    swapped, equal to a rebuild to rounding. Each bar's new prices rebuild everything (NAV
    then is `book_nav`'s arithmetic exactly), so the rounding never outlives a bar; so do
    many changes at once and any non-finite sum (a swap cannot take a NaN back out).

    A returned `Book` is a snapshot: the keeper never writes into arrays it has handed out
    (an unchanged book is returned as the same object, so callers can cache by identity)."""

    # beyond this many changed assets a rebuild is as cheap as the swaps (and drifts less)
    MAX_SWAPS: Final = 8

    def __init__(self, symbols: list[str] | tuple[str, ...]) -> None:
        self.symbols = tuple(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.book: Book | None = None
        self._groups: tuple[Group, ...] | None = None
        self._member_of: list[tuple[int, ...]] = []
        self._prices_version = -1
        self._all_priced = False
        self._prices: list[float] = []  # as the values use them: unpriced -> 0.0
        self._held: Sequence[float] = ()
        self._pending: dict[str, float] = {}
        self._cash = math.nan
        self._qty: list[float] = []
        self._values: list[float] = []
        self._held_value = math.nan  # sum of held * price: NAV = cash + this (all priced)
        self.rebuilds = 0  # for tests and benches: how often the keeper started afresh

    def reset(self) -> None:
        """Forget the kept book: the next `update` rebuilds it."""
        self.book = None

    def update(self, held: Sequence[float], pending: dict[str, float], prices: np.ndarray,
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
        old_pending, old_held = self._pending, self._held
        same_held = held == old_held
        if same_held and cash == self._cash and pending == old_pending:
            return book  # nothing moved since the last order
        index = self.index
        # (symbol, quantity) pairs in one dict but not the other: new, gone or changed
        changed = {index[s] for s, _ in pending.items() ^ old_pending.items() if s in index}
        if not same_held:
            # a fill (or a reconciliation): few positions move, but any may. A position the
            # portfolio did not touch is the same float object as last time, so identity
            # finds the moved ones in one C loop (an equal value under a new object is
            # merely swapped for itself)
            changed.update(compress(count(), map(is_not, held, old_held)))
        if len(changed) > self.MAX_SWAPS:
            return self._rebuild(held, pending, prices, prices_version, cash, groups, all_priced)
        qty_vector, values_vector = book.qty.copy(), book.values.copy()
        qty, values, price = self._qty, self._values, self._prices
        gross, net, held_value = book.gross, book.net, self._held_value
        group_gross = list(book.group_gross) if book.group_gross is not None else None
        member_of, symbols = self._member_of, self.symbols
        for i in changed:
            p = price[i]
            h = float(held[i])
            q = h + (0.0 + pending.get(symbols[i], 0.0))  # `positions + pending`, element i
            old, new = values[i], q * p
            held_value += (h - float(old_held[i])) * p
            qty[i] = qty_vector[i] = q
            values[i] = values_vector[i] = new
            net += new - old
            swing = abs(new) - abs(old)
            gross += swing
            if group_gross is not None:
                for k in member_of[i]:
                    group_gross[k] += swing
        if not (math.isfinite(gross) and math.isfinite(net) and math.isfinite(held_value)):
            # a NaN or inf entered or left: a swap cannot take it back out again
            return self._rebuild(held, pending, prices, prices_version, cash, groups, all_priced)
        if all_priced:
            nav = cash + held_value
        else:  # a held asset without a price makes NAV unknown: `book_nav` decides
            nav = book_nav(np.fromiter(held, float, len(held)), prices, cash, all_priced)
        self._held, self._pending, self._cash = held, pending, cash
        self._held_value = held_value
        self.book = Book(qty=qty_vector, values=values_vector, nav=nav, gross=gross, net=net,
                         group_gross=group_gross)
        return self.book

    def _rebuild(self, held: Sequence[float], pending: dict[str, float], prices: np.ndarray,
                 prices_version: int, cash: float, groups: tuple[Group, ...],
                 all_priced: bool) -> Book:
        n = len(held)
        pending_vector = np.zeros(n)
        index = self.index
        for symbol, q in pending.items():
            i = index.get(symbol)
            if i is not None:
                pending_vector[i] += q
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
        priced = prices if all_priced else np.where(np.isnan(prices), 0.0, prices)
        self._prices = priced.tolist()
        # `book_nav`'s dot: NAV == cash + this, exactly, until a swap moves it
        self._held_value = float(held_vector.dot(priced))
        self._qty, self._values = book.qty.tolist(), book.values.tolist()
        self._prices_version, self._all_priced = prices_version, all_priced
        self._held, self._pending, self._cash = held, pending, cash
        self.book = book
        self.rebuilds += 1
        return book


def _frac(x: float, nav: float) -> float:
    return round(x / nav, 6)
