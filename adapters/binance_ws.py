"""Live bars from Binance's combined kline stream (`/stream?streams=btcusdt@kline_1h/...`), as a
`BarFeed`, with REST backfill so the daemon sees every closed bar exactly once, in order.

* Only closed klines (`x: true`) become bars. A timestamp's bars are yielded together once every
  symbol's kline has closed, or `bar_deadline_s` after the first one did: the stragglers are
  then fetched over REST, and whatever is still missing is left out (counted).
* The connection is watched by websocket ping/pong and an idle timeout (no message for
  `idle_timeout_s`: a stalled stream). It reconnects with capped, jittered backoff.
* After every reconnect, and whenever a closed kline arrives for a later timestamp than the next
  one expected, the missing bars are fetched with ccxt `fetch_ohlcv` before anything newer is
  yielded: no holes. Bars at or before the last yielded timestamp are dropped: no duplicates.
  The symbols are asked one after another while the market moves, so REST confirms a
  timestamp (missing there = missing at the exchange) only up to the newest bar that every
  symbol's reply reached; a symbol whose reply was empty confirms nothing. Bars REST returned
  past that wait for the other symbols' klines like streamed bars (same deadline, same REST
  straggler fetch).
* Duplicated, late, out-of-order and malformed messages are dropped and counted by reason in
  `counters`, never raised.

`BarAssembler` holds the ordering rules and does no I/O; `BinanceKlineFeed` does the I/O.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from adapters.ccxt_exchange import (
    ExchangeConfig,
    build_exchange,
    classify,
    redact,
    reset_retry_after,
)
from adapters.tasks import stop_task
from adapters.throttle import Backoff
from adapters.venue import PermanentVenueError, VenueError
from daemon.events import Bar

log = structlog.get_logger("binance_ws")

_OHLCV_PAGE = 1000  # Binance's kline limit


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _to_ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def exc_retry_after(exc: BaseException) -> float:
    """The exchange's Retry-After carried by a transient error, else 0."""
    return getattr(exc, "retry_after", None) or 0.0


def _sane(o: float, h: float, low: float, c: float, v: float) -> bool:
    values = (o, h, low, c, v)
    return (all(math.isfinite(x) for x in values) and min(o, h, low, c) > 0 and v >= 0
            and low <= min(o, c) and max(o, c) <= h)


