"""A rolling window of closes per symbol, kept as a ring buffer for the rebalancer.

Rows are plain lists: a close goes in on every bar (six a timestamp in a replay, hundreds of
thousands in all), a window comes out once per solve, so the write is the cheap side and the
read turns the rows into numpy.
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pandas as pd

from risk.allocation import ReturnsWindow


class CloseHistory:
    def __init__(self, symbols: list[str], capacity: int) -> None:
        self.symbols = list(symbols)
        self.capacity = capacity
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self._blank = [math.nan] * len(self.symbols)
        self._rows: list[list[float]] = [list(self._blank) for _ in range(capacity)]
        self._times: list[datetime | None] = [None] * capacity
        self._pos = -1
        self._count = 0
        self._current: datetime | None = None
        self._row = self._rows[0]

    def add(self, symbol: str, ts: datetime, close: float) -> None:
        col = self._index.get(symbol)
        if col is None:
            return
        if ts != self._current:
            self._pos = (self._pos + 1) % self.capacity
            self._row = self._rows[self._pos] = self._blank.copy()
            self._times[self._pos] = ts
            self._current = ts
            if self._count < self.capacity:
                self._count += 1
        self._row[col] = close

    @property
    def length(self) -> int:
        return self._count

    def _order(self, n: int) -> list[int]:
        """Ring positions of the last `n` rows, oldest first."""
        return [(self._pos - i) % self.capacity for i in range(n - 1, -1, -1)]

    def closes(self) -> pd.DataFrame:
        """Closes oldest first; a symbol missing at a timestamp is NaN."""
        if self._count == 0:
            return pd.DataFrame(columns=self.symbols)
        order = self._order(self._count)
        return pd.DataFrame(np.array([self._rows[i] for i in order], dtype=float),
                            index=[self._times[i] for i in order], columns=self.symbols)

    def returns(self, lookback: int) -> pd.DataFrame:
        """Simple returns of the last `lookback` bars, only for symbols with complete data."""
        if min(self._count, lookback + 1) < 2:
            closes = self.closes().iloc[-(lookback + 1):].dropna(axis=1, how="any")
            return closes.pct_change().iloc[1:]
        return self.window(lookback).frame()

    def window(self, lookback: int) -> ReturnsWindow:
        """`returns(lookback)` without pandas: the same values, laid out as that frame's
        `to_numpy()` (column-major), the same columns and row times."""
        n = min(self._count, lookback + 1)
        order = self._order(n)
        block = np.array([self._rows[i] for i in order], dtype=float).reshape(n, len(self.symbols))
        keep = ~np.isnan(block).any(axis=0)
        values = block[:, keep]
        # c[t] / c[t-1] - 1, the pandas chain's arithmetic (pct_change)
        change = np.asfortranarray(values[1:] / values[:-1] - 1.0)
        assets = tuple(s for s, k in zip(self.symbols, keep.tolist(), strict=True) if k)
        return ReturnsWindow(change, assets, [self._times[i] for i in order[1:]])
