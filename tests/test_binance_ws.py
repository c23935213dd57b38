"""The websocket kline feed: ordering rules (no I/O), message parsing, and the live feed against
the emulator's streams with disconnects, stalls, duplicates and reordering injected."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.binance_emulator import BinanceEmulator, FaultConfig, SyntheticBars
from adapters.binance_ws import BarAssembler, BinanceKlineFeed
from adapters.ccxt_exchange import ExchangeConfig, StreamConfig
from daemon.events import Bar

SYMBOLS = ["BTC/USDT", "ETH/USDT"]
T0 = datetime(2022, 1, 1, tzinfo=UTC)
H = timedelta(hours=1)


def bar(symbol: str, i: int, close: float = 100.0) -> Bar:
    return Bar(symbol, T0 + i * H, close, close + 1, close - 1, close, 5.0, 3600)


def stamps(groups: list[list[Bar]]) -> list[int]:
    return [int((g[0].ts - T0) / H) for g in groups]


# ---- BarAssembler: ordering without I/O ----------------------------------------------------

def test_groups_released_when_complete_in_time_order() -> None:
    asm = BarAssembler(SYMBOLS, 3600, deadline_s=10.0)
    asm.add_stream(bar("BTC/USDT", 0), now=0.0)
    assert asm.pop_ready() == []  # ETH not closed yet
    asm.add_stream(bar("BTC/USDT", 1), now=1.0)  # t1 before t0 is complete: held back
    asm.add_stream(bar("ETH/USDT", 0), now=1.0)
    asm.add_stream(bar("ETH/USDT", 1), now=1.0)
    groups = asm.pop_ready()
    assert stamps(groups) == [0, 1] and [b.symbol for b in groups[0]] == SYMBOLS
    assert asm.counters["out_of_order"] == 1


def test_duplicates_and_stale_bars_dropped() -> None:
    asm = BarAssembler(SYMBOLS, 3600, deadline_s=10.0)
    for s in SYMBOLS:
        asm.add_stream(bar(s, 0), now=0.0)
    asm.add_stream(bar("BTC/USDT", 1), now=0.0)
    asm.add_stream(bar("BTC/USDT", 1, close=999.0), now=0.0)  # a duplicate of a pending bar
    assert stamps(asm.pop_ready()) == [0]
    asm.add_stream(bar("ETH/USDT", 0), now=0.0)  # late copy of a released bar
    assert dict(asm.counters) == {"dropped_duplicate": 1, "dropped_stale": 1}
    asm.add_stream(bar("ETH/USDT", 1), now=0.0)
    (group,) = asm.pop_ready()
    assert group[0].close == 100.0  # the first copy won


def test_gap_blocks_release_until_rest_fills_it() -> None:
    asm = BarAssembler(SYMBOLS, 3600, deadline_s=10.0)
    for s in SYMBOLS:
        asm.add_stream(bar(s, 0), now=0.0)
    asm.pop_ready()
    for s in SYMBOLS:
        asm.add_stream(bar(s, 3), now=0.0)
    assert asm.gap() == (T0 + H, T0 + 2 * H)
    assert asm.pop_ready() == []  # not even after the deadline: a hole is worse
    added = asm.add_rest([bar(s, i) for s in SYMBOLS for i in (1, 2, 3)], covered_until=T0 + 2 * H)
    assert added == 4  # t3 came from the stream already
    assert stamps(asm.pop_ready()) == [1, 2, 3]


def test_deadline_releases_partial_group_and_counts_it() -> None:
    asm = BarAssembler(SYMBOLS, 3600, deadline_s=5.0)
    asm.add_stream(bar("BTC/USDT", 0), now=0.0)
    assert asm.overdue(now=4.0) == [] and asm.next_deadline() == 5.0
    assert asm.overdue(now=5.0) == [(T0, ["ETH/USDT"])]
    assert asm.pop_ready() == []  # not before REST was asked for the straggler
    asm.postpone(T0, 8.0)  # REST failed: ask again later
    assert asm.overdue(now=7.0) == []
    asm.finalise(T0)  # REST has no ETH bar either
    (group,) = asm.pop_ready()
    assert [b.symbol for b in group] == ["BTC/USDT"]
    assert asm.counters["partial_groups"] == 1 and asm.counters["bars_missing"] == 1


def test_rest_confirmed_timestamp_is_final_and_gap_can_be_skipped() -> None:
    asm = BarAssembler(SYMBOLS, 3600, deadline_s=60.0)
    asm.add_rest([bar("BTC/USDT", 0)], covered_until=T0)  # ETH had no bar then (maintenance)
    assert [len(g) for g in asm.pop_ready()] == [1]
    for s in SYMBOLS:
        asm.add_stream(bar(s, 5), now=0.0)
    asm.skip_gap()  # REST kept failing: carry on after the hole, counted
    assert stamps(asm.pop_ready()) == [5] and asm.counters["gaps_unfilled"] == 1


# ---- parsing --------------------------------------------------------------------------------

def kline(**k: Any) -> str:
    body = {"t": 1640995200000, "T": 1640998799999, "s": "BTCUSDT", "i": "1h", "o": "100",
            "c": "101", "h": "102", "l": "99", "v": "5", "x": True, **k}
    return json.dumps({"stream": "btcusdt@kline_1h", "data": {"e": "kline", "s": body["s"],
                                                              "k": body}})


def test_parse_keeps_closed_klines_and_counts_every_drop() -> None:
    feed = BinanceKlineFeed(ExchangeConfig(), SYMBOLS, "1h", 3600)
    feed._ids = {"BTCUSDT": "BTC/USDT", "ETHUSDT": "ETH/USDT"}
    parsed = feed.parse(kline())
    assert parsed == Bar("BTC/USDT", T0, 100.0, 102.0, 99.0, 101.0, 5.0, 3600)
    raw = json.loads(kline())["data"]  # a raw (not combined) stream payload parses too
    assert feed.parse(json.dumps(raw)) == parsed
    bad = [b"\xff\xfe", "not json", "[1, 2]", '{"result": null, "id": 1}', kline(x=False),
           kline(i="4h"), kline(s="DOGEUSDT"), kline(h="98"), kline(o="abc"), kline(t="x"),
           json.dumps({"stream": "s", "data": {"e": "trade"}}), kline(t=1640995200001),
           kline(c="NaN")]
    assert [feed.parse(m) for m in bad] == [None] * len(bad)
    assert dict(feed.counters) == {"dropped_malformed": 9, "control_messages": 1,
                                   "open_klines": 1, "dropped_wrong_interval": 1,
                                   "dropped_unknown_symbol": 1}


# ---- the live feed against the emulator -----------------------------------------------------

def fast_cfg(emu: BinanceEmulator) -> ExchangeConfig:
    return ExchangeConfig(rest_url=emu.http_url, ws_url=emu.ws_url, timeout_s=1.0,
                          ccxt_rate_limit_ms=1,
                          stream=StreamConfig(bar_deadline_s=0.3, idle_timeout_s=0.4,
                                              ping_interval_s=2.0, reconnect_min_s=0.02,
                                              reconnect_max_s=0.2))


@pytest.fixture
async def emu() -> AsyncIterator[BinanceEmulator]:
    async with BinanceEmulator(SYMBOLS, SyntheticBars(SYMBOLS, seed=8), history_bars=20,
                               seed=5) as e:
        yield e


async def collect(feed: BinanceKlineFeed, emu: BinanceEmulator, n: int,
                  pace_s: float = 0.02, timeout: float = 30.0) -> list[list[Bar]]:
    """Advance the emulator while reading the feed, until `n` groups arrived."""
    out: list[list[Bar]] = []

    async def read() -> None:
        async for group in feed.bars():
            out.append(group)
            if len(out) >= n:
                return

    reader = asyncio.create_task(read())
    try:
        async with asyncio.timeout(timeout):
            while not (feed.counters["connects"] and (out or not feed.warmup_bars)):
                await asyncio.sleep(0.01)  # warm-up done and stream up: then move the market
            await asyncio.sleep(0.05)  # the emulator registers the new connection
            while not reader.done():
                await emu.advance()
                await asyncio.wait({reader}, timeout=pace_s)
        await reader
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await feed.close()
    return out


def emulator_bars(emu: BinanceEmulator, first: datetime, n: int) -> list[list[Bar]]:
    return [[b for s in SYMBOLS for b in emu.history.select(s.replace("/", ""), start, start)]
            for start in (int((first + i * H).timestamp() * 1000) for i in range(n))]


def as_bars(groups: list[list[Bar]]) -> list[list[tuple[Any, ...]]]:
    return [[(b.symbol, b.ts, b.open, b.high, b.low, b.close, b.volume) for b in g]
            for g in groups]


async def test_warmup_then_live_bars_equal_the_exchange(emu: BinanceEmulator) -> None:
    feed = BinanceKlineFeed(fast_cfg(emu), SYMBOLS, "1h", 3600, warmup_bars=5)
    groups = await collect(feed, emu, 15)
    first = groups[0][0].ts
    assert first == emu_history_start(emu) + 15 * H  # the newest 5 of 20 history bars
    assert as_bars(groups) == as_bars(emulator_bars(emu, first, 15))
    assert feed.stats()["warmup_bars"] == 10


def emu_history_start(emu: BinanceEmulator) -> datetime:
    oldest = emu.history.select("BTCUSDT", 0, None, 1)[0]
    return oldest.ts


async def test_faults_never_cause_holes_or_duplicates(emu: BinanceEmulator) -> None:
    emu.faults = FaultConfig(ws_disconnect=0.04, ws_stall=0.03, ws_stall_s=0.6,
                             ws_duplicate=0.1, ws_reorder=0.1, ws_reorder_flush_s=0.05)
    feed = BinanceKlineFeed(fast_cfg(emu), SYMBOLS, "1h", 3600, warmup_bars=1)
    groups = await collect(feed, emu, 120, timeout=45.0)
    injected = emu.faults_injected
    stats = feed.stats()
    print("faults injected:", injected, "\nfeed:", stats)
    ts = [g[0].ts for g in groups]
    assert ts == [ts[0] + i * H for i in range(len(ts))]  # contiguous: no hole, no repeat
    assert as_bars(groups) == as_bars(emulator_bars(emu, ts[0], len(groups)))
    assert injected.get("ws_disconnect", 0) + injected.get("ws_stall", 0) >= 1
    assert stats["reconnects"] >= 1 and stats.get("bars_backfilled", 0) >= 1
    if injected.get("ws_duplicate"):
        assert stats.get("dropped_stale", 0) + stats.get("dropped_duplicate", 0) >= 1


async def test_malformed_messages_and_rest_errors_are_survived(emu: BinanceEmulator) -> None:
    feed = BinanceKlineFeed(fast_cfg(emu), SYMBOLS, "1h", 3600)
    out: list[list[Bar]] = []

    async def read() -> None:
        async for group in feed.bars():
            out.append(group)

    reader = asyncio.create_task(read())
    try:
        async with asyncio.timeout(20):
            while feed.counters["connects"] < 1:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # let the emulator register the connection
            hub = emu._hub  # inject garbage into the live stream, as a broken proxy might
            hub.publish_market("btcusdt@kline_1h", {"e": "kline", "k": {"s": "BTCUSDT", "i": "1h",
                                                                 "x": True}})
            hub.publish_market("btcusdt@kline_1h", {"e": "kline", "k": "nonsense"})
            await emu.advance()
            while len(out) < 1:
                await asyncio.sleep(0.01)
            # the next bars' klines are lost and REST answers 5xx for a while: the gap is
            # filled once REST recovers
            emu.faults = FaultConfig(ws_disconnect=1.0)
            await emu.advance()
            emu.faults = FaultConfig(http_5xx=1.0, http_paths=("/api/v3/klines",))
            await emu.advance()
            while feed.counters.get("backfill_failures", 0) < 2:
                await asyncio.sleep(0.01)
            emu.faults = FaultConfig()
            await emu.advance()
            while len(out) < 4:
                await asyncio.sleep(0.01)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await feed.close()
    ts = [g[0].ts for g in out]
    assert ts == [ts[0] + i * H for i in range(4)] and all(len(g) == 2 for g in out)
    assert feed.counters["dropped_malformed"] == 2 and feed.stats()["bars_backfilled"] >= 2


async def test_feed_config_wiring(emu: BinanceEmulator) -> None:
    from daemon.app import build_feed
    from daemon.config import parse_config

    cfg = parse_config(f'[daemon]\nmode = "testnet"\n[market]\nsymbols = ["BTC/USDT"]\n'
                       f'[allocation]\nlookback_bars = 30\n[exchange]\nws_url = "{emu.ws_url}"\n')
    feed = build_feed(cfg)
    assert isinstance(feed, BinanceKlineFeed) and feed.warmup_bars == 31
    cfg = replace(cfg, exchange=replace(cfg.exchange, stream=StreamConfig(warmup_bars=0)))
    assert build_feed(cfg).warmup_bars == 0  # type: ignore[attr-defined]


async def test_catchup_racing_a_close_does_not_release_a_partial_group(
        emu: BinanceEmulator) -> None:
    """The catch-up after a (re)connect asks REST for each symbol in turn. When a timestamp
    closes between two of those requests, the first symbol's reply is empty and the others
    hold the new bar: that timestamp is not confirmed for the first symbol (its kline is on the
    stream, or REST has it now), so it must not go out without it."""
    feed = BinanceKlineFeed(fast_cfg(emu), SYMBOLS, "1h", 3600, warmup_bars=2)
    fetch = feed._ohlcv
    raced: list[list[Bar]] = []

    async def racing(symbol: str, since: datetime | None, until: datetime | None,
                     limit: int) -> list[Bar]:
        out = await fetch(symbol, since, until, limit)
        if since is not None and until is None and not raced:
            raced.append(out)  # nothing closed since the warm-up: an empty reply
            await emu.advance()  # the next hour closes before the next symbol is asked
        return out

    feed._ohlcv = racing  # type: ignore[method-assign]
    groups: list[list[Bar]] = []
    try:
        async with asyncio.timeout(20):
            async for group in feed.bars():
                groups.append(group)
                if len(groups) == 3:  # 2 warm-up groups, then the hour that closed mid-catch-up
                    break
    finally:
        await feed.close()
    assert raced == [[]]
    first = groups[0][0].ts
    assert stamps(groups) == [stamps(groups)[0] + i for i in range(3)]
    assert as_bars(groups) == as_bars(emulator_bars(emu, first, 3))  # complete, as on REST
    assert feed.stats().get("partial_groups", 0) == 0


def test_rest_bars_past_the_confirmed_range_wait_for_the_stream_then_rest() -> None:
    """A catch-up reply can hold a bar of one symbol past what REST confirmed for all: it waits
    for the others' klines like a streamed bar, and past the deadline their stragglers are
    asked for, never released incomplete on its own or held forever."""
    asm = BarAssembler(SYMBOLS, 3600, deadline_s=5.0)
    for s in SYMBOLS:
        asm.add_stream(bar(s, 0), now=0.0)
    asm.pop_ready()
    asm.add_rest([bar("ETH/USDT", 1)], covered_until=T0, now=1.0)
    assert asm.pop_ready() == []
    assert asm.overdue(now=5.9) == [] and asm.overdue(now=6.0) == [(T0 + H, ["BTC/USDT"])]
    asm.add_stream(bar("BTC/USDT", 1), now=2.0)
    (group,) = asm.pop_ready()
    assert [b.symbol for b in group] == SYMBOLS
