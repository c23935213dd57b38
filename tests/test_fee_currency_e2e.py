"""Binance's default fee asset end to end: the emulator charges the asset received (a buy pays
BTC, a sell pays USDT), unmodified ccxt talks to it over loopback, and the daemon in testnet
mode trades, reconciles periodically and must end with journal, portfolio and exchange agreeing
per asset, without a reconciliation halt."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapters.binance_emulator import BinanceEmulator, FaultConfig, SyntheticBars
from adapters.binance_user_stream import parse_execution_report
from adapters.ccxt_venue import CcxtVenue
from adapters.venue import VenueTrade
from daemon.app import Daemon
from daemon.config import parse_config
from daemon.events import Side
from daemon.journal import Journal
from tests.test_ccxt_venue import KEYS, Recorder, exchange_cfg, market, until
from tests.test_testnet_e2e import CONFIG, wait_for

SYMBOLS = ["BTC/USDT", "ETH/USDT", "BNB/USDT"]
LOOKBACK = 48
LIVE_BARS = 300
CASH = 100_000.0
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture
async def emu() -> AsyncIterator[BinanceEmulator]:
    async with BinanceEmulator(["BTC/USDT", "ETH/USDT"],
                               SyntheticBars(["BTC/USDT", "ETH/USDT"], seed=4), history_bars=10,
                               balances={"USDT": 10_000.0}, seed=2,
                               fee_asset="received") as e:
        yield e


async def test_emulator_charges_the_asset_received_and_ccxt_venue_passes_it_on(
        emu: BinanceEmulator) -> None:
    reports: list[VenueTrade] = []

    def on_user_event(msg: dict[str, object]) -> None:
        if msg.get("e") == "executionReport" and msg.get("x") == "TRADE":
            trade = parse_execution_report(msg, {"BTCUSDT": "BTC/USDT"}.get).trade  # type: ignore[arg-type]
            assert trade is not None
            reports.append(trade)

    emu.engine.subscribe(on_user_event)
    venue = CcxtVenue(exchange_cfg(emu), ["BTC/USDT", "ETH/USDT"], "USDT", environ=KEYS)
    await venue.start()
    try:
        rec = Recorder(venue)
        assert venue.taker_fee_rate() == pytest.approx(0.001)
        await venue.submit(market("td-1-btc", 0.01))
        await venue.submit(market("td-2-btc", 0.004, Side.SELL))
        await until(lambda: len(rec.trades) == 2)
        buy, sell = emu.trades()
        assert (buy.fee_asset, sell.fee_asset) == ("BTC", "USDT")
        assert buy.fee == pytest.approx(0.01 * 0.001, abs=1e-12)
        balances = await venue.balances()
        assert balances["BTC"] == pytest.approx(0.01 - buy.fee - 0.004, abs=1e-12)
        assert balances["USDT"] == pytest.approx(10_000.0 - 0.01 * buy.price
                                                 + 0.004 * sell.price - sell.fee, abs=1e-9)
        # the order reply (FULL fills), REST myTrades and the user stream all say the same
        rest = {t.trade_id: t for t in await venue.trades_since(EPOCH)}
        for seen in (rec.trades, list(rest.values()), reports):
            assert [(t.fee, t.fee_currency) for t in sorted(seen, key=lambda t: t.trade_id)] == [
                (buy.fee, "BTC"), (sell.fee, "USDT")]
        assert venue.counters["fees_in_base"] >= 1
    finally:
        await venue.close()


@pytest.mark.slow
async def test_testnet_mode_with_received_asset_fees_books_agree_per_asset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    emu = BinanceEmulator(SYMBOLS, SyntheticBars(SYMBOLS, seed=21), balances={"USDT": CASH},
                          history_bars=LOOKBACK + 10, seed=7, unique_client_order_ids=False,
                          fee_asset="received")
    # a little trouble on the way (lost order replies, duplicated stream messages) so that
    # fills also arrive by REST query, not only by the order reply and the stream
    faults = FaultConfig(response_lost=0.1, ws_duplicate=0.02)
    async with emu:
        text = CONFIG.format(state=tmp_path / "state", symbols=SYMBOLS, lookback=LOOKBACK,
                             rest=emu.http_url, ws=emu.ws_url)
        # reconcile against the exchange every half second while trading: a base fee booked
        # as quote would be a lot off and halt trading at the first periodic pass. Hundreds of
        # bars a second make the gate's rejection storm limit (20 a minute: duplicate-order
        # refusals of completion legs, whatever the fee asset) a halt of its own: raised here
        cfg = parse_config(text + "[oms]\nreconcile_interval_s = 0.5\n"
                                  "[risk.state]\nmax_rejections = 100000\n")
        daemon = Daemon(cfg)
        assert daemon.rebalancer.fee_rate == pytest.approx(0.001)  # [exchange] fee_bps default
        venue = daemon.venue
        assert isinstance(venue, CcxtVenue)
        stop = asyncio.Event()
        run = asyncio.create_task(daemon.run(stop=stop))
        assert await wait_for(lambda: daemon.timestamps >= LOOKBACK + 1, 20), "no warm-up"
        assert daemon.rebalancer.fee_rate == pytest.approx(0.001)  # ccxt's taker, after start
        emu.faults = faults
        for i in range(1, LIVE_BARS + 1):
            await emu.advance()
            await wait_for(lambda i=i: daemon.timestamps >= LOOKBACK + 1 + i - 3, 3.0)
            if i % 40 == 0:
                await asyncio.sleep(0.6)  # let a periodic reconciliation run mid-trading
        emu.faults = FaultConfig()
        assert await wait_for(lambda: daemon.timestamps >= LOOKBACK + 1 + LIVE_BARS, 15)
        for _ in range(3):
            await daemon.bus.settle()
            assert await wait_for(lambda: not daemon.oms.working() and not daemon.oms.busy(),
                                  20), [o.client_order_id for o in daemon.oms.working()]
            await venue.poll_trades()
        await daemon.bus.settle()
        final = await daemon.reconciler.reconcile("periodic")
        portfolio = daemon.portfolio
        cash, positions = portfolio.cash, dict(portfolio.positions)
        fee_balances = dict(portfolio.fee_balances)
        halted = daemon.oms.halted_reason
        stop.set()
        await asyncio.wait_for(run, 30)
        emu_balances = {a: b.total for a, b in emu.balances().items()}
        emu_trades = {str(t.trade_id): t for t in emu.trades()}

    journal = Journal(cfg.state_path / "journal.sqlite")
    fills = journal.fills(oldest_first=True)
    reconciliations = journal.reconciliations(limit=10_000)
    journal.close()

    assert final.ok, final.describe()
    assert halted is None, halted
    periodic = [r for r in reconciliations if r[1] == "periodic"]
    assert len(periodic) >= 4 and all(ok for _, _, ok, _ in reconciliations), \
        [r[3] for r in reconciliations if not r[2]]

    # the journal holds the exchange's trades with their fees exactly as charged
    assert {f.trade_id for f in fills} == set(emu_trades)
    for f in fills:
        t = emu_trades[f.trade_id]
        assert (f.fee, f.fee_currency) == (t.fee, t.fee_asset)
        assert f.fee_currency == (f.symbol.split("/")[0] if f.side is Side.BUY else "USDT")
    assert any(f.side is Side.BUY for f in fills) and any(f.side is Side.SELL for f in fills)

    # per asset, to 1e-9: journal (recomputed here) == portfolio == exchange
    expected = {"USDT": CASH}
    for f in fills:
        base = f.symbol.split("/")[0]
        signed = f.quantity if f.side is Side.BUY else -f.quantity
        expected[base] = expected.get(base, 0.0) + signed
        expected["USDT"] -= signed * f.price
        expected[f.fee_currency] -= f.fee
    assert cash == pytest.approx(expected["USDT"], abs=1e-9)
    assert emu_balances["USDT"] == pytest.approx(expected["USDT"], abs=1e-9)
    for symbol in SYMBOLS:
        base = symbol.split("/")[0]
        assert positions.get(symbol, 0.0) == pytest.approx(expected.get(base, 0.0), abs=1e-9)
        assert emu_balances.get(base, 0.0) == pytest.approx(expected.get(base, 0.0), abs=1e-9)
    assert fee_balances == {}  # every fee was in a traded asset
    print(f"\nfills {len(fills)} ({sum(f.side is Side.BUY for f in fills)} paying base fees), "
          f"reconciliations {len(reconciliations)}, elapsed {time.monotonic() - started:.1f} s")
