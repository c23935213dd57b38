"""Pre-trade checks: small pure functions run in one pipeline.

Each check takes the order and a `GateContext` (what the gate knows: limits, the market as of
the last bar, the trading state, the throttle windows, and for portfolio checks the book) and
returns None (pass) or a `Denial` with a reason code `CATEGORY_CONDITION` and the key=value
facts behind it. The pipeline stops at the first denial. Nothing here raises on bad input: a
NaN quantity is a denial, not an exception, and a check that fails anyway is turned into
`GATE_CHECK_FAILED` by `evaluate`.

Two stages, cheapest first:

* `ORDER_CHECKS` judge the order alone against the market: state HALTED, malformed orders,
  market data, collar, size, exchange filters, duplicates, throttles. They apply to every
  order, risk-reducing or not: a fat-fingered sell is as dangerous as a fat-fingered buy.
* `PORTFOLIO_CHECKS` judge the book after this order and every working order: state REDUCING,
  NAV, exposure, VaR/CVaR. An order that only reduces risk passes them.

VaR with young assets (fewer returns than the window): see `check_var_young`; they are
proxied, not a reason to refuse orders in other assets.

On the pass path the gate does not call them one by one: `order_checks_pass` tests the ten
order checks' conditions in one function, and `portfolio_checks_pass_before_var` those of the
portfolio checks before VaR, leaving `check_var` to decide. Either answers only "all pass" or
"ask the named checks", which then run as a pipeline and make the denial: the reason codes and
contexts come from the named checks alone (tests/test_gate_fast_path.py holds them equal).

The checks run for every order, so what they read is prepared elsewhere (per bar in the gate's
`MarketView` and `VarView`, per book change in `risk.exposure.BookKeeper`), and a check that
passes builds nothing: contexts and messages are made only for a denial.

Reason codes (the README lists them with their meaning):
STATE_HALTED STATE_REDUCING; ORDER_BAD_CLIENT_ID ORDER_BAD_SIDE ORDER_BAD_TYPE
ORDER_BAD_QUANTITY ORDER_BAD_PRICE ORDER_UNKNOWN_SYMBOL; DATA_NO_PRICE DATA_STALE;
PRICE_OUTSIDE_COLLAR; QUANTITY_ABOVE_MAX NOTIONAL_ABOVE_MAX VOLUME_UNKNOWN
VOLUME_SHARE_ABOVE_MAX; FILTER_UNKNOWN_MARKET FILTER_PRICE_TICK FILTER_LOT_STEP FILTER_MIN_QTY
FILTER_MAX_QTY FILTER_MIN_NOTIONAL FILTER_MAX_NOTIONAL; DUPLICATE_ORDER; THROTTLE_*;
PORTFOLIO_NAV_INVALID; EXPOSURE_GROSS_ABOVE_MAX EXPOSURE_NET_ABOVE_MAX EXPOSURE_ASSET_ABOVE_MAX
EXPOSURE_GROUP_ABOVE_MAX; VAR_UNAVAILABLE VAR_NOT_FINITE VAR_ABOVE_LIMIT CVAR_ABOVE_LIMIT;
GATE_CHECK_FAILED GATE_INTERNAL_ERROR.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from daemon.events import OrderIntent, OrderType, Side
from risk.exposure import Book, Group, exposure_violation
from risk.limits import RiskLimits
from risk.market_rules import MarketRules
from risk.throttle import DuplicateFilter, MessageThrottle
from risk.var import PreparedRisk, ScenarioRisk, var_check

ACTIVE, REDUCING, HALTED = "ACTIVE", "REDUCING", "HALTED"


@dataclass(frozen=True, slots=True)
class Denial:
    code: str
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class MarketView:
    """What the gate knows of the market, kept current bar by bar (nothing here is per order).
    `last_seen` is in the gate's clock (wall or market time), for staleness."""

    symbols: tuple[str, ...] = ()
    index: dict[str, int] = field(default_factory=dict)
    prices: np.ndarray = field(default_factory=lambda: np.zeros(0))  # NaN before a first bar
    last_close: dict[str, float] = field(default_factory=dict)
    avg_volume: dict[str, float] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)
    rules: dict[str, MarketRules] = field(default_factory=dict)

    @classmethod
    def for_symbols(cls, symbols: list[str] | tuple[str, ...]) -> MarketView:
        syms = tuple(symbols)
        return cls(symbols=syms, index={s: i for i, s in enumerate(syms)},
                   prices=np.full(len(syms), np.nan))


