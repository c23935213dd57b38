"""A stand-in for the network between the daemon and a real PaperVenue, for tests: each call
can be dropped before it reaches the venue, or have its answer lost after the venue acted."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from adapters.paper import PaperVenue
from adapters.venue import (
    OrderListener,
    OrderRequest,
    TradeListener,
    TransientVenueError,
    VenueOrder,
    VenueTrade,
)
from daemon.events import Bar
from risk.market_rules import MarketRules

T = TypeVar("T")
DROP = "drop"  # the request never reaches the venue
LOSE = "lose"  # the venue acts, the answer never arrives (a read timeout)


class FaultyNetwork:
    name = "faulty"

    def __init__(self, inner: PaperVenue) -> None:
        self.inner = inner
        self.plan: dict[str, list[str | Exception]] = defaultdict(list)
        self.calls: Counter[str] = Counter()
        self.before_submit: Callable[[OrderRequest], None] | None = None

    def script(self, method: str, *steps: str | Exception) -> None:
        """The next calls of `method` go like this (then normally)."""
        self.plan[method].extend(steps)

    async def _call(self, method: str, action: Callable[[], Awaitable[T]]) -> T:
        self.calls[method] += 1
        step = self.plan[method].pop(0) if self.plan[method] else "ok"
        if step == DROP:
            raise TransientVenueError(f"{method}: connection reset before the request was sent")
        if isinstance(step, Exception):
            raise step
        result = await action()
        if step == LOSE:
            raise TransientVenueError(f"{method}: read timed out (the answer was lost)")
        return result

    # -- the Venue protocol, through the faulty network ----------------------------------
    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def markets(self) -> dict[str, MarketRules]:
        return self.inner.markets()

    def on_trade(self, listener: TradeListener) -> None:
        self.inner.on_trade(listener)

    def on_order(self, listener: OrderListener) -> None:
        self.inner.on_order(listener)

    def on_bars(self, bars: list[Bar]) -> None:
        self.inner.on_bars(bars)

    async def submit(self, order: OrderRequest) -> VenueOrder:
        if self.before_submit is not None:
            self.before_submit(order)
        return await self._call("submit", lambda: self.inner.submit(order))

    async def cancel(self, client_order_id: str, symbol: str) -> VenueOrder:
        return await self._call("cancel", lambda: self.inner.cancel(client_order_id, symbol))

    async def fetch_order(self, client_order_id: str, symbol: str) -> VenueOrder:
        return await self._call("fetch_order",
                                lambda: self.inner.fetch_order(client_order_id, symbol))

    async def open_orders(self) -> list[VenueOrder]:
        return await self._call("open_orders", self.inner.open_orders)

    async def balances(self) -> dict[str, float]:
        return await self._call("balances", self.inner.balances)

    async def trades_since(self, since: datetime) -> list[VenueTrade]:
        return await self._call("trades_since", lambda: self.inner.trades_since(since))

    def __getattr__(self, name: str) -> Any:  # last_bar_ts, orders(), submissions() ...
        return getattr(self.inner, name)
