"""Pre-trade checks: small pure functions run in one pipeline.

Each check takes the order and what the gate knows of the market and returns None (pass) or a
`Denial` with a reason code `CATEGORY_CONDITION` and the key=value facts behind it. The
pipeline stops at the first denial. Nothing here raises on bad input: a NaN quantity is a
denial, not an exception.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from daemon.events import OrderIntent, OrderType, Side
from risk.limits import RiskLimits


@dataclass(frozen=True, slots=True)
class Denial:
    code: str
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class MarketView:
    """What the gate knows when it judges an order (refreshed on every bar)."""

    last_close: dict[str, float] = field(default_factory=dict)


Check = Callable[[OrderIntent, MarketView, RiskLimits], Denial | None]


def _finite_positive(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def check_well_formed(intent: OrderIntent, market: MarketView, limits: RiskLimits
                      ) -> Denial | None:
    if intent.side not in (Side.BUY, Side.SELL):
        return Denial("ORDER_BAD_SIDE", {"side": intent.side})
    if not _finite_positive(intent.quantity):
        return Denial("ORDER_BAD_QUANTITY", {"quantity": intent.quantity})
    if not _finite_positive(intent.reference_price):
        return Denial("ORDER_BAD_PRICE", {"reference_price": intent.reference_price})
    if intent.order_type is OrderType.LIMIT and not _finite_positive(intent.limit_price):
        return Denial("ORDER_BAD_PRICE", {"limit_price": intent.limit_price})
    if intent.symbol not in market.last_close:
        return Denial("ORDER_UNKNOWN_SYMBOL", {"symbol": intent.symbol})
    return None


def check_max_notional(intent: OrderIntent, market: MarketView, limits: RiskLimits
                       ) -> Denial | None:
    notional = intent.notional
    if notional > limits.max_order_notional:
        return Denial("NOTIONAL_ABOVE_MAX", {"symbol": intent.symbol,
                                             "notional": round(notional, 2),
                                             "max": limits.max_order_notional})
    return None


def check_price_collar(intent: OrderIntent, market: MarketView, limits: RiskLimits
                       ) -> Denial | None:
    last = market.last_close[intent.symbol]
    price = intent.limit_price if intent.order_type is OrderType.LIMIT else \
        intent.reference_price
    assert price is not None
    deviation_pct = abs(price / last - 1.0) * 100.0
    if deviation_pct > limits.price_collar_pct:
        return Denial("PRICE_OUTSIDE_COLLAR", {"symbol": intent.symbol, "price": price,
                                               "last_close": last,
                                               "deviation_pct": round(deviation_pct, 3),
                                               "collar_pct": limits.price_collar_pct})
    return None


PIPELINE: tuple[Check, ...] = (check_well_formed, check_max_notional, check_price_collar)


def evaluate(intent: OrderIntent, market: MarketView, limits: RiskLimits,
             pipeline: tuple[Check, ...] = PIPELINE) -> Denial | None:
    for check in pipeline:
        try:
            denial = check(intent, market, limits)
        except Exception as exc:  # a check must never take the gate down
            return Denial("GATE_CHECK_FAILED", {"check": check.__name__,
                                                "error": f"{type(exc).__name__}: {exc}"})
        if denial is not None:
            return denial
    return None


def as_context(mapping: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in mapping.items())