@dataclass(slots=True)
class VarView:
    """One bar's VaR model over the assets with enough clean history (`covered`), and the
    book's risk at that bar so orders need not recompute it while the book is unchanged."""

    prepared: PreparedRisk | None = None
    covered: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    uncovered: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    position: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    positions: list[int] = field(default_factory=list)  # `position` as ints, for per order
    bars: int = 0
    unavailable: str = "no bars yet"
    book_values: bytes | None = None  # the covered values' bytes: equality is a memcmp
    book_risk: tuple[float, float] | None = None
    all_covered: bool = False
    # young assets (uncovered: fewer returns than the window, see `check_var`): bars of clean
    # returns per asset (the young ones' own count; covered assets have the window's), each
    # young asset's (VaR, CVaR) per unit of |value|, those with `var_min_bars` of their own
    # (orders may add to them), and the proxy: the riskiest covered asset
    history: list[int] = field(default_factory=list)
    young_unit: dict[int, tuple[float, float]] = field(default_factory=dict)
    young_tradeable: frozenset[int] = frozenset()
    proxy: int = -1
    # scenario models: the P&L of the last book checked (`pnl_values`, the covered values it
    # is the P&L of), moved by the assets that changed since instead of a scenario product
    pnl: np.ndarray | None = None
    pnl_values: np.ndarray | None = None
    pnl_moves: int = 0  # moves since the last full product (a refresh caps the rounding)

    # more changed assets than this, or this many moves in a row: the full product instead
    MAX_PNL_SWAPS: ClassVar[int] = 8
    PNL_REFRESH: ClassVar[int] = 256
    # below this many scenario cells (S * N) one matrix product is cheaper than the handful
    # of small numpy calls that move the P&L (250 historical bars x 50 assets: the product)
    PNL_MIN_SIZE: ClassVar[int] = 20_000

    def book_pnl(self, prepared: ScenarioRisk, values: np.ndarray) -> np.ndarray:
        """`prepared.pnl(values)`, from the P&L kept for the last book: books one order apart
        differ in an asset or two. `values` must not be written to afterwards (books are
        snapshots)."""
        kept, base = self.pnl, self.pnl_values
        if base is values and kept is not None:
            return kept
        pnl = None
        if kept is not None and base is not None and self.pnl_moves < self.PNL_REFRESH:
            diff = values - base
            idx = np.flatnonzero(diff)
            if idx.size <= self.MAX_PNL_SWAPS:
                moved = diff[idx]
                if bool(np.isfinite(moved).all()):  # NaN in or out: only a product is right
                    pnl = kept + moved @ prepared.columns[idx] if idx.size else kept
                    self.pnl_moves += 1
        if pnl is None:
            pnl = prepared.pnl(values)
            self.pnl_moves = 0
        self.pnl, self.pnl_values = pnl, values
        return pnl


@dataclass(slots=True)
class OrderEffect:
    """What the order does to the book: asset index, signed quantity, value at the last close."""

    index: int
    signed_qty: float
    delta_value: float
    reduces: bool


@dataclass(slots=True)
class GateContext:
    """Everything one decision reads. The gate keeps one and refreshes `now`, `state`, `book`
    and `effect` per order; the rest changes per bar."""

    limits: RiskLimits
    market: MarketView
    throttle: MessageThrottle
    duplicates: DuplicateFilter
    var: VarView = field(default_factory=VarView)
    groups: tuple[Group, ...] = ()
    now: float = 0.0
    stale_after_s: float = math.inf
    state: str = ACTIVE
    state_reason: str = ""
    book: Book | None = None
    effect: OrderEffect | None = None


Check = Callable[[OrderIntent, GateContext], Denial | None]


def order_price(intent: OrderIntent) -> Any:
    """The price an order is judged at: its limit price, or for a market order the reference
    price it was sized at."""
    return intent.limit_price if intent.order_type is OrderType.LIMIT else intent.reference_price


def signed_quantity(intent: OrderIntent) -> float:
    return intent.quantity if intent.side is Side.BUY else -intent.quantity


def _finite_positive(x: Any) -> bool:
    if type(x) is float:  # the usual case, decided by two comparisons (NaN fails both)
        return 0.0 < x < math.inf
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# ------------------------------------------------------------------------ order checks


