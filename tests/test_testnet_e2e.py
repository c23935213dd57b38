"""The daemon in testnet mode (ccxt venue + websocket klines + user data stream) against the
Binance emulator with faults injected on every layer, for 500+ bars of rebalancing. At the end
the journal, the portfolio and the emulator's own books must agree to the last decimal.

Faults (seeded): HTTP 429 with Retry-After, 5xx gateway pages, held requests (client timeouts),
order responses lost after the order was accepted, websocket disconnects and stalls, duplicated
and reordered stream messages. The emulator behaves like Binance on client order ids: a
finished order's id may be reused, so only the daemon's own care prevents double orders.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.binance_emulator import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    BinanceEmulator,
    FaultConfig,
    SyntheticBars,
)
from adapters.binance_ws import BinanceKlineFeed
from adapters.ccxt_venue import CcxtVenue
from daemon.app import Daemon, build_feed
from daemon.config import parse_config
from daemon.events import Bar, Side

SYMBOLS = ["BTC/USDT", "ETH/USDT", "BNB/USDT"]
LIVE_BARS = 500
LOOKBACK = 48
CASH = 100_000.0

CONFIG = """
[daemon]
mode = "testnet"
state_dir = "{state}"
log_level = "error"
[market]
symbols = {symbols}
interval = "1h"
[rebalance]
band = 0.02
solver = "thread"
[allocation]
lookback_bars = {lookback}
max_weight = 0.5
[risk]
max_volume_share = 1.0          # the synthetic market's volumes are small
[risk.throttle]
orders_per_minute = 5000        # 500 hourly bars pass in well under a minute here
symbol_orders_per_minute = 2000
[exchange]
rest_url = "{rest}"
ws_url = "{ws}"
timeout_s = 0.5                 # the emulator holds "timed out" requests for 1 s
ccxt_rate_limit_ms = 1          # loopback: ccxt's spacing for binance.com would take minutes
max_requests_per_s = 500
burst = 50
fills_poll_s = 0.2
fills_audit_s = 0.5
[exchange.stream]
bar_deadline_s = 0.3
idle_timeout_s = 0.5            # bars come every few ms: half a second of silence is a stall
ping_interval_s = 5.0
reconnect_min_s = 0.05
reconnect_max_s = 0.3
# a loaded CI machine can stretch replies past the 0.5 s timeout several times in a row; give
# REST enough tries that recovery, not luck, decides whether a bar group is complete
backfill_attempts = 40
"""

FAULTS = FaultConfig(http_429=0.01, http_5xx=0.02, http_timeout=0.01, timeout_hold_s=1.0,
                     response_lost=0.25, ws_disconnect=0.004, ws_stall=0.003, ws_stall_s=1.0,
                     ws_duplicate=0.02, ws_reorder=0.02, ws_reorder_flush_s=0.05,
                     retry_after_s=1)


# Random faults depend on how many requests and messages a run makes, which depends on timing;
# each kind is also forced once at a fixed bar, so every run exercises every recovery path.
FORCED = {40: "http_429", 80: "http_5xx", 120: "http_timeout", 160: "ws_disconnect",
          200: "ws_stall", 240: "ws_duplicate", 280: "ws_reorder"}


async def force(emu: BinanceEmulator, kind: str) -> None:
    """Make fault `kind` certain until it has fired once, then go back to `FAULTS`."""
    before = emu.faults_injected.get(kind, 0)
    emu.faults = replace(FAULTS, **{kind: 1.0})
    if kind.startswith("ws_"):
        await emu.advance()  # stream faults act on the next message sent
    await wait_for(lambda: emu.faults_injected.get(kind, 0) > before, 5.0)
    emu.faults = FAULTS


class RecordingFeed:
    """The daemon's feed, remembering every bar it handed over."""

    def __init__(self, inner: BinanceKlineFeed) -> None:
        self.inner = inner
        self.symbols, self.interval_s = inner.symbols, inner.interval_s
        self.lockstep = inner.lockstep
        self.seen: list[list[Bar]] = []

    async def bars(self) -> AsyncIterator[list[Bar]]:
        async for group in self.inner.bars():
            self.seen.append(group)
            yield group

    async def close(self) -> None:
        await self.inner.close()


