"""The gate's incremental bookkeeping against from-scratch computations, on random sequences:
the kept book (risk/exposure.py `BookKeeper`), the scenario P&L moved by one asset per order
(risk/checks.py `VarView.book_pnl`), the one-division lot-step check (risk/market_rules.py).
A drift in any of them would show here long before it flipped a decision."""

from __future__ import annotations

import math
import random
from decimal import ROUND_DOWN, ROUND_HALF_EVEN
from typing import Any

import numpy as np
import pytest

from daemon.events import Bar, BarsClosed, OrderIntent, OrderType, Side
from daemon.portfolio import Portfolio
from daemon.risk_gate import RiskGate
from risk.checks import VarView
from risk.exposure import Book, BookKeeper, build_groups
from risk.limits import RiskLimits
from risk.market_rules import MarketRules, _quantise
from risk.var import ScenarioRisk, VarConfig, VarModel

TOL = 1e-9


def scratch(held: list[float], pending: dict[int, float], prices: np.ndarray, cash: float,
            groups: Any, all_priced: bool) -> tuple[Book, list[float]]:
    """`Book.build` as the gate called it before the keeper: a pending vector by index."""
    vector = np.zeros(len(held))
    for i, q in pending.items():
        vector[i] += q
    book = Book.build(np.array(held, dtype=float), vector, prices, cash, all_priced)
    return book, [float(np.abs(book.values[g.members]).sum()) for g in groups]


def assert_same_book(kept: Book, book: Book, group_gross: list[float]) -> None:
    # quantities and values are recomputed element by element: bit-identical
    assert kept.qty.tobytes() == book.qty.tobytes()
    assert kept.values.tobytes() == book.values.tobytes()
    # the sums (NAV's positions term too) are swapped term by term: equal to rounding
    if math.isnan(book.nav):
        assert math.isnan(kept.nav)
    else:
        assert abs(kept.nav - book.nav) <= TOL * abs(book.nav)
    scale = max(book.gross, 1.0)
    assert abs(kept.gross - book.gross) <= TOL * scale
    assert abs(kept.net - book.net) <= TOL * scale
    assert kept.group_gross is not None
    for a, b in zip(kept.group_gross, group_gross, strict=True):
        assert abs(a - b) <= TOL * scale