def check_halted(intent: OrderIntent, ctx: GateContext) -> Denial | None:
    if ctx.state == HALTED:
        return Denial("STATE_HALTED", {"reason": ctx.state_reason})
    return None


def check_well_formed(intent: OrderIntent, ctx: GateContext) -> Denial | None:
    cid = intent.client_order_id
    if not isinstance(cid, str) or not cid.strip():
        return Denial("ORDER_BAD_CLIENT_ID", {"client_order_id": cid})
    # isinstance, not ==: a plain "buy" string equals Side.BUY but would fail every `is` test
    # downstream and be booked as a sell
    if not isinstance(intent.side, Side):
        return Denial("ORDER_BAD_SIDE", {"side": intent.side})
    if not isinstance(intent.order_type, OrderType):
        return Denial("ORDER_BAD_TYPE", {"order_type": intent.order_type})
    if not _finite_positive(intent.quantity):
        return Denial("ORDER_BAD_QUANTITY", {"quantity": intent.quantity})
    if not _finite_positive(intent.reference_price):
        return Denial("ORDER_BAD_PRICE", {"reference_price": intent.reference_price})
    if intent.order_type is OrderType.LIMIT and not _finite_positive(intent.limit_price):
        return Denial("ORDER_BAD_PRICE", {"limit_price": intent.limit_price})
    if not isinstance(intent.symbol, str) or intent.symbol not in ctx.market.index:
        return Denial("ORDER_UNKNOWN_SYMBOL", {"symbol": intent.symbol})
    return None


def check_market_data(intent: OrderIntent, ctx: GateContext) -> Denial | None:
    symbol = intent.symbol
    if symbol not in ctx.market.last_close:
        return Denial("DATA_NO_PRICE", {"symbol": symbol})
    age = ctx.now - ctx.market.last_seen.get(symbol, -math.inf)
    if age > ctx.stale_after_s:
        return Denial("DATA_STALE", {"symbol": symbol, "age_s": round(age, 3),
                                     "max_age_s": ctx.stale_after_s})
    return None


def check_price_collar(intent: OrderIntent, ctx: GateContext) -> Denial | None:
    last = ctx.market.last_close[intent.symbol]
    price = order_price(intent)
    limit = ctx.limits
    collar = limit.price_collar_buy_pct if intent.side is Side.BUY else \
        limit.price_collar_sell_pct
    deviation_pct = abs(price / last - 1.0) * 100.0
    if deviation_pct > collar:
        return Denial("PRICE_OUTSIDE_COLLAR", {"symbol": intent.symbol, "side": str(intent.side),
                                               "price": price, "last_close": last,
                                               "deviation_pct": round(deviation_pct, 3),
                                               "collar_pct": collar})
    return None


def check_quantity(intent: OrderIntent, ctx: GateContext) -> Denial | None:
    cap = ctx.limits.max_order_qty.get(intent.symbol)
    source = "max_order_qty"
    if cap is None:
        # no per-symbol cap: the notional cap at the market's price, not the order's own
        cap = ctx.limits.max_order_notional / ctx.market.last_close[intent.symbol]
        source = "max_order_notional/last_close"
    if intent.quantity > cap:
        return Denial("QUANTITY_ABOVE_MAX", {"symbol": intent.symbol,
                                             "quantity": intent.quantity,
                                             "max": round(cap, 12), "source": source})
    return None


def check_notional(intent: OrderIntent, ctx: GateContext) -> Denial | None:
    notional = intent.quantity * order_price(intent)
    if notional > ctx.limits.max_order_notional:
        return Denial("NOTIONAL_ABOVE_MAX", {"symbol": intent.symbol,
                                             "notional": round(notional, 2),
                                             "max": ctx.limits.max_order_notional})
    return None


def check_volume_share(intent: OrderIntent, ctx: GateContext) -> Denial | None:
    avg = ctx.market.avg_volume.get(intent.symbol, 0.0)
    if not avg > 0.0:  # also NaN: no volume, no way to size against it
        return Denial("VOLUME_UNKNOWN", {"symbol": intent.symbol, "avg_volume": avg})
    share = intent.quantity / avg
    if share > ctx.limits.max_volume_share:
        return Denial("VOLUME_SHARE_ABOVE_MAX", {
            "symbol": intent.symbol, "quantity": intent.quantity,
            "avg_bar_volume": round(avg, 8), "share": round(share, 6),
            "max": ctx.limits.max_volume_share, "bars": ctx.limits.volume_window_bars})
    return None


