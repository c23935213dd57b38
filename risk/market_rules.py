"""A market's trading filters and the exact rounding every order goes through.

Mirrors ccxt's unified market structure: `precision.amount` / `precision.price` (as step sizes,
ccxt's TICK_SIZE mode) and `limits.amount` / `limits.cost`. Rounding uses Decimal so a quantity
sent to a venue is an exact multiple of the lot step, never 0.30000000000000004 lots.

The gate checks every order against these filters, so the checks keep the exact Decimal rule
but spare its work where the answer is known: the step's Decimal is made once per step value
(`_decimal`), `is_on_step` divides once and rounds that quotient both ways (it used to run
three quantisations, two of them the same), and for a power-of-ten step (most venues' lots
and ticks: 0.001, 1e-8, 1) a value whose shortest repr has no more decimals than the step
is on it without any Decimal (`_on_decimal_grid`: the Decimal rule would divide exactly,
get an integer and give the value back). Same answers, tested against the plain rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Any


@dataclass(frozen=True, slots=True)
class MarketRules:
    symbol: str
    base: str
    quote: str
    amount_step: float
    price_tick: float
    min_qty: float = 0.0
    max_qty: float = math.inf
    min_notional: float = 0.0
    max_notional: float = math.inf

    def floor_qty(self, qty: float) -> float:
        """Largest multiple of the lot step not above `qty` (we never round a size up)."""
        return _quantise(qty, self.amount_step, ROUND_DOWN)

    def round_price(self, price: float) -> float:
        return _quantise(price, self.price_tick, ROUND_HALF_EVEN)

    def is_on_step(self, qty: float) -> bool:
        """`qty` is a multiple of the lot step: floored and rounded to the step it is the same
        quantity, within a billionth of a step of `qty`."""
        step = self.amount_step
        if _on_decimal_grid(qty, step):
            return True
        if not (math.isfinite(qty) and step > 0):
            # `_quantise` leaves such values alone: the rule as written decides
            floor = _quantise(qty, step, ROUND_DOWN)
            return floor == _quantise(qty, step, ROUND_HALF_EVEN) and abs(
                qty - floor) <= step * 1e-9
        d_step = _decimal(step)
        units = Decimal(repr(qty)) / d_step
        down = units.quantize(_ONE, rounding=ROUND_DOWN)
        floor = float(down * d_step)
        half_even = units.quantize(_ONE, rounding=ROUND_HALF_EVEN)
        # one unit apart, the two floats are still equal when the step is below qty's ulp
        if half_even != down and float(half_even * d_step) != floor:
            return False
        return abs(qty - floor) <= step * 1e-9

    def is_on_tick(self, price: float) -> bool:
        if _on_decimal_grid(price, self.price_tick):
            return True
        return abs(price - self.round_price(price)) <= self.price_tick * 1e-9

    def violation(self, qty: float, price: float) -> tuple[str, dict[str, Any]] | None:
        """The first exchange filter (qty, price) breaks, as (reason code, context), or None."""
        if not self.is_on_step(qty):
            return "FILTER_LOT_STEP", {"quantity": qty, "step": self.amount_step}
        if qty < self.min_qty:
            return "FILTER_MIN_QTY", {"quantity": qty, "min_qty": self.min_qty}
        if qty > self.max_qty:
            return "FILTER_MAX_QTY", {"quantity": qty, "max_qty": self.max_qty}
        notional = qty * price
        if notional < self.min_notional:
            return "FILTER_MIN_NOTIONAL", {"notional": round(notional, 8),
                                           "min_notional": self.min_notional}
        if notional > self.max_notional:
            return "FILTER_MAX_NOTIONAL", {"notional": round(notional, 8),
                                           "max_notional": self.max_notional}
        return None

    @classmethod
    def from_ccxt(cls, market: dict[str, Any]) -> MarketRules:
        """From a ccxt unified market (precision in TICK_SIZE mode, as ccxt reports Binance)."""
        precision = market.get("precision") or {}
        limits = market.get("limits") or {}

        def step(v: Any) -> float:
            if v is None:
                raise ValueError(f"market {market.get('symbol')}: precision missing")
            v = float(v)
            # DECIMAL_PLACES mode gives an integer count of digits instead of a step
            return 10.0 ** -v if v >= 1 and v == int(v) else v

        def lim(group: str, side: str, default: float) -> float:
            v = (limits.get(group) or {}).get(side)
            return default if v is None else float(v)

        return cls(
            symbol=market["symbol"], base=market["base"], quote=market["quote"],
            amount_step=step(precision.get("amount")), price_tick=step(precision.get("price")),
            min_qty=lim("amount", "min", 0.0), max_qty=lim("amount", "max", math.inf),
            min_notional=lim("cost", "min", 0.0), max_notional=lim("cost", "max", math.inf),
        )

    @classmethod
    def synthetic(cls, symbol: str, price: float, min_notional: float = 10.0) -> MarketRules:
        """Exchange-like filters for a simulated market: a lot step worth at most one unit of
        quote and 6 significant digits of price, as Binance lists its USDT pairs."""
        base, _, quote = symbol.partition("/")
        amount_step = 10.0 ** math.floor(math.log10(1.0 / price)) if price > 0 else 1e-8
        amount_step = min(max(amount_step, 1e-8), 1.0)
        price_tick = 10.0 ** (math.floor(math.log10(price)) - 5) if price > 0 else 1e-8
        price_tick = max(price_tick, 1e-8)
        return cls(symbol=symbol, base=base, quote=quote or "USDT", amount_step=amount_step,
                   price_tick=price_tick, min_qty=amount_step, max_qty=9_000_000.0,
                   min_notional=min_notional)


_ONE = Decimal(1)
_STEPS: dict[float, Decimal] = {}


def _decimal(step: float) -> Decimal:
    """`Decimal(repr(step))`, made once per step value: a market has two, a venue a few
    thousand at most (the cache is cleared if something feeds it an unbounded stream)."""
    d = _STEPS.get(step)
    if d is None:
        if len(_STEPS) > 65_536:
            _STEPS.clear()
        d = _STEPS[step] = Decimal(repr(step))
    return d


def _grid_decimals(step: float) -> int | None:
    """k when `Decimal(repr(step))` is 10**-k with k >= 0 (0.01 -> 2, 1.0 -> 0), else None."""
    k = _GRIDS.get(step, -1)
    if k == -1:
        if len(_GRIDS) > 65_536:
            _GRIDS.clear()
        sign, digits, exponent = _decimal(step).normalize().as_tuple()
        k = -exponent if (not sign and digits == (1,) and isinstance(exponent, int)
                          and exponent <= 0) else None
        _GRIDS[step] = k
    return k


_GRIDS: dict[float, int | None] = {}


def _on_decimal_grid(value: float, step: float) -> bool:
    """True if `value` is certainly a multiple of the power-of-ten `step` under the Decimal
    rule: its repr has at most k decimals (step 10**-k), so `Decimal(repr(value)) / step` is
    an exact integer (at most 26 digits: within Decimal's 28) and quantising gives `value`
    back. False means "not known": the caller applies the rule."""
    if type(value) is not float:
        return False  # ints, numpy scalars (repr 'np.float64(...)'): the rule decides
    k = _grid_decimals(step)
    if k is None:
        return False
    r = repr(value)
    if "e" in r or "n" in r:  # 1e-05, inf, nan
        return False
    whole, _, frac = r.partition(".")
    return (len(frac) <= k or frac == "0") and len(whole) + k <= 26


def _quantise(value: float, step: float, rounding: str) -> float:
    if not math.isfinite(value) or step <= 0:
        return value
    if rounding == ROUND_DOWN and type(value) is float:
        floor = _floor_on_decimal_grid(value, step)
        if floor is not None:
            return floor
    return _quantise_decimal(value, step, rounding)


def _floor_on_decimal_grid(value: float, step: float) -> float | None:
    """`_quantise(value, step, ROUND_DOWN)` for a power-of-ten step 10**-k without Decimal
    (every lot size the planner floors goes through here, a dozen per rebalance): the rule
    divides `Decimal(repr(value))` exactly by the step, drops the fraction towards zero and
    multiplies back, which is `repr(value)` cut after k decimals; the float of that text is
    the float of that Decimal. None when the repr has an exponent or too many digits for
    Decimal's 28: the rule decides."""
    k = _grid_decimals(step)
    if k is None:
        return None
    r = repr(value)
    if "e" in r:
        return None
    whole, _, frac = r.partition(".")
    if len(whole) + k > 26:
        return None
    return float(f"{whole}.{frac[:k]}") if k else float(whole)


def _quantise_decimal(value: float, step: float, rounding: str) -> float:
    d_step = _decimal(step)
    units = (Decimal(repr(value)) / d_step).quantize(_ONE, rounding=rounding)
    return float(units * d_step)