@pytest.mark.parametrize("seed", range(6))
def test_kept_book_matches_a_rebuild_on_random_orders_and_fills(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([3, 10, 50, 200])
    symbols = [f"S{i}" for i in range(n)]
    limits = RiskLimits(groups={"a": symbols[: n // 2], "b": symbols[n // 3:],
                                "c": symbols[::3]})
    groups = build_groups(limits, {s: i for i, s in enumerate(symbols)})
    prices = np.array([10.0 ** rng.uniform(-2, 4) for _ in range(n)])
    unpriced = seed % 3 == 0  # some assets never priced: NaN prices, worth 0 in exposures
    if unpriced:
        prices[rng.sample(range(n), max(1, n // 10))] = np.nan
    all_priced = not unpriced
    positions = [rng.uniform(-5, 5) * 1_000 / p if p == p else 0.0 for p in prices]
    working: list[tuple[int, float]] = [(rng.randrange(n), rng.uniform(-1, 1))
                                        for _ in range(n // 4)]
    cash, version = 1e6, 0
    keeper = BookKeeper(symbols)
    for _ in range(600):
        roll = rng.random()
        if roll < 0.45:  # an order approved: working until filled
            working.append((rng.randrange(n), rng.uniform(-3, 3)))
        elif roll < 0.8 and working:  # a fill: working -> position, cash moves
            i, q = working.pop(rng.randrange(len(working)))
            positions[i] += q
            cash -= q * (prices[i] if prices[i] == prices[i] else 0.0)
        elif roll < 0.85:  # a cancel
            if working:
                working.pop(rng.randrange(len(working)))
        elif roll < 0.9:  # a bar: new prices
            moved = prices * (1.0 + np.array([rng.gauss(0, 0.01) for _ in range(n)]))
            prices = moved
            version += 1
        elif roll < 0.93:  # a reconciliation moves many positions at once
            for i in rng.sample(range(n), min(n, 12)):
                positions[i] = rng.uniform(-5, 5)
        # else: nothing moved since the last order
        held = list(positions)
        pending: dict[int, float] = {}
        for i, q in working:
            pending[i] = pending.get(i, 0.0) + q
        by_symbol = {symbols[i]: q for i, q in pending.items()}
        by_symbol["NOT/TRADED"] = 1.0  # a symbol the keeper does not know: ignored
        kept = keeper.update(held, by_symbol, prices, version, cash, groups, all_priced)
        book, group_gross = scratch(held, pending, prices, cash, groups, all_priced)
        assert_same_book(kept, book, group_gross)
    # the point of it: most orders were swaps, not rebuilds
    assert keeper.rebuilds < 200


def test_kept_book_recovers_from_a_nan_quantity() -> None:
    groups = build_groups(RiskLimits(groups={"g": ["A", "B"]}), {"A": 0, "B": 1, "C": 2})
    prices = np.array([1.0, 2.0, 3.0])
    keeper = BookKeeper(["A", "B", "C"])
    for held in ([1.0, 2.0, 3.0], [math.nan, 2.0, 3.0], [1.0, 2.0, 4.0], [1.0, 2.0, 5.0]):
        kept = keeper.update(list(held), {"B": 0.5}, prices, 0, 10.0, groups, True)
        book, group_gross = scratch(held, {1: 0.5}, prices, 10.0, groups, True)
        if math.isnan(book.gross):
            assert math.isnan(kept.gross)
        else:
            assert_same_book(kept, book, group_gross)


def test_an_unchanged_book_is_the_same_object() -> None:
    keeper = BookKeeper(["A", "B"])
    prices = np.array([1.0, 2.0])
    a = keeper.update([1.0, 2.0], {"A": 1.0}, prices, 0, 5.0, (), True)
    assert keeper.update([1.0, 2.0], {"A": 1.0}, prices, 0, 5.0, (), True) is a
    b = keeper.update([1.0, 2.0], {"A": 2.0}, prices, 0, 5.0, (), True)
    assert b is not a and a.qty.tolist() == [2.0, 2.0]  # a snapshot: never written to
    assert b.qty.tolist() == [3.0, 2.0]


@pytest.mark.parametrize("model", ["historical", "monte_carlo"])
def test_scenario_pnl_moved_per_order_matches_the_full_product(model: str) -> None:
    rng = np.random.default_rng(11)
    n = 30
    returns = rng.normal(0.0, 0.01, (260, n)) + rng.normal(0.0, 0.01, (260, 1))
    prepared = VarModel(VarConfig(model=model, mc_paths=1000)).prepare(returns)
    assert isinstance(prepared, ScenarioRisk)
    view = VarView(prepared=prepared)
    values = rng.normal(0.0, 1e4, n)
    for step in range(400):
        if step % 3:  # the book moved by an earlier order or fill: one or two assets
            values = values.copy()
            for i in rng.choice(n, size=rng.integers(1, 3), replace=False):
                values[i] += rng.normal(0.0, 5e3)
        if step % 97 == 0:  # many at once: the full product
            values = values + rng.normal(0.0, 1e3, n)
        pos, delta = int(rng.integers(n)), float(rng.normal(0.0, 5e3))
        pnl = view.book_pnl(prepared, values)
        got = prepared.risk_of_pnl(pnl + delta * prepared.columns[pos])
        after = values.copy()
        after[pos] += delta
        want = prepared.var(after)
        scale = float(np.abs(values).sum()) + abs(delta)
        assert abs(got[0] - want[0]) <= TOL * scale and abs(got[1] - want[1]) <= TOL * scale
        np.testing.assert_allclose(pnl, prepared.pnl(values), rtol=0, atol=TOL * scale)


def _old_is_on_step(rules: MarketRules, qty: float) -> bool:
    floor = _quantise(qty, rules.amount_step, ROUND_DOWN)
    return floor == _quantise(qty, rules.amount_step, ROUND_HALF_EVEN) and abs(
        qty - floor) <= rules.amount_step * 1e-9


def _old_is_on_tick(rules: MarketRules, price: float) -> bool:
    return abs(price - _quantise(price, rules.price_tick, ROUND_HALF_EVEN)) <= \
        rules.price_tick * 1e-9


def test_lot_step_and_tick_checks_are_the_plain_decimal_rules() -> None:
    rng = random.Random(5)
    steps = [1e-8, 1e-5, 0.001, 0.01, 0.1, 1.0, 0.5, 0.25, 5.0, 10.0, 0.003, 1e-20, 0.0, -1.0]
    for _ in range(40_000):
        step = rng.choice(steps)
        rules = MarketRules("A/B", "A", "B", step, step)
        base = rng.choice([rng.randint(0, 10**6), rng.randint(0, 10**12),
                           rng.randint(0, 10**20)]) * step
        x = rng.choice([base, base + step * rng.choice([1e-10, 1e-9, 2e-9, 0.5, -1e-10]),
                        rng.uniform(0, 1e4), math.nan, math.inf, -base, 3, 10**30,
                        np.float64(base), base * (1 + 1e-16), 0.30000000000000004,
                        0.29999999999999993, rules.floor_qty(rng.uniform(0, 1e6)),
                        rules.round_price(rng.uniform(0, 1e6))])
        for fast, plain in ((rules.is_on_step, _old_is_on_step),
                            (rules.is_on_tick, _old_is_on_tick)):
            try:
                want: Any = plain(rules, x)
            except Exception as exc:  # e.g. a quotient beyond Decimal's 28 digits
                want = type(exc)
            try:
                got: Any = fast(x)
            except Exception as exc:
                got = type(exc)
            assert got == want, (step, x, fast.__name__)


def test_the_gate_decides_on_the_book_a_rebuild_gives() -> None:
    """Through the gate: approved orders go in flight, the OMS takes some in, fills move
    positions; before each order the gate's book equals one built from scratch."""
    rng = random.Random(3)
    symbols = [f"A{i}/USDT" for i in range(12)]
    prices = {s: 10.0 ** rng.uniform(0, 3) for s in symbols}
    portfolio = Portfolio(quote="USDT", cash=1e6,
                          positions={s: 20_000.0 / p for s, p in prices.items()})

    class Oms:
        halted_reason: str | None = None

        def __init__(self) -> None:
            self.orders: dict[str, Any] = {}
            self.working: dict[str, float] = {}

        def working_quantity(self) -> dict[str, float]:
            return dict(self.working)

    oms = Oms()
    rules = {s: MarketRules.synthetic(s, p) for s, p in prices.items()}

    class Bus:
        def publish(self, event: Any) -> None:
            pass

    t = [1_000.0]
    gate = RiskGate(Bus(), RiskLimits(max_volume_share=1.0, groups={"g": symbols[:5]}),  # type: ignore[arg-type]
                    symbols=symbols, portfolio=portfolio, oms=oms,  # type: ignore[arg-type]
                    markets=lambda: rules, monotonic=lambda: t[0])
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for b in range(40):
        ts = t0 + timedelta(hours=b)
        for s in symbols:
            prices[s] = rules[s].round_price(prices[s] * (1 + rng.gauss(0, 0.005)))
            gate.on_bar(Bar(s, ts, prices[s], prices[s], prices[s], prices[s], 1e9, 3600))
        gate.on_bars_closed(BarsClosed(ts=ts, count=len(symbols)))
    approved: list[OrderIntent] = []
    for k in range(300):
        t[0] += 0.5
        # the reference book, from scratch, from what the gate will read
        held = [portfolio.positions.get(s, 0.0) for s in symbols]
        pending: dict[int, float] = {}
        for s, q in oms.working.items():
            pending[symbols.index(s)] = pending.get(symbols.index(s), 0.0) + q
        for cid, (i, signed, _) in gate._in_flight.items():
            if cid not in oms.orders:
                pending[i] = pending.get(i, 0.0) + signed
        want, group_gross = scratch(held, pending, gate.market.prices, portfolio.cash,
                                    gate.ctx.groups, True)
        assert_same_book(gate._build_book(), want, group_gross)
        s = rng.choice(symbols)
        qty = rules[s].floor_qty(rng.uniform(500, 5_000) / prices[s])
        intent = OrderIntent(client_order_id=f"c{k}", symbol=s,
                             side=Side.BUY if rng.random() < 0.5 else Side.SELL, quantity=qty,
                             order_type=OrderType.MARKET, reference_price=prices[s],
                             ts=t0, decision_id=f"d{k}")
        before = gate.approved
        gate.on_intent(intent)
        if gate.approved != before:
            approved.append(intent)
        roll = rng.random()
        if roll < 0.5 and approved:  # the OMS takes the oldest in
            o = approved.pop(0)
            oms.orders[o.client_order_id] = o
            signed = o.quantity if o.side is Side.BUY else -o.quantity
            oms.working[o.symbol] = oms.working.get(o.symbol, 0.0) + signed
        elif roll < 0.8 and oms.working:  # a working order fills
            s2 = rng.choice(sorted(oms.working))
            q = oms.working.pop(s2)
            portfolio.positions[s2] += q
            portfolio.cash -= q * prices[s2]
    assert gate.approved > 100 and gate.errors == 0


def _gate(symbols: list[str], portfolio: Portfolio, limits: RiskLimits) -> RiskGate:
    class Bus:
        def publish(self, event: Any) -> None:
            pass

    return RiskGate(Bus(), limits, symbols=symbols, portfolio=portfolio,  # type: ignore[arg-type]
                    monotonic=lambda: 0.0)


def test_per_bar_nav_is_book_nav_to_the_bit() -> None:
    from datetime import UTC, datetime

    from risk.exposure import book_nav

    rng = random.Random(9)
    symbols = [f"A{i}/USDT" for i in range(8)]
    portfolio = Portfolio(quote="USDT", cash=1_000.0)
    gate = _gate(symbols, portfolio, RiskLimits())
    ts = datetime(2024, 1, 1, tzinfo=UTC)
    for step in range(300):
        s = rng.choice(symbols)
        if rng.random() < 0.5:  # a bar for one symbol: priced from now on
            p = 10.0 ** rng.uniform(-1, 3)
            gate.on_bar(Bar(s, ts, p, p, p, p, 1.0, 3600))
        else:  # a position moves (held while unpriced: NAV unknown)
            portfolio.positions[s] = rng.choice([0.0, rng.uniform(-5, 5), math.nan]
                                                if step % 50 == 0 else [0.0, rng.uniform(-5, 5)])
            portfolio.cash += rng.uniform(-10, 10)
        held = np.array([portfolio.positions.get(x, 0.0) for x in symbols], dtype=float)
        market = gate.market
        want = book_nav(held, market.prices, portfolio.cash,
                        all_priced=len(market.last_close) == len(symbols))
        got = gate._nav()
        assert got == want or (math.isnan(got) and math.isnan(want))


def test_the_window_of_closes_is_the_last_rows_of_every_bar() -> None:
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    symbols = ["A/USDT", "B/USDT"]
    limits = RiskLimits(var=VarConfig(window_bars=20), var_min_bars=20)
    gate = _gate(symbols, Portfolio(quote="USDT", cash=1.0), limits)
    window: list[list[float]] = []  # the model: every bar's prices, the newest `cap` kept
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for b in range(130):
        ts = t0 + timedelta(hours=b)
        for k, s in enumerate(symbols):
            if not (k == 1 and b % 7 == 3):  # B misses some bars: its close repeats
                p = 100.0 + b + k / 10
                gate.on_bar(Bar(s, ts, p, p, p, p, 1.0, 3600))
        gate.on_bars_closed(BarsClosed(ts=ts, count=2))
        cap = gate.limits.var.window_bars + 1
        window = [*window, gate.market.prices.tolist()][-cap:]
        np.testing.assert_array_equal(gate._closes(), np.array(window))
        if b in (60, 90):  # a reload keeps the newest rows that fit (a longer window refills)
            bars = 25 if b == 60 else 40
            gate.update_limits(replace(limits, var=VarConfig(window_bars=bars)))
            window = window[-(bars + 1):]
            np.testing.assert_array_equal(gate._closes(), np.array(window))