def check_exchange_filters(intent: OrderIntent, ctx: GateContext) -> Denial | None:
    rules = ctx.market.rules.get(intent.symbol)
    if rules is None:
        return Denial("FILTER_UNKNOWN_MARKET", {"symbol": intent.symbol})
    price = order_price(intent)
    if intent.order_type is OrderType.LIMIT and not rules.is_on_tick(price):
        return Denial("FILTER_PRICE_TICK", {"symbol": intent.symbol, "price": price,
                                            "tick": rules.price_tick})
    violation = rules.violation(intent.quantity, price)
    if violation is not None:
        code, context = violation
        return Denial(code, {"symbol": intent.symbol, **context})
    return None


def check_duplicate(intent: OrderIntent, ctx: GateContext) -> Denial | None:
    # `_value_`: the member's value without the enum property's descriptor call (per order)
    v = ctx.duplicates.check(intent.symbol, intent.side._value_, intent.quantity,
                             intent.client_order_id, intent.decision_id, ctx.now)
    return None if v is None else Denial(v[0], {"client_order_id": intent.client_order_id, **v[1]})


def check_throttle(intent: OrderIntent, ctx: GateContext) -> Denial | None:
    v = ctx.throttle.check_order(intent.symbol, ctx.now)
    return None if v is None else Denial(v[0], v[1])


# -------------------------------------------------------------------- portfolio checks


def check_reducing(intent: OrderIntent, ctx: GateContext) -> Denial | None:
    assert ctx.effect is not None and ctx.book is not None
    if ctx.state == REDUCING and not ctx.effect.reduces:
        return Denial("STATE_REDUCING", {
            "reason": ctx.state_reason, "symbol": intent.symbol,
            "position": float(ctx.book.qty[ctx.effect.index]),
            "after": float(ctx.book.qty[ctx.effect.index]) + ctx.effect.signed_qty})
    return None


def check_nav(intent: OrderIntent, ctx: GateContext) -> Denial | None:
    assert ctx.effect is not None and ctx.book is not None
    if not ctx.book.nav_valid and not ctx.effect.reduces:
        # NaN compares False with every cap: without this, a broken NAV would pass everything
        return Denial("PORTFOLIO_NAV_INVALID", {"nav": ctx.book.nav})
    return None


def check_exposure(intent: OrderIntent, ctx: GateContext) -> Denial | None:
    book, effect = ctx.book, ctx.effect
    assert effect is not None and book is not None
    if not book.nav_valid:
        return None  # only a reducing order gets here (check_nav)
    v = exposure_violation(book, effect.index, effect.delta_value, ctx.limits, ctx.groups,
                           intent.symbol)
    return None if v is None else Denial(v[0], v[1])


def check_var(intent: OrderIntent, ctx: GateContext) -> Denial | None:
    book, effect, view = ctx.book, ctx.effect, ctx.var
    assert effect is not None and book is not None
    nav = book.nav
    if not (-math.inf < nav < math.inf and nav > 0.0):  # `nav_valid`, without two calls
        return None
    prepared = view.prepared
    if prepared is None:
        if effect.reduces:
            return None
        return Denial("VAR_UNAVAILABLE", {"reason": view.unavailable, "bars": view.bars,
                                          "min_bars": ctx.limits.var_min_bars})
    pos = view.positions[effect.index]
    if pos < 0 or (view.uncovered.size and bool(np.any(book.values[view.uncovered] != 0.0))):
        # a young asset in the order or the book: the model cannot see it (`check_var_young`)
        return check_var_young(intent, ctx)
    before = book.values if view.all_covered else book.values[view.covered]
    after = before.copy()
    after[pos] += effect.delta_value
    if isinstance(prepared, ScenarioRisk) and prepared.scenarios.size > VarView.PNL_MIN_SIZE:
        # the book's P&L per scenario moved by this order's asset: O(S), not O(S * N)
        pnl = view.book_pnl(prepared, before)
        risk_after = prepared.risk_of_pnl(pnl + effect.delta_value * prepared.columns[pos])
    else:
        risk_after = prepared.var(after)
    cfg = ctx.limits.var
    var_a, cvar_a = risk_after
    # the common case, as `var_check` decides it first: both measures finite and within their
    # limits (NaN fails every comparison and goes on to var_check's VAR_NOT_FINITE)
    if var_a <= cfg.max_var_fraction * nav and cvar_a <= cfg.max_cvar_fraction * nav \
            and -math.inf < var_a < math.inf and -math.inf < cvar_a < math.inf \
            and -math.inf < nav < math.inf:
        return None
    risk_before = None
    if view.book_values is not None and before.tobytes() == view.book_values:
        risk_before = view.book_risk  # the book's risk, computed once this bar
    out = var_check(prepared, before, after, nav, cfg, risk_before=risk_before,
                    risk_after=risk_after)
    if out is None:
        return None
    code, context = out
    return Denial(code, {"symbol": intent.symbol, **context})


