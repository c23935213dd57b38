"""What the OMS needs from a trading venue, and the errors a venue may raise.

Every venue (the in-process paper venue, ccxt against a testnet or the local emulator) speaks this
protocol. Errors are classified here, once, so the OMS's retry policy never depends on which
venue it talks to: transient errors are retried with the same client order id, permanent ones
are reported, authentication errors halt trading.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from daemon.events import OrderType, Side, resolve_fee
from risk.market_rules import MarketRules


class VenueError(Exception):
    """Base of every venue failure; `str()` says what the venue said."""


class TransientVenueError(VenueError):
    """Network trouble, timeout, 5xx, rate limit: safe to retry with the same client order id.
    `retry_after` is the venue's own hint in seconds (HTTP Retry-After), if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentVenueError(VenueError):
    """Insufficient funds, invalid order, filter failure, unknown symbol: retrying cannot help."""


class AuthenticationVenueError(VenueError):
    """Keys rejected or expired: trading must halt until an operator fixes it."""


class OrderNotFound(VenueError):
    """The venue has no order with that id."""


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """An order exactly as it goes to the venue: quantity and price already quantised."""

    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: float
    limit_price: float | None = None


@dataclass(frozen=True, slots=True)
class VenueOrder:
    """The venue's view of one order. `status` follows ccxt: open, closed (fully filled),
    canceled, rejected, expired."""

    client_order_id: str
    venue_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: float
    filled: float
    average_price: float | None
    status: str
    ts: datetime
    limit_price: float | None = None


@dataclass(frozen=True, slots=True)
class VenueTrade:
    """One execution as the venue reports it. `fee` is the amount in `fee_currency` exactly as
    charged (default: the quote currency); `fee_quote` its quote value, derived as for
    `daemon.events.Fill`."""

    trade_id: str
    client_order_id: str
    venue_order_id: str
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


TradeListener = Callable[[VenueTrade], None]
OrderListener = Callable[[VenueOrder], None]


class Venue(Protocol):
    name: str

    async def start(self) -> None:
        """Connect and load markets. Raises VenueError subclasses."""

    async def close(self) -> None: ...

    def markets(self) -> dict[str, MarketRules]:
        """Trading filters of every configured symbol (valid after `start`)."""
        ...

    def on_trade(self, listener: TradeListener) -> None:
        """Register a callback for executions pushed by the venue (stream or poll). The same
        trade may be reported more than once; the OMS deduplicates by `trade_id`."""

    def on_order(self, listener: OrderListener) -> None:
        """Register a callback for order status changes pushed by the venue."""

    async def submit(self, order: OrderRequest) -> VenueOrder:
        """Place an order carrying our client order id. A duplicate client order id must not
        create a second order: the venue answers with the existing one or raises."""
        ...

    async def cancel(self, client_order_id: str, symbol: str) -> VenueOrder: ...

    async def fetch_order(self, client_order_id: str, symbol: str) -> VenueOrder:
        """Raises OrderNotFound when the venue has never seen that client order id."""
        ...

    async def open_orders(self) -> list[VenueOrder]: ...

    async def balances(self) -> dict[str, float]:
        """Total balance per currency (free + locked)."""
        ...

    async def trades_since(self, since: datetime) -> list[VenueTrade]: ...
