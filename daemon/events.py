"""Domain events: the only things that travel on the bus.

Money and quantities are plain floats inside the daemon. The mathematics (numpy, riskfolio-lib)
is float, ccxt hands us floats, and a float carries 15-16 significant digits, far more than any
exchange quotes. What must be exact is what we *send*: every quantity and price is quantised to
the market's lot step and tick with Decimal arithmetic at the venue boundary
(`risk.market_rules.MarketRules`), so an order never carries float noise to an exchange.

Every timestamp is a timezone-aware UTC `datetime`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


def utcnow() -> datetime:
    return datetime.now(UTC)


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every bus event; handlers subscribe by concrete type."""


@dataclass(frozen=True, slots=True)
class Bar(Event):
    """A closed OHLCV bar. `ts` is the bar's open time (the CSV and Binance convention)."""

    symbol: str
    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    interval_s: int = 3600


@dataclass(frozen=True, slots=True)
class BarsClosed(Event):
    """Every bar of timestamp `ts` has been published (`count` of them): the cross-section
    is complete, so the rebalancer may act on it."""

    ts: datetime
    count: int


@dataclass(frozen=True, slots=True)
class TargetWeights(Event):
    """New target weights from a solve. Weights of symbols absent from the map are zero; the
    remainder up to 1.0 is held in the quote currency (cash)."""

    ts: datetime
    weights: dict[str, float]
    method: str
    reason: str
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OrderIntent(Event):
    """An order the rebalancer wants; it must pass the risk gate before the OMS may send it.

    `reference_price` is the price the intent was sized at (last close); the fat-finger collar
    compares the limit price, or this for a market order, to the market."""

    client_order_id: str
    symbol: str
    side: Side
    quantity: float
    order_type: OrderType
    reference_price: float
    ts: datetime
    limit_price: float | None = None
    decision_id: str = ""
    reason: str = ""

    @property
    def notional(self) -> float:
        return self.quantity * (self.limit_price or self.reference_price)


@dataclass(frozen=True, slots=True)
class OrderApproved(Event):
    """The risk gate passed this intent; only the OMS consumes it."""

    intent: OrderIntent
    ts: datetime


@dataclass(frozen=True, slots=True)
class RiskRejected(Event):
    """The risk gate denied an intent. `code` is CATEGORY_CONDITION (e.g. NOTIONAL_ABOVE_MAX);
    `context` holds the key=value facts that explain it."""

    intent: OrderIntent
    code: str
    context: dict[str, Any]
    ts: datetime

    def describe(self) -> str:
        facts = " ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.code} {facts}".strip()


@dataclass(frozen=True, slots=True)
class TradingStateChanged(Event):
    """The kill switch moved (`daemon.trading_state`): ACTIVE, REDUCING (only risk-reducing
    orders pass) or HALTED (cancels only). `by` is operator, gate (an automatic limit) or oms;
    `reason` a code such as DAILY_LOSS_LIMIT, with the facts in `context`."""

    state: str
    previous: str
    reason: str
    by: str
    ts: datetime
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OrderAccepted(Event):
    client_order_id: str
    venue_order_id: str
    symbol: str
    ts: datetime


@dataclass(frozen=True, slots=True)
class OrderRejected(Event):
    """The venue refused the order (as opposed to `RiskRejected`, our own gate)."""

    client_order_id: str
    symbol: str
    reason: str
    ts: datetime


@dataclass(frozen=True, slots=True)
class OrderCancelled(Event):
    client_order_id: str
    symbol: str
    reason: str
    ts: datetime


def quote_of(symbol: str) -> str:
    """'BTC/USDT' -> 'USDT' ('' for a name without a slash)."""
    return symbol.partition("/")[2]


def base_of(symbol: str) -> str:
    """'BTC/USDT' -> 'BTC'."""
    return symbol.partition("/")[0]


def resolve_fee(symbol: str, price: float, fee: float, fee_currency: str,
                fee_quote: float | None) -> tuple[str, float | None]:
    """(fee currency, quote value) of a fee as the venue reported it; see `Fill`.

    The currency defaults to the symbol's quote. The quote value is exact for a quote or base
    fee; for a third asset it is what the venue said it was worth (None: it did not say)."""
    currency = fee_currency or quote_of(symbol)
    if currency == quote_of(symbol):
        return currency, fee
    if currency == base_of(symbol):
        return currency, fee * price
    return currency, fee_quote


@dataclass(frozen=True, slots=True)
class Fill(Event):
    """One execution. `trade_id` is the venue's id for it: fills are deduplicated on it.

    Fees are booked in the asset the venue charged, because that is the balance it moved:
    `fee` is the amount IN `fee_currency`. Binance spot charges the asset received by default
    (a BTC/USDT buy pays BTC, a sell pays USDT) and BNB when the BNB discount is on.

    * `fee_currency`: the quote currency (the default, `""` on construction), the symbol's base
      currency, or a third asset such as BNB.
    * `fee_quote`: the fee's value in the quote currency, derived on construction: `fee` for a
      quote fee, `fee * price` for a base fee. For a third asset it is the venue's own valuation
      when it gave one, else None; the portfolio then values it at that asset's last price.
    """

    client_order_id: str
    venue_order_id: str
    trade_id: str
    symbol: str
    side: Side
    quantity: float
    price: float
    fee: float
    ts: datetime
    fee_currency: str = ""
    fee_quote: float | None = None

    def __post_init__(self) -> None:
        currency, value = resolve_fee(self.symbol, self.price, self.fee, self.fee_currency,
                                      self.fee_quote)
        object.__setattr__(self, "fee_currency", currency)
        object.__setattr__(self, "fee_quote", value)

    @property
    def notional(self) -> float:
        return self.quantity * self.price