def check_var_young(intent: OrderIntent, ctx: GateContext) -> Denial | None:
    """`check_var` when the order's asset or a held one is young: listed too recently for a
    full window of clean returns, so the bar's model (`VarView.covered`) leaves it out.

    Rule: a young asset never makes the rest of the book unanswerable. Its risk is added to
    the model's as |value| x its per-unit risk (`VarView.young_unit`): the larger of its own
    (the same model fitted on the returns it has) and the riskiest covered asset's (the
    proxy), as if perfectly correlated with the rest of the book (for parametric VaR and for
    CVaR an upper bound: both are subadditive). The VaR/CVaR limits then bind on that total,
    for orders in any asset. Orders that add to a young asset with fewer than `var_min_bars`
    returns of its own are refused (VAR_UNAVAILABLE naming it, the bars it has and needs):
    its own risk cannot be estimated yet; orders that reduce it always pass."""
    book, effect, view = ctx.book, ctx.effect, ctx.var
    assert effect is not None and book is not None and view.prepared is not None
    i = effect.index
    if view.positions[i] < 0 and i not in view.young_tradeable:
        if effect.reduces:
            return None
        return Denial("VAR_UNAVAILABLE", {
            "reason": "young asset: too few bars of returns", "symbol": intent.symbol,
            "bars": view.history[i] if i < len(view.history) else 0,
            "min_bars": ctx.limits.var_min_bars})
    before = book.values
    after = before.copy()
    after[i] += effect.delta_value
    out = var_check(view.prepared, before, after, book.nav, ctx.limits.var,
                    risk_before=book_var(view, before), risk_after=book_var(view, after))
    if out is None:
        return None
    code, context = out
    young = [ctx.market.symbols[j] for j in view.uncovered.tolist() if after[j] != 0.0]
    return Denial(code, {"symbol": intent.symbol, **context, "young": young,
                         "proxy": ctx.market.symbols[view.proxy] if view.proxy >= 0 else ""})


def book_var(view: VarView, values: np.ndarray) -> tuple[float, float]:
    """(VaR, CVaR) of a book of `values` (one per symbol): the model's over the covered
    assets plus each young asset's |value| x its per-unit risk (`check_var_young`)."""
    assert view.prepared is not None
    var, cvar = view.prepared.var(values[view.covered])
    for j in view.uncovered.tolist():
        v = abs(float(values[j]))
        if v != 0.0:  # NaN too: it propagates, and var_check fails it closed
            unit_var, unit_cvar = view.young_unit[j]
            var += v * unit_var
            cvar += v * unit_cvar
    return var, cvar


ORDER_CHECKS: tuple[Check, ...] = (
    check_halted, check_well_formed, check_market_data, check_price_collar, check_quantity,
    check_notional, check_volume_share, check_exchange_filters, check_duplicate, check_throttle)
PORTFOLIO_CHECKS: tuple[Check, ...] = (check_reducing, check_nav, check_exposure, check_var)


def evaluate(intent: OrderIntent, ctx: GateContext,
             pipeline: tuple[Check, ...] = ORDER_CHECKS) -> Denial | None:
    for check in pipeline:
        try:
            denial = check(intent, ctx)
        except Exception as exc:  # a check must never take the gate down
            return Denial("GATE_CHECK_FAILED", {"check": check.__name__,
                                                "error": f"{type(exc).__name__}: {exc}"})
        if denial is not None:
            return denial
    return None


# ------------------------------------------------------------------ the pass path