class BarAssembler:
    """Groups closed bars by timestamp and releases them oldest first, never twice."""

    def __init__(self, symbols: Iterable[str], interval_s: int, deadline_s: float) -> None:
        self.symbols = list(symbols)
        self.interval = timedelta(seconds=interval_s)
        self.deadline_s = deadline_s
        self.last_ts: datetime | None = None       # newest timestamp released
        self.covered_until: datetime | None = None  # REST has confirmed everything up to here
        self.pending: dict[datetime, dict[str, Bar]] = {}
        self.deadlines: dict[datetime, float] = {}
        self.final: set[datetime] = set()            # nothing more will come for these
        self.counters: Counter[str] = Counter()

    def add_stream(self, bar: Bar, now: float) -> bool:
        if self.last_ts is not None and bar.ts <= self.last_ts:
            self.counters["dropped_stale"] += 1  # released already: a duplicate or late kline
            return False
        group = self.pending.setdefault(bar.ts, {})
        if bar.symbol in group:
            self.counters["dropped_duplicate"] += 1
            return False
        if self.pending and bar.ts < max(self.pending):
            self.counters["out_of_order"] += 1  # still in time: it is placed, not dropped
        group[bar.symbol] = bar
        self.deadlines.setdefault(bar.ts, now + self.deadline_s)
        return True

    def add_rest(self, bars: Iterable[Bar], covered_until: datetime | None,
                 now: float | None = None) -> int:
        """Merge bars fetched over REST. Timestamps up to `covered_until` are final: the
        exchange has told us all it has for them, for every symbol. With `now`, a group that
        is neither complete nor final gets the deadline a streamed bar would give it, so its
        stragglers are asked for if their klines do not come."""
        added = 0
        for bar in bars:
            if self.last_ts is not None and bar.ts <= self.last_ts:
                continue
            group = self.pending.setdefault(bar.ts, {})
            if bar.symbol not in group:
                group[bar.symbol] = bar
                added += 1
        if covered_until is not None:
            self.covered_until = max(covered_until, self.covered_until or covered_until)
            self.final.update(ts for ts in self.pending if ts <= covered_until)
        if now is not None:
            for ts, group in self.pending.items():
                if ts not in self.final and len(group) < len(self.symbols):
                    self.deadlines.setdefault(ts, now + self.deadline_s)
        return added

    def gap(self) -> tuple[datetime, datetime] | None:
        """(first, last) timestamps missing before the oldest pending group: REST must fill
        them before that group may be released."""
        if self.last_ts is None or not self.pending:
            return None
        oldest = min(self.pending)
        expected = self.last_ts + self.interval
        if oldest > expected and (self.covered_until is None
                                  or self.covered_until < oldest - self.interval):
            return expected, oldest - self.interval
        return None

    def skip_gap(self) -> None:
        """Give up on the current gap (REST kept failing): release what follows it."""
        gap = self.gap()
        if gap is not None:
            self.counters["gaps_unfilled"] += 1
            self.covered_until = gap[1]

    def overdue(self, now: float) -> list[tuple[datetime, list[str]]]:
        """Incomplete, not final groups whose deadline has passed, with the missing symbols."""
        return [(ts, [s for s in self.symbols if s not in group])
                for ts, group in sorted(self.pending.items())
                if ts not in self.final and len(group) < len(self.symbols)
                and now >= self.deadlines.get(ts, math.inf)]

    def finalise(self, ts: datetime) -> None:
        """Nothing more will come for `ts` (its stragglers were asked for): release it as is."""
        if ts in self.pending:
            self.final.add(ts)

    def postpone(self, ts: datetime, until: float) -> None:
        if ts in self.deadlines:
            self.deadlines[ts] = until

    def pop_ready(self) -> list[list[Bar]]:
        """Release, oldest first, the groups that are complete or final; stop at the first
        that is neither (a deadline alone never releases a group: its stragglers are asked
        for over REST first, see `overdue`)."""
        out = []
        while self.pending and self.gap() is None:
            ts = min(self.pending)
            group = self.pending[ts]
            complete = len(group) == len(self.symbols)
            if not (complete or ts in self.final):
                break
            if not complete:
                self.counters["partial_groups"] += 1
                self.counters["bars_missing"] += len(self.symbols) - len(group)
            out.append([group[s] for s in self.symbols if s in group])
            del self.pending[ts]
            self.deadlines.pop(ts, None)
            self.final.discard(ts)
            self.last_ts = ts
        return out

    def next_deadline(self) -> float | None:
        live = [d for ts, d in self.deadlines.items() if ts not in self.final]
        return min(live) if live else None


