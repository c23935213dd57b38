"""A rolling window of closes per symbol, kept as numpy ring buffers for the rebalancer."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd


class CloseHistory:
    def __init__(self, symbols: list[str], capacity: int) -> None:
        self.symbols = list(symbols)
        self.capacity = capacity
        self._index = {s: i for i, s in enumerate(self.symbols)}
        self._closes = np.full((capacity, len(self.symbols)), np.nan)
        self._times: list[datetime | None] = [None] * capacity
        self._pos = -1
        self._count = 0
        self._current: datetime | None = None

    def add(self, symbol: str, ts: datetime, close: float) -> None:
        col = self._index.get(symbol)
        if col is None:
            return
        if ts != self._current:
            self._pos = (self._pos + 1) % self.capacity
            self._closes[self._pos, :] = np.nan
            self._times[self._pos] = ts
            self._current = ts
            self._count = min(self._count + 1, self.capacity)
        self._closes[self._pos, col] = close

    @property
    def length(self) -> int:
        return self._count

    def closes(self) -> pd.DataFrame:
        """Closes oldest first; a symbol missing at a timestamp is NaN."""
        if self._count == 0:
            return pd.DataFrame(columns=self.symbols)
        order = [(self._pos - i) % self.capacity for i in range(self._count - 1, -1, -1)]
        return pd.DataFrame(self._closes[order], index=[self._times[i] for i in order],
                            columns=self.symbols)

    def returns(self, lookback: int) -> pd.DataFrame:
        """Simple returns of the last `lookback` bars, only for symbols with complete data."""
        n = min(self._count, lookback + 1)
        if n < 2:
            closes = self.closes().iloc[-(lookback + 1):].dropna(axis=1, how="any")
            return closes.pct_change().iloc[1:]
        # in numpy, one DataFrame at the end: the pandas chain (frame of the whole window,
        # dropna, pct_change) cost milliseconds per call. Same arithmetic, c[t] / c[t-1] - 1.
        rows = (self._pos - np.arange(n - 1, -1, -1)) % self.capacity
        block = self._closes[rows]
        keep = ~np.isnan(block).any(axis=0)
        values = block[:, keep]
        return pd.DataFrame(values[1:] / values[:-1] - 1.0,
                            index=[self._times[i] for i in rows[1:].tolist()],
                            columns=[s for s, k in zip(self.symbols, keep.tolist(), strict=True)
                                     if k])
