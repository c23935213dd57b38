"""What the daemon needs from a market-data source.

A feed yields the bars of one timestamp together, in time order: the rebalancer acts on a
complete cross-section, and a replay stays deterministic. Live feeds (websocket klines) yield a
timestamp's bars as soon as every symbol's kline for it has closed, or when a deadline passes
with the stragglers missing (the consumer then sees a partial list and the gap is counted).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from daemon.events import Bar


class BarFeed(Protocol):
    symbols: list[str]
    interval_s: int

    def bars(self) -> AsyncIterator[list[Bar]]:
        """Bars grouped by timestamp, oldest first. Ends when the source is exhausted."""
        ...

    async def close(self) -> None: ...


def csv_name(symbol: str) -> str:
    """'BTC/USDT' -> 'BTC-USDT' (the file stem used in ../shared/data)."""
    return symbol.replace("/", "-")


def ccxt_symbol(stem: str) -> str:
    """'BTC-USDT' -> 'BTC/USDT'."""
    return stem.replace("-", "/")