class BinanceKlineFeed:
    """`BarFeed` over Binance's websocket klines, backfilled over REST (ccxt `fetch_ohlcv`)."""

    # live: the risk gate's throttles and staleness run on the wall clock, and the pump does
    # not wait for the bus between timestamps (a burst of backfilled bars fits its inboxes)
    lockstep = False

    def __init__(self, cfg: ExchangeConfig, symbols: list[str], interval: str, interval_s: int,
                 *, warmup_bars: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.symbols = list(symbols)
        self.interval = interval
        self.interval_s = interval_s
        self.warmup_bars = warmup_bars
        self.clock = clock
        self.assembler = BarAssembler(self.symbols, interval_s, cfg.stream.bar_deadline_s)
        self.counters: Counter[str] = Counter()
        self.rest: Any = None
        self._ids: dict[str, str] = {}  # BTCUSDT -> BTC/USDT
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._straggler_tries: dict[datetime, int] = {}

    @property
    def url(self) -> str:
        streams = "/".join(f"{mid.lower()}@kline_{self.interval}" for mid in self._ids)
        return f"{self.cfg.market_ws_url()}/stream?streams={streams}"

    def stats(self) -> dict[str, int]:
        """Every counter: connection (reconnects, idle_timeouts), backfill (gaps_backfilled,
        bars_backfilled, gaps_unfilled, stragglers_fetched) and drops by reason."""
        return dict(self.counters + self.assembler.counters)

    # ---- the BarFeed --------------------------------------------------------------------

    async def bars(self) -> AsyncIterator[list[Bar]]:
        await self._open()
        catchup = False
        try:
            if self.warmup_bars:
                await self._warmup()
            while True:
                if catchup and self.assembler.last_ts is not None:
                    # after a (re)connect: whatever closed while we were away; if REST fails
                    # too, try again soon rather than at the next kline (an hour away)
                    catchup = not await self._backfill(
                        self.assembler.last_ts + self.assembler.interval, None)
                else:
                    catchup = False
                gap = self.assembler.gap()
                if gap is not None and not await self._backfill(*gap):
                    self.assembler.skip_gap()
                    log.error("bars_gap_unfilled", first=str(gap[0]), last=str(gap[1]))
                for ts, missing in self.assembler.overdue(self.clock()):
                    await self._fetch_stragglers(ts, missing)
                for group in self.assembler.pop_ready():
                    yield group
                if self.assembler.gap() is not None:
                    continue
                deadline = self.assembler.next_deadline()
                timeout = None if deadline is None else max(deadline - self.clock(), 0.0)
                if catchup:
                    timeout = min(timeout or math.inf, self.cfg.stream.reconnect_max_s)
                try:
                    async with asyncio.timeout(timeout):
                        kind, payload = await self._queue.get()
                except TimeoutError:
                    continue
                if kind == "bar":
                    self.assembler.add_stream(payload, self.clock())
                elif kind == "connected":
                    catchup = True
        finally:
            await self._stop_reader()

    async def close(self) -> None:
        await self._stop_reader()
        log.info("klines_stats", **self.stats())
        if self.rest is not None:
            await self.rest.close()
            self.rest = None

    async def _open(self) -> None:
        if self.rest is None:
            self.rest = build_exchange(self.cfg)  # public endpoints only: no keys
            for attempt in range(1, self.cfg.stream.backfill_attempts + 1):
                try:
                    await self._rest("load_markets")
                    break
                except VenueError as exc:
                    if attempt == self.cfg.stream.backfill_attempts:
                        raise
                    log.warning("klines_markets_retry", attempt=attempt, error=redact(str(exc)))
                    await asyncio.sleep(min(2.0 ** attempt, self.cfg.stream.reconnect_max_s))
            for symbol in self.symbols:
                if symbol not in self.rest.markets:
                    raise PermanentVenueError(f"{symbol} is not listed on {self.cfg.id} "
                                              f"({self.cfg.environment})")
                self._ids[self.rest.market(symbol)["id"]] = symbol
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_forever(), name="binance-klines")

    async def _stop_reader(self) -> None:
        await stop_task(self._reader)
        self._reader = None

    # ---- websocket ----------------------------------------------------------------------

    async def _read_forever(self) -> None:
        stream = self.cfg.stream
        backoff = Backoff(stream.reconnect_min_s, stream.reconnect_max_s)
        while True:
            try:
                async with connect(self.url, ping_interval=stream.ping_interval_s,
                                   ping_timeout=stream.ping_interval_s, open_timeout=10,
                                   close_timeout=2, max_size=2**20, compression=None) as ws:
                    self.counters["connects"] += 1
                    log.info("klines_connected", connects=self.counters["connects"])
                    self._queue.put_nowait(("connected", None))
                    while True:
                        async with asyncio.timeout(stream.idle_timeout_s):
                            raw = await ws.recv()
                        backoff.reset()
                        bar = self.parse(raw)
                        if bar is not None:
                            self._queue.put_nowait(("bar", bar))
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                self.counters["idle_timeouts"] += 1
                log.warning("klines_idle", timeout_s=stream.idle_timeout_s)
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidURI) as exc:
                self.counters["disconnects"] += 1
                log.warning("klines_disconnected", error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a bug must not end the market data: log and reconnect
                self.counters["reader_errors"] += 1
                log.error("klines_reader_error", error=f"{type(exc).__name__}: {exc}")
            self.counters["reconnects"] += 1
            await asyncio.sleep(backoff.next_delay())

    def parse(self, raw: str | bytes) -> Bar | None:
        """One stream message as a closed bar, or None (counted by reason)."""
        try:
            msg = json.loads(raw)
        except (ValueError, TypeError):
            self.counters["dropped_malformed"] += 1
            return None
        if isinstance(msg, dict) and "data" in msg:
            msg = msg["data"]  # combined stream envelope
        if not isinstance(msg, dict):
            self.counters["dropped_malformed"] += 1
            return None
        if "result" in msg or "code" in msg:
            self.counters["control_messages"] += 1
            return None
        k = msg.get("k")
        if msg.get("e") != "kline" or not isinstance(k, dict):
            self.counters["dropped_malformed"] += 1
            return None
        symbol = self._ids.get(str(k.get("s") or msg.get("s")))
        if symbol is None:
            self.counters["dropped_unknown_symbol"] += 1
            return None
        if k.get("i") != self.interval:
            self.counters["dropped_wrong_interval"] += 1
            return None
        if k.get("x") is not True:
            self.counters["open_klines"] += 1  # an update of the forming bar: not ours yet
            return None
        try:
            start = int(k["t"])
            o, h, low, c, v = (float(k[f]) for f in ("o", "h", "l", "c", "v"))
        except (KeyError, TypeError, ValueError):
            self.counters["dropped_malformed"] += 1
            return None
        if not _sane(o, h, low, c, v) or start % (self.interval_s * 1000):
            self.counters["dropped_malformed"] += 1
            return None
        return Bar(symbol, _from_ms(start), o, h, low, c, v, self.interval_s)

    # ---- REST ---------------------------------------------------------------------------

    async def _rest(self, method: str, *args: Any) -> Any:
        reset_retry_after()
        try:
            return await getattr(self.rest, method)(*args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.counters[f"rest_{type(exc).__name__}"] += 1
            raise classify(exc) from None

    async def _ohlcv(self, symbol: str, since: datetime | None, until: datetime | None,
                     limit: int) -> list[Bar]:
        """Closed bars of `symbol` from `since` (or the newest `limit`) up to `until`."""
        out: list[Bar] = []
        since_ms = _to_ms(since) if since is not None else None
        while True:
            rows = await self._rest("fetch_ohlcv", symbol, self.interval, since_ms, limit)
            if not isinstance(rows, list):
                raise VenueError("klines reply is not a list")
            # the exchange's clock (ccxt measured our offset at load_markets), less a second:
            # a bar is closed only when the exchange says its time is over
            now_ms = self.rest.milliseconds() - (self.rest.options.get("timeDifference") or 0)
            now_ms -= 1000
            newest = since_ms
            for row in rows:
                try:
                    start = int(row[0])
                    o, h, low, c, v = (float(x) for x in row[1:6])
                except (TypeError, ValueError, IndexError):
                    self.counters["rest_dropped_malformed"] += 1
                    continue
                newest = start if newest is None else max(newest, start)
                # a real exchange lists the still-forming bar last: not closed, not ours
                if start + self.interval_s * 1000 > now_ms:
                    continue
                if not _sane(o, h, low, c, v):
                    self.counters["rest_dropped_malformed"] += 1
                    continue
                bar = Bar(symbol, _from_ms(start), o, h, low, c, v, self.interval_s)
                if until is None or bar.ts <= until:
                    out.append(bar)
            done = (len(rows) < limit or since_ms is None or newest == since_ms
                    or (until is not None and newest is not None and newest >= _to_ms(until)))
            if done:
                return out
            since_ms = newest + 1

    async def _backfill(self, first: datetime, last: datetime | None) -> bool:
        """Fetch [first, last] (last None: up to now) for every symbol and merge it; False when
        REST failed `backfill_attempts` times."""
        backoff = Backoff(self.cfg.stream.reconnect_min_s, self.cfg.stream.reconnect_max_s)
        limit = _OHLCV_PAGE
        if last is not None:
            limit = min(int((last - first).total_seconds() // self.interval_s) + 1, _OHLCV_PAGE)
        for attempt in range(1, self.cfg.stream.backfill_attempts + 1):
            try:
                fetched = {s: await self._ohlcv(s, first, last, limit) for s in self.symbols}
            except VenueError as exc:
                self.counters["backfill_failures"] += 1
                log.warning("backfill_failed", attempt=attempt, error=redact(str(exc)))
                await asyncio.sleep(max(backoff.next_delay(), exc_retry_after(exc)))
                continue
            covered = last
            if covered is None and all(fetched.values()):
                # up to the newest bar every symbol's reply reached (the least of them), so a
                # bar that closed between two requests is not declared missing. An empty reply
                # confirms nothing: that symbol had no bar from `first` on when it was asked,
                # and one that closed just after must not be declared missing for it
                covered = min(max(b.ts for b in bars) for bars in fetched.values())
            added = self.assembler.add_rest([b for bars in fetched.values() for b in bars],
                                            covered, now=self.clock())
            if added or last is not None:
                self.counters["gaps_backfilled" if last is not None else "catchups"] += 1
                self.counters["bars_backfilled"] += added
                log.info("bars_backfilled", first=str(first), last=str(last or covered),
                         bars=added)
            return True
        return False

    async def _fetch_stragglers(self, ts: datetime, missing: list[str]) -> None:
        """A timestamp's deadline passed with symbols missing: ask REST for them. What REST
        does not have either is left out; a REST failure is retried up to
        `backfill_attempts` times before the group goes out incomplete."""
        try:
            bars = [b for s in missing for b in await self._ohlcv(s, ts, ts, 1) if b.ts == ts]
        except VenueError as exc:
            self.counters["backfill_failures"] += 1
            tries = self._straggler_tries[ts] = self._straggler_tries.get(ts, 0) + 1
            log.warning("stragglers_fetch_failed", ts=str(ts), attempt=tries,
                        error=redact(str(exc)))
            if tries < self.cfg.stream.backfill_attempts:
                delay = min(self.cfg.stream.reconnect_min_s * 2 ** tries,
                            self.cfg.stream.reconnect_max_s)
                self.assembler.postpone(ts, self.clock() + max(delay, exc_retry_after(exc)))
                return
            bars = []
        self._straggler_tries.pop(ts, None)
        self.counters["stragglers_fetched"] += len(bars)
        self.assembler.add_rest(bars, None)
        self.assembler.finalise(ts)

    async def _warmup(self) -> None:
        """The newest `warmup_bars` closed bars, so the allocator has history at once."""
        for attempt in range(1, self.cfg.stream.backfill_attempts + 1):
            try:
                fetched = [b for s in self.symbols
                           for b in await self._ohlcv(s, None, None, self.warmup_bars + 1)]
                break
            except VenueError as exc:
                log.warning("warmup_failed", attempt=attempt, error=redact(str(exc)))
                await asyncio.sleep(min(2.0 ** attempt, self.cfg.stream.reconnect_max_s))
        else:
            raise VenueError(f"could not fetch {self.warmup_bars} warm-up bars over REST")
        # up to the least newest bar of all symbols: one that closed between two requests is
        # left to the stream (or the catch-up), not emitted as a partial cross-section
        newest = [max(b.ts for b in fetched if b.symbol == s) for s in self.symbols
                  if any(b.symbol == s for b in fetched)]
        if not newest:
            return
        stamps = sorted({b.ts for b in fetched if b.ts <= min(newest)})[-self.warmup_bars:]
        keep = [b for b in fetched if stamps[0] <= b.ts <= stamps[-1]]
        self.assembler.add_rest(keep, stamps[-1])
        self.counters["warmup_bars"] += len(keep)
