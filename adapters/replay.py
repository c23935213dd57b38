"""Replay of historical OHLCV CSV files as a `BarFeed`.

One file per symbol, `BASE-QUOTE.csv` in `data_dir` (the schema of `adapters.csv_bars`). The
files are loaded and validated when the feed is built, so a missing file fails at startup with
its path, and `feed.report` says what will be replayed before the first bar: bars, first and
last timestamps, gaps and dropped rows per symbol.

The window is `start <= ts < end` on bar open times, so consecutive windows never replay a bar
twice. Symbols are merged on timestamp; a symbol without a bar at some timestamp (listed later,
exchange maintenance) is simply absent from that timestamp's list.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from adapters.csv_bars import BarArrays, BarDataError, BarFileMissing, read_bars_csv
from adapters.feed import ccxt_symbol, csv_name
from adapters.simulated import Pacer, parse_utc
from daemon.events import Bar
from daemon.settings import ConfigError

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS = 1_000_000_000
# Timestamps converted from numpy to Python objects at a time: bounds memory on long replays.
_BLOCK = 4096


@dataclass(frozen=True)
class ReplayConfig:
    data_dir: str = field(metadata={
        "doc": "folder of BASE-QUOTE.csv files (timestamp,open,high,low,close,volume)"})
    symbols: list[str] = field(default_factory=list, metadata={
        "doc": "ccxt-style symbols to replay, BASE/QUOTE; empty = every CSV file in data_dir"})
    start: str | None = field(default=None, metadata={
        "doc": "first bar open time replayed, inclusive; ISO 8601, naive = UTC; unset = all"})
    end: str | None = field(default=None, metadata={
        "doc": "bar open times before this are replayed (exclusive); unset = to the end"})
    speed: float = field(default=0.0, metadata={
        "doc": "clock speed: waits (time to next bar) / speed between timestamps; 0 = no wait",
        "min": 0.0})
    interval_s: int | None = field(default=None, metadata={
        "doc": "bar length; unset = the median spacing of the data", "unit": "s", "min": 1})

    def check(self) -> None:
        bounds = {}
        for key in ("start", "end"):
            text = getattr(self, key)
            if text is not None:
                try:
                    bounds[key] = parse_utc(text)
                except ValueError as exc:
                    raise ConfigError(key, text, "must be an ISO 8601 date or datetime") from exc
        if len(bounds) == 2 and bounds["start"] >= bounds["end"]:
            raise ConfigError("end", self.end, f"must be later than start ({self.start})")
        if len(set(self.symbols)) != len(self.symbols):
            raise ConfigError("symbols", self.symbols, "must not repeat a symbol")


@dataclass(frozen=True)
class SymbolReport:
    file: str
    bars: int
    first: datetime | None
    last: datetime | None
    gaps: int  # runs of one or more missing bars between first and last
    missing_bars: int
    dropped: dict[str, int]  # reason -> rows, over the whole file


@dataclass(frozen=True)
class ReplayReport:
    interval_s: int
    timestamps: int
    symbols: dict[str, SymbolReport]

    @property
    def bars_per_symbol(self) -> dict[str, int]:
        return {s: r.bars for s, r in self.symbols.items()}

    @property
    def gaps_per_symbol(self) -> dict[str, int]:
        return {s: r.gaps for s, r in self.symbols.items()}

    @property
    def dropped_by_reason(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for r in self.symbols.values():
            total.update(r.dropped)
        return dict(total)

    @property
    def total_bars(self) -> int:
        return sum(r.bars for r in self.symbols.values())

    def summary(self) -> str:
        lines = [f"replay: {self.total_bars} bars, {self.timestamps} timestamps, "
                 f"interval {self.interval_s}s"]
        for s, r in self.symbols.items():
            span = f"{r.first:%Y-%m-%dT%H:%MZ}..{r.last:%Y-%m-%dT%H:%MZ}" if r.bars else "empty"
            dropped = " ".join(f"{k}={v}" for k, v in sorted(r.dropped.items())) or "none"
            lines.append(f"  {s}: {r.bars} bars {span} gaps={r.gaps} "
                         f"missing_bars={r.missing_bars} dropped: {dropped}")
        return "\n".join(lines)


class ReplayFeed:
    """`BarFeed` over CSV files. Loads on construction (raises `BarDataError` naming the file
    that cannot be used); every call to `bars()` replays the window from its start."""

    def __init__(self, cfg: ReplayConfig, *, clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[object]] | None = None) -> None:
        cfg.check()
        self.cfg = cfg
        self._clock, self._sleep = clock, sleep
        self._closed = False
        directory = Path(cfg.data_dir)
        if not directory.is_dir():
            raise BarFileMissing(f"replay data_dir {directory.resolve()} is not a directory")
        self.symbols: list[str] = _resolve_symbols(cfg.symbols, directory)

        files = {s: directory / f"{csv_name(s)}.csv" for s in self.symbols}
        full: dict[str, BarArrays] = {}
        for s, path in files.items():
            try:
                full[s] = read_bars_csv(path)
            except BarFileMissing as exc:
                raise BarFileMissing(f"replay: no data for {s}: {path.resolve()} does not "
                                     "exist") from exc
        self.interval_s: int = cfg.interval_s or _infer_interval(full, directory)

        start_ns = _to_ns(cfg.start)
        end_ns = _to_ns(cfg.end)
        window = {s: a.between(start_ns, end_ns) for s, a in full.items()}
        self._merge(window)
        self.report = ReplayReport(
            interval_s=self.interval_s,
            timestamps=len(self._group_starts),
            symbols={s: _symbol_report(str(files[s]), a, self.interval_s)
                     for s, a in window.items()})
        for r in self.report.symbols.values():
            if r.dropped:
                log.warning("replay %s: dropped rows %s", r.file, r.dropped)
            if not r.bars:
                log.warning("replay %s: no bars in the window", r.file)

    def _merge(self, window: dict[str, BarArrays]) -> None:
        """One flat array per column, sorted by (timestamp, configured symbol order)."""
        parts = list(window.values())
        sym = np.concatenate([np.full(len(a), i, dtype=np.int32) for i, a in enumerate(parts)])
        ts = np.concatenate([a.ts_ns for a in parts])
        order = np.lexsort((sym, ts))
        self._sym = sym[order]
        self._ts = ts[order]
        self._cols = [np.concatenate([getattr(a, c) for a in parts])[order]
                      for c in ("open", "high", "low", "close", "volume")]
        # Index of the first bar of each timestamp, plus a sentinel at the end.
        self._group_starts = np.flatnonzero(np.diff(self._ts, prepend=np.int64(-1)) != 0)
        self._bounds = np.append(self._group_starts, len(self._ts))

    async def bars(self) -> AsyncIterator[list[Bar]]:
        self._closed = False
        pacer = Pacer(self.cfg.speed, clock=self._clock, sleep=self._sleep)
        paced = pacer.enabled
        symbols, interval = self.symbols, self.interval_s
        n_groups = len(self._group_starts)
        prev_ns = int(self._ts[0]) if len(self._ts) else 0
        for g0 in range(0, n_groups, _BLOCK):
            g1 = min(g0 + _BLOCK, n_groups)
            lo, hi = int(self._bounds[g0]), int(self._bounds[g1])
            # Python scalars once per block: per-element numpy access is ten times slower.
            names = [symbols[i] for i in self._sym[lo:hi].tolist()]
            o, h, low, c, v = (col[lo:hi].tolist() for col in self._cols)
            ts_ns = self._ts[self._group_starts[g0:g1]].tolist()
            bounds = (self._bounds[g0:g1 + 1] - lo).tolist()
            for k, t_ns in enumerate(ts_ns):
                if self._closed:
                    return
                if paced:  # unpaced, a coroutine call per timestamp for nothing
                    await pacer.wait((t_ns - prev_ns) / _NS)
                    if self._closed:
                        return
                prev_ns = t_ns
                ts = _to_datetime(t_ns)
                yield [_make_bar(names[i], ts, o[i], h[i], low[i], c[i], v[i], interval)
                       for i in range(bounds[k], bounds[k + 1])]

    async def close(self) -> None:
        self._closed = True


def _bar_factory() -> Callable[[str, datetime, float, float, float, float, float, int], Bar]:
    """`Bar(...)` for the feed's inner loop at about 40% of its cost (a replay builds every
    bar): a frozen dataclass's `__init__` sets each field through `object.__setattr__` by
    name, this sets the slots through their descriptors. The same object as long as `Bar`
    has these eight fields in this order and no `__post_init__`, which is checked here: a
    change to `Bar` fails at import instead of building different bars."""
    names = ("symbol", "ts", "open", "high", "low", "close", "volume", "interval_s")
    if tuple(f.name for f in fields(Bar)) != names or hasattr(Bar, "__post_init__"):
        raise RuntimeError("daemon.events.Bar changed: update adapters/replay.py _bar_factory")
    s0, s1, s2, s3, s4, s5, s6, s7 = (getattr(Bar, n).__set__ for n in names)
    new = object.__new__

    def make(symbol: str, ts: datetime, open_: float, high: float, low: float, close: float,
             volume: float, interval_s: int) -> Bar:
        bar = new(Bar)
        s0(bar, symbol)
        s1(bar, ts)
        s2(bar, open_)
        s3(bar, high)
        s4(bar, low)
        s5(bar, close)
        s6(bar, volume)
        s7(bar, interval_s)
        return bar

    return make


_make_bar = _bar_factory()


def _resolve_symbols(symbols: list[str], directory: Path) -> list[str]:
    if symbols:
        # Accept the file-stem spelling too, but bars always carry the ccxt symbol.
        return [s if "/" in s else ccxt_symbol(s) for s in symbols]
    found = sorted(ccxt_symbol(p.stem) for p in directory.glob("*.csv"))
    if not found:
        raise BarFileMissing(f"replay data_dir {directory.resolve()} holds no .csv files")
    return found


def _infer_interval(data: dict[str, BarArrays], directory: Path) -> int:
    diffs = [np.diff(a.ts_ns) for a in data.values() if len(a) > 1]
    if not diffs:
        raise BarDataError(f"replay {directory}: too few bars to infer the interval; "
                           "set interval_s")
    return max(1, round(float(np.median(np.concatenate(diffs))) / _NS))


def _to_ns(text: str | None) -> int | None:
    if text is None:
        return None
    return (parse_utc(text) - _EPOCH) // timedelta(microseconds=1) * 1000


def _to_datetime(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _symbol_report(file: str, a: BarArrays, interval_s: int) -> SymbolReport:
    step = np.diff(a.ts_ns) // (interval_s * _NS)
    gaps = step > 1
    return SymbolReport(
        file=file,
        bars=len(a),
        first=_to_datetime(int(a.ts_ns[0])) if len(a) else None,
        last=_to_datetime(int(a.ts_ns[-1])) if len(a) else None,
        gaps=int(gaps.sum()),
        missing_bars=int((step[gaps] - 1).sum()),
        dropped=a.dropped,
    )
