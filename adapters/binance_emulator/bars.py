"""Where the emulator's prices come from: replayed CSV files or a seeded random walk.

A source yields cross-sections (the bars of one open time, every symbol that has one), oldest
first. CSV files follow ../shared/data: `timestamp,open,high,low,close,volume`, one file per
symbol named `BTC-USDT.csv`. A symbol missing a timestamp (exchange maintenance) is simply absent
from that cross-section, as it would be on Binance.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from adapters.feed import csv_name
from daemon.events import Bar

INTERVALS: dict[str, int] = {
    "1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "2h": 7200,
    "4h": 14400, "6h": 21600, "8h": 28800, "12h": 43200, "1d": 86400, "3d": 259200,
    "1w": 604800,
}


def interval_name(seconds: int) -> str:
    for name, s in INTERVALS.items():
        if s == seconds:
            return name
    raise ValueError(f"no Binance kline interval of {seconds} s")


def to_ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class BarSource(Protocol):
    symbols: list[str]
    interval_s: int

    def __iter__(self) -> Iterator[list[Bar]]: ...


class CsvBars:
    """Replays `<data_dir>/<BASE>-<QUOTE>.csv`, optionally limited to [start, end)."""

    def __init__(self, data_dir: Path | str, symbols: Sequence[str], interval: str = "1h",
                 start: datetime | None = None, end: datetime | None = None) -> None:
        if interval not in INTERVALS:
            raise ValueError(f"unknown interval {interval!r}; one of {', '.join(INTERVALS)}")
        self.symbols = list(symbols)
        self.interval_s = INTERVALS[interval]
        self._frames: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        lo = to_ms(start) if start else None
        hi = to_ms(end) if end else None
        for symbol in self.symbols:
            path = Path(data_dir) / f"{csv_name(symbol)}.csv"
            if not path.is_file():
                raise FileNotFoundError(f"no bars for {symbol}: {path} is missing")
            df = pd.read_csv(path)
            # '2017-08-17T04:00:00Z': numpy parses the naive part; every file is UTC.
            ts = np.array(df["timestamp"].str.slice(0, 19).to_numpy(dtype=str),
                          dtype="datetime64[ms]").astype(np.int64)
            ohlcv = df[["open", "high", "low", "close", "volume"]].to_numpy(dtype=float)
            keep = np.ones(len(ts), dtype=bool)
            if lo is not None:
                keep &= ts >= lo
            if hi is not None:
                keep &= ts < hi
            self._frames[symbol] = (ts[keep], ohlcv[keep])

    def __iter__(self) -> Iterator[list[Bar]]:
        if not self._frames:
            return
        all_ts = np.unique(np.concatenate([ts for ts, _ in self._frames.values()]))
        cursor = dict.fromkeys(self.symbols, 0)
        for t in all_ts:
            when = from_ms(int(t))
            out = []
            for symbol in self.symbols:
                ts, ohlcv = self._frames[symbol]
                i = cursor[symbol]
                if i < len(ts) and ts[i] == t:
                    o, h, low, c, v = ohlcv[i]
                    out.append(Bar(symbol, when, float(o), float(h), float(low), float(c),
                                   float(v), self.interval_s))
                    cursor[symbol] = i + 1
            yield out


class SyntheticBars:
    """A seeded geometric random walk per symbol; endless when `n_bars` is None."""

    def __init__(self, symbols: Sequence[str], interval_s: int = 3600, seed: int = 0,
                 start: datetime = datetime(2022, 1, 1, tzinfo=UTC),
                 start_prices: dict[str, float] | None = None, vol_per_bar: float = 0.01,
                 n_bars: int | None = None) -> None:
        interval_name(interval_s)
        self.symbols = list(symbols)
        self.interval_s = interval_s
        self.seed, self.start, self.vol, self.n_bars = seed, start, vol_per_bar, n_bars
        defaults = {"BTC/USDT": 40_000.0, "ETH/USDT": 3_000.0, "BNB/USDT": 400.0,
                    "SOL/USDT": 100.0, "XRP/USDT": 0.8, "ADA/USDT": 1.2}
        self.start_prices = {s: (start_prices or {}).get(s, defaults.get(s, 100.0))
                             for s in self.symbols}

    def __iter__(self) -> Iterator[list[Bar]]:
        rng = random.Random(self.seed)
        price = dict(self.start_prices)
        i = 0
        while self.n_bars is None or i < self.n_bars:
            when = self.start + timedelta(seconds=i * self.interval_s)
            out = []
            for symbol in self.symbols:
                o = price[symbol]
                c = o * math.exp(rng.gauss(0.0, self.vol))
                h = max(o, c) * (1 + abs(rng.gauss(0.0, self.vol / 2)))
                low = min(o, c) * (1 - abs(rng.gauss(0.0, self.vol / 2)))
                vol = 1000.0 / o * rng.uniform(50, 150)
                out.append(Bar(symbol, when, _sig(o), _sig(h), _sig(low), _sig(c), round(vol, 6),
                               self.interval_s))
                price[symbol] = _sig(c)
            i += 1
            yield out


def _sig(x: float) -> float:
    """Six significant digits, like a real quote; keeps prices on a plausible tick."""
    return float(f"{x:.6g}")


class KlineHistory:
    """Every closed bar so far, per Binance symbol id, for REST klines and tickers."""

    def __init__(self) -> None:
        self._bars: dict[str, list[Bar]] = {}
        self._starts: dict[str, list[int]] = {}

    def append(self, symbol_id: str, bar: Bar) -> None:
        self._bars.setdefault(symbol_id, []).append(bar)
        self._starts.setdefault(symbol_id, []).append(to_ms(bar.ts))

    def select(self, symbol_id: str, start: int | None = None, end: int | None = None,
               limit: int = 500) -> list[Bar]:
        """Binance's rule: from `start` the oldest `limit` bars, otherwise the newest."""
        bars, starts = self._bars.get(symbol_id, []), self._starts.get(symbol_id, [])
        lo = bisect_left(starts, start) if start is not None else 0
        hi = bisect_right(starts, end) if end is not None else len(starts)
        window = bars[lo:hi]
        return window[:limit] if start is not None else window[-limit:]

    def since(self, symbol_id: str, start: int) -> list[Bar]:
        starts = self._starts.get(symbol_id, [])
        return self._bars.get(symbol_id, [])[bisect_left(starts, start):]

    def last(self, symbol_id: str) -> Bar | None:
        bars = self._bars.get(symbol_id)
        return bars[-1] if bars else None

    def __len__(self) -> int:
        return sum(len(b) for b in self._bars.values())