_BUY, _SELL, _LIMIT, _MARKET = Side.BUY, Side.SELL, OrderType.LIMIT, OrderType.MARKET


def order_checks_pass(intent: OrderIntent, ctx: GateContext) -> bool:
    """True only if every check of `ORDER_CHECKS` passes, in one call: the same conditions as
    the named checks (their denials' negations, in their order, cheapest first), without a
    call, a `try` and a result test per check. False means "ask the named checks": on any
    failure, and on any input the checks decide by their slower general tests (an int
    quantity, a str subclass), `evaluate(intent, ctx, ORDER_CHECKS)` makes the denial with its
    code and context. An exception here is a False for the caller to catch the same way.
    tests/test_gate_fast_path.py compares this with `evaluate` on random orders."""
    if ctx.state == HALTED:
        return False
    cid, side, order_type = intent.client_order_id, intent.side, intent.order_type
    # `not cid.strip()` is "empty or all whitespace": the same definition as isspace()
    if type(cid) is not str or not cid or cid.isspace() or (side is not _BUY
                                                             and side is not _SELL):
        return False
    qty, ref = intent.quantity, intent.reference_price
    # `_finite_positive` of a float: two comparisons (NaN fails both)
    if type(qty) is not float or not 0.0 < qty < math.inf or type(ref) is not float \
            or not 0.0 < ref < math.inf:
        return False
    if order_type is _LIMIT:
        price = intent.limit_price
        if type(price) is not float or not 0.0 < price < math.inf:
            return False
    elif order_type is _MARKET:
        price = ref
    else:
        return False
    symbol, market, limits = intent.symbol, ctx.market, ctx.limits
    if type(symbol) is not str or symbol not in market.index:
        return False
    last = market.last_close.get(symbol)
    if last is None or ctx.now - market.last_seen.get(symbol, -math.inf) > ctx.stale_after_s:
        return False
    collar = limits.price_collar_buy_pct if side is _BUY else limits.price_collar_sell_pct
    if abs(price / last - 1.0) * 100.0 > collar:
        return False
    cap = limits.max_order_qty.get(symbol)
    if cap is None:
        cap = limits.max_order_notional / last
    try:
        # `[]`, not `get`: a dict subclass that computes averages when read (the gate's)
        # answers it at C speed, and a symbol without volume is a False either way
        avg = market.avg_volume[symbol]
    except KeyError:
        return False
    if qty > cap or qty * price > limits.max_order_notional or not avg > 0.0 \
            or qty / avg > limits.max_volume_share:
        return False
    rules = market.rules.get(symbol)
    if rules is None or (order_type is _LIMIT and not rules.is_on_tick(price)) \
            or rules.violation(qty, price) is not None:
        return False
    now = ctx.now
    return ctx.duplicates.check(symbol, side._value_, qty, cid, intent.decision_id,
                                now) is None and ctx.throttle.check_order(symbol, now) is None


def portfolio_checks_pass_before_var(intent: OrderIntent, ctx: GateContext) -> bool:
    """True only if `check_halted` and every check of `PORTFOLIO_CHECKS` before `check_var`
    pass: in the ACTIVE state with a valid NAV, STATE_HALTED, STATE_REDUCING and
    PORTFOLIO_NAV_INVALID cannot deny, which leaves exposure; the decision is then
    `check_var`'s alone. False (or an exception): ask the named checks."""
    book, effect = ctx.book, ctx.effect
    if ctx.state != ACTIVE or book is None or effect is None:
        return False
    nav = book.nav
    if not (-math.inf < nav < math.inf and nav > 0.0):  # `nav_valid`
        return False
    return exposure_violation(book, effect.index, effect.delta_value, ctx.limits, ctx.groups,
                              intent.symbol) is None


VAR_CHECK: tuple[Check, ...] = (check_var,)


def order_effect(intent: OrderIntent, ctx: GateContext, book: Book) -> OrderEffect:
    """Call only after ORDER_CHECKS passed (symbol known, quantity finite, price known)."""
    symbol, market = intent.symbol, ctx.market
    i = market.index[symbol]
    signed = intent.quantity if intent.side is _BUY else -intent.quantity  # signed_quantity
    # positional: a keyword call costs more than the rest of this function (per order)
    return OrderEffect(i, signed, signed * market.last_close[symbol], book.reduces(i, signed))


def as_context(mapping: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in mapping.items())