async def wait_for(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


@pytest.mark.slow
async def test_testnet_mode_survives_faults_and_books_agree(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TRADINGD_API_KEY", DEFAULT_API_KEY)
    monkeypatch.setenv("TRADINGD_API_SECRET", DEFAULT_API_SECRET)
    started = time.monotonic()
    emu = BinanceEmulator(SYMBOLS, SyntheticBars(SYMBOLS, seed=21), balances={"USDT": CASH},
                          history_bars=LOOKBACK + 10, seed=7, unique_client_order_ids=False)
    async with emu:
        cfg = parse_config(CONFIG.format(state=tmp_path / "state", symbols=SYMBOLS,
                                         lookback=LOOKBACK, rest=emu.http_url, ws=emu.ws_url))
        feed = RecordingFeed(build_feed(cfg))  # type: ignore[arg-type]
        daemon = Daemon(cfg, feed=feed)
        venue = daemon.venue
        assert isinstance(venue, CcxtVenue)
        stop = asyncio.Event()
        run = asyncio.create_task(daemon.run(stop=stop))

        # warm-up: the newest lookback+1 bars over REST, then the live stream
        assert await wait_for(lambda: daemon.timestamps >= LOOKBACK + 1, 20), "no warm-up"
        assert await wait_for(lambda: venue.user_stream is not None and venue.user_stream.live,
                              5)
        # the default user stream (WebSocket API subscription) has no listen key to leak
        stream_secrets = venue.user_stream.secrets()  # type: ignore[union-attr]
        assert venue.user_stream.cfg.user_stream_api == "ws_api"  # type: ignore[union-attr]
        emu.faults = FAULTS
        for i in range(1, LIVE_BARS + 1):
            if i in FORCED:
                await force(emu, FORCED[i])
            await emu.advance()
            # keep at most 3 bars ahead of the daemon; a stalled stream shows up as a lag
            # that the idle timeout and the backfill must close
            await wait_for(lambda i=i: daemon.timestamps >= LOOKBACK + 1 + i - 3, 3.0)
        injected = emu.faults_injected
        emu.faults = FaultConfig()  # quiet network: now everything must settle and agree

        assert await wait_for(lambda: daemon.timestamps >= LOOKBACK + 1 + LIVE_BARS, 15), \
            f"bars stuck at {daemon.timestamps}"
        for _ in range(3):  # until nothing moves: solves, sends, resolutions, fills
            await daemon.bus.settle()
            assert await wait_for(lambda: not daemon.oms.working() and not daemon.oms.busy(),
                                  20), [o.client_order_id for o in daemon.oms.working()]
            await venue.poll_trades()
        await daemon.bus.settle()
        portfolio_cash = daemon.portfolio.cash
        positions = dict(daemon.portfolio.positions)
        oms_stats = dict(daemon.oms.stats)
        venue_stats, feed_stats = venue.stats(), feed.inner.stats()
        stop.set()
        summary = await asyncio.wait_for(run, 30)
        emu_balances = {a: b.total for a, b in emu.balances().items()}
        emu_trades = {str(t.trade_id): t for t in emu.trades()}
        emu_orders = emu.orders()
    elapsed = time.monotonic() - started

    from daemon.journal import Journal

    journal = Journal(cfg.state_path / "journal.sqlite")
    fills = journal.fills()
    orders = journal.orders()
    resolutions = [detail for o in orders for _, kind, detail in
                   journal.order_events(o.client_order_id) if kind == "RESOLVED"]
    journal.close()

    recovered = {
        "http_429": f"{venue_stats.get('ccxt_DDoSProtection', 0)} venue + "
                    f"{feed_stats.get('rest_DDoSProtection', 0)} feed DDoSProtection, "
                    f"{venue_stats['throttle_pauses']} Retry-After pauses",
        "http_5xx": f"{venue_stats.get('ccxt_ExchangeNotAvailable', 0)} venue + "
                    f"{feed_stats.get('rest_ExchangeNotAvailable', 0)} feed "
                    "ExchangeNotAvailable retried",
        "http_timeout": f"{venue_stats.get('ccxt_RequestTimeout', 0)} venue + "
                        f"{feed_stats.get('rest_RequestTimeout', 0)} feed RequestTimeout",
        "response_lost": f"{sum(r['outcome'] == 'found' for r in resolutions)} UNKNOWN orders "
                         f"found by client order id, "
                         f"{sum(r['outcome'] == 'not_found' for r in resolutions)} proven "
                         f"unsent and resent ({oms_stats.get('resent', 0)})",
        "ws_disconnect": f"{feed_stats.get('reconnects', 0)} kline reconnects, "
                         f"{venue_stats.get('user_stream_reconnects', 0)} user-stream",
        "ws_stall": f"{feed_stats.get('idle_timeouts', 0)} idle timeouts; "
                    f"{feed_stats.get('bars_backfilled', 0)} bars backfilled over REST",
        "ws_duplicate": f"{feed_stats.get('dropped_duplicate', 0)} + "
                        f"{feed_stats.get('dropped_stale', 0)} kline copies dropped, "
                        f"{venue_stats.get('trades_already_reported', 0)} fill reports "
                        "deduplicated",
        "ws_reorder": f"{feed_stats.get('out_of_order', 0)} klines placed out of order",
    }
    # no key, secret or listen key in anything logged or printed during the run
    logged = capsys.readouterr()
    leaked = [name for name, secret in (("api key", DEFAULT_API_KEY),
                                        ("api secret", DEFAULT_API_SECRET),
                                        *(("stream secret", k) for k in stream_secrets))
              if secret in logged.out + logged.err]
    with capsys.disabled():  # the table is the point of this test: always show it
        print(f"\n{'fault':<15} {'injected':>8}  recovered")
        for kind in ("http_429", "http_5xx", "http_timeout", "response_lost", "ws_disconnect",
                     "ws_stall", "ws_duplicate", "ws_reorder"):
            print(f"{kind:<15} {injected.get(kind, 0):>8}  {recovered[kind]}")
        print(f"bars {summary.bars_per_symbol}, rebalances {summary.rebalances}, orders "
              f"{len(orders)}, fills {len(fills)}, venue rejections "
              f"{summary.venue_rejections}, elapsed {elapsed:.1f} s")
        print("feed:", feed_stats)
        print("venue:", venue_stats)
        print("oms:", oms_stats)
    assert not leaked, f"{leaked} appeared in the log"

    # every fault kind happened; lost responses were resolved by asking for the client id
    for kind in recovered:
        assert injected.get(kind, 0) >= 1, f"{kind} never injected: {injected}"
    assert sum(r["outcome"] == "found" for r in resolutions) >= 1
    # the daemon traded through it
    assert summary.bars_per_symbol >= LOOKBACK + 1 + LIVE_BARS
    assert summary.rebalances >= 3 and len(fills) >= 10
    assert summary.handler_errors == 0

    # market data: every bar exactly once, in order, equal to the exchange's
    seen = feed.seen
    stamps = [g[0].ts for g in seen]
    assert stamps == [stamps[0] + i * timedelta(hours=1) for i in range(len(stamps))]
    assert all(len(g) == len(SYMBOLS) for g in seen)
    last_ms = int(stamps[-1].timestamp() * 1000)
    for group in seen[-LIVE_BARS:]:
        for bar in group:
            (ref,) = emu.history.select(bar.symbol.replace("/", ""), int(bar.ts.timestamp()
                                                                         * 1000), last_ms, 1)
            assert (bar.open, bar.high, bar.low, bar.close) == (ref.open, ref.high, ref.low,
                                                                 ref.close)

    # orders: one exchange order per client id, all journaled, all finished
    client_ids = [o.client_order_id for o in emu_orders]
    assert len(client_ids) == len(set(client_ids)), "an order was sent twice"
    journaled = {o.client_order_id: o for o in orders}
    assert set(client_ids) <= set(journaled)
    for o in orders:
        assert o.state in ("FILLED", "REJECTED", "CANCELLED", "EXPIRED"), o
        assert sum(f.quantity for f in fills if f.client_order_id == o.client_order_id) == \
            pytest.approx(o.filled, abs=1e-12)

    # fills: the journal holds exactly the exchange's trades
    assert {f.trade_id for f in fills} == set(emu_trades)
    for f in fills:
        t = emu_trades[f.trade_id]
        assert (f.client_order_id, f.side.value, f.quantity, f.price) == (
            t.client_order_id, t.side.lower(), t.qty, t.price)
        assert f.fee == pytest.approx(t.fee, abs=1e-9)

    # books: journal (recomputed independently) == portfolio == exchange
    cash, held = CASH, {}
    for f in fills:
        signed = f.quantity if f.side is Side.BUY else -f.quantity
        held[f.symbol] = held.get(f.symbol, 0.0) + signed
        cash -= signed * f.price + f.fee
    assert portfolio_cash == pytest.approx(cash, abs=1e-6)
    assert emu_balances["USDT"] == pytest.approx(cash, abs=1e-6)
    for symbol in SYMBOLS:
        base = symbol.split("/")[0]
        assert positions.get(symbol, 0.0) == pytest.approx(held.get(symbol, 0.0), abs=1e-9)
        assert emu_balances.get(base, 0.0) == pytest.approx(held.get(symbol, 0.0), abs=1e-9)
    assert isinstance(stamps[0], datetime)


async def test_emulator_command_serves_the_example_config(tmp_path: Path) -> None:
    """`tradingd emulator` in a subprocess, reached as config.testnet-emulator.toml would."""
    import os
    import re
    import signal
    import sys

    from daemon.config import load_config

    example = load_config(Path(__file__).parent.parent / "config.testnet-emulator.toml")
    assert example.daemon.mode == "testnet"
    assert (example.exchange.rest_url, example.exchange.ws_url) == (
        "http://127.0.0.1:8765", "ws://127.0.0.1:8766")  # the command's default ports

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon.cli", "emulator", "--port", "0", "--ws-port", "0",
        "--bar-period", "0", "--symbols", "BTC/USDT", "ETH/USDT", "--cash", "5000",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent)
    assert proc.stdout is not None
    try:
        text = ""
        async with asyncio.timeout(30):
            while "tradingd run" not in text:
                line = await proc.stdout.readline()
                assert line, (await proc.stderr.read()).decode()  # type: ignore[union-attr]
                text += line.decode()
        rest = re.search(r"REST\s+(\S+)", text).group(1)  # type: ignore[union-attr]
        ws = re.search(r"websocket\s+(\S+)", text).group(1)  # type: ignore[union-attr]
        keys = dict(re.findall(r"export (TRADINGD_API_\w+)=(\S+)", text))
        venue = CcxtVenue(replace(example.exchange, rest_url=rest, ws_url=ws),
                          ["BTC/USDT", "ETH/USDT"], "USDT", environ=keys)
        await venue.start()
        try:
            assert await venue.balances() == {"USDT": 5000.0}
            assert set(venue.markets()) == {"BTC/USDT", "ETH/USDT"}
        finally:
            await venue.close()
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0 and b"stopped" in out
