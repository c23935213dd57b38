"""The emulator's pieces without ccxt: matching and fees, auth, bar sources, persistence."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.binance_emulator import BinanceEmulator, CsvBars, run_emulator
from adapters.binance_emulator.auth import Credentials, sign
from adapters.binance_emulator.errors import BinanceError
from adapters.binance_emulator.matching import NewOrder
from daemon.events import Bar

T0 = datetime(2022, 1, 1, tzinfo=UTC)
D = Decimal


class ListBars:
    """Hand-written bars: (open, high, low, close) per hour for one symbol."""

    def __init__(self, rows: list[tuple[float, float, float, float]],
                 symbol: str = "BTC/USDT") -> None:
        self.symbols, self.interval_s = [symbol], 3600
        self.rows = rows

    def __iter__(self) -> Iterator[list[Bar]]:
        for i, (o, h, low, c) in enumerate(self.rows):
            yield [Bar(self.symbols[0], T0 + timedelta(hours=i), o, h, low, c, 10.0)]


def make(rows: list[tuple[float, float, float, float]], **kw: Any) -> BinanceEmulator:
    kw.setdefault("balances", {"USDT": 10_000.0, "BTC": 1.0})
    return BinanceEmulator(["BTC/USDT"], ListBars(rows), history_bars=1, **kw)


def buy(qty: str, price: str | None = None, type: str | None = None, tif: str | None = None,
        client_order_id: str | None = None) -> NewOrder:
    return NewOrder("BTCUSDT", "BUY", type or ("LIMIT" if price else "MARKET"), D(qty),
                    price=D(price) if price else None,
                    time_in_force=tif if tif is not None else ("GTC" if price else None),
                    client_order_id=client_order_id)


def test_hmac_signature_matches_binance_documented_example() -> None:
    payload = ("symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
               "&recvWindow=5000&timestamp=1499827319559")
    secret = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
    assert sign(payload, secret) == \
        "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"


def test_signed_request_checks() -> None:
    creds = Credentials("K" * 64, "s" * 64)
    headers = {"X-MBX-APIKEY": "K" * 64}
    now = 1_700_000_000_000

    def check(ts: int, recv: str = "5000", tamper: bool = False) -> None:
        query = f"symbol=BTCUSDT&recvWindow={recv}&timestamp={ts}"
        sig = sign(query, creds.api_secret).upper()  # HMAC signatures are case-insensitive
        signed_query = f"{query}&signature={sig}"
        params = dict(p.split("=") for p in signed_query.split("&"))
        creds.check_signed(headers, signed_query.replace("BTC", "ETH") if tamper
                           else signed_query, "", params, now_ms=now)

    check(now - 4000)
    for ts, recv, tamper, code in ((now - 6000, "5000", False, -1021),
                                   (now + 1500, "5000", False, -1021),
                                   (now, "70000", False, -1131),
                                   (now, "5000", True, -1022)):
        with pytest.raises(BinanceError) as err:
            check(ts, recv, tamper)
        assert err.value.code == code


async def test_market_order_fee_in_quote_and_slippage() -> None:
    emu = make([(100, 101, 99, 100)], slippage_bps=50)
    order, fills = emu.engine.place(buy("2"))
    assert (fills[0].price, fills[0].qty) == (D("100.5"), D(2))  # 100 moved 50 bps
    assert fills[0].commission == D("0.201") and fills[0].commission_asset == "USDT"
    acct = emu.engine.account
    assert acct.free["USDT"] == D(10_000) - D("201") - D("0.201")
    assert acct.free["BTC"] == D(3)  # exactly the ordered quantity: no fee dust
    _, fills = emu.engine.place(NewOrder("BTCUSDT", "SELL", "MARKET", D(1)))
    assert fills[0].price == D("99.5")
    assert order.status == "FILLED"


async def test_resting_limit_locks_then_fills_at_its_price_when_crossed() -> None:
    emu = make([(100, 101, 99, 100), (100, 100.5, 99.5, 100), (98, 98.5, 97, 98)])
    acct = emu.engine.account
    order, fills = emu.engine.place(buy("10", "99"))
    assert fills == [] and order.status == "NEW"
    assert acct.locked["USDT"] == D("990") + D("0.99")  # price * qty plus the fee
    await emu.advance()  # low 99.5: not crossed
    assert order.status == "NEW"
    await emu.advance()  # opens at 98, through the limit: a maker gets its own price
    assert order.status == "FILLED"
    trade = emu.trades()[0]
    assert (trade.price, trade.is_maker, trade.time) == (99.0, True, T0 + timedelta(hours=3))
    assert acct.locked["USDT"] == 0 and acct.free["USDT"] == D(10_000) - D("990.99")


async def test_marketable_limit_takes_at_market_and_refunds_the_difference() -> None:
    emu = make([(100, 101, 99, 100)])
    _, fills = emu.engine.place(buy("1", "105"))
    assert fills[0].price == D(100) and not fills[0].is_maker
    acct = emu.engine.account
    assert acct.locked["USDT"] == 0 and acct.free["USDT"] == D(10_000) - D("100.1")


async def test_ioc_expires_and_limit_maker_refuses_to_take() -> None:
    emu = make([(100, 101, 99, 100)])
    order, _ = emu.engine.place(buy("1", "90", tif="IOC"))
    assert order.status == "EXPIRED" and emu.engine.account.locked["USDT"] == 0
    with pytest.raises(BinanceError, match="immediately match"):
        emu.engine.place(buy("1", "101", type="LIMIT_MAKER"))


async def test_client_ids_unique_forever_or_only_while_open() -> None:
    strict = make([(100, 101, 99, 100)])
    strict.engine.place(buy("1", client_order_id="x"))
    with pytest.raises(BinanceError, match="Duplicate"):
        strict.engine.place(buy("1", client_order_id="x"))
    # Binance itself only refuses an id in use by an *open* order.
    lax = make([(100, 101, 99, 100)], unique_client_order_ids=False)
    lax.engine.place(buy("1", "90", client_order_id="y"))
    with pytest.raises(BinanceError, match="Duplicate"):
        lax.engine.place(buy("1", "90", client_order_id="y"))
    lax.engine.cancel("BTCUSDT", None, "y")
    second, _ = lax.engine.place(buy("1", "90", client_order_id="y"))
    assert lax.engine.lookup("BTCUSDT", None, "y") is second  # the newest one wins


async def test_snapshot_restore_round_trip() -> None:
    rows = [(100, 101, 99, 100), (100, 100.5, 98, 99), (99, 100, 98, 99.5)]
    emu = make(rows)
    emu.engine.place(buy("1", "98.5", client_order_id="a"))
    await emu.advance()
    emu.engine.place(buy("1", "90", client_order_id="b"))
    state = emu.snapshot()
    fresh = make(rows)
    fresh.restore(state)
    assert fresh.balances() == emu.balances() and fresh.orders() == emu.orders()
    assert fresh.trades() == emu.trades() and fresh.clock == emu.clock
    assert [b.close for b in await fresh.advance()] == [99.5]


async def test_csv_listing_and_maintenance_gaps(shared_data: Path) -> None:
    symbols = ["BTC/USDT", "SOL/USDT"]  # SOL lists on 2020-08-11

    def source() -> CsvBars:
        return CsvBars(shared_data / "binance-spot" / "1h", symbols, "1h",
                       start=datetime(2020, 8, 1, tzinfo=UTC),
                       end=datetime(2020, 12, 1, tzinfo=UTC))
    sections = list(source())
    assert [b.symbol for b in sections[0]] == ["BTC/USDT"]  # before the listing
    assert [b.symbol for b in sections[-1]] == symbols
    stamps = [bars[0].ts for bars in sections]
    gap = (datetime(2020, 11, 30, 5, tzinfo=UTC), datetime(2020, 11, 30, 7, tzinfo=UTC))
    assert gap in list(pairwise(stamps))  # an exchange-wide outage
    with pytest.raises(ValueError, match="SOL/USDT has no bar"):
        BinanceEmulator(symbols, source(), history_bars=10)
    emu = BinanceEmulator(symbols, source(), history_bars=300)
    assert set(emu.engine.specs) == {"BTCUSDT", "SOLUSDT"}


async def test_run_emulator_serves_until_cancelled(shared_data: Path) -> None:
    ready: asyncio.Queue[BinanceEmulator] = asyncio.Queue()
    task = asyncio.create_task(run_emulator(
        data_dir=shared_data, symbols=["ETH/USDT"], interval="1d", bar_period_s=None,
        start=datetime(2021, 1, 1, tzinfo=UTC), history_bars=5, on_ready=ready.put_nowait))
    try:
        emu = await asyncio.wait_for(ready.get(), 5)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{emu.http_url}/api/v3/ping") as r:
                assert r.status == 200 and await r.json() == {}
            async with http.post(f"{emu.http_url}/_emulator/advance?n=2") as r:
                body = await r.json()
        assert len(body["closed"]) == 2 and emu.clock == datetime(2021, 1, 8, tzinfo=UTC)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_timer_mode_closes_bars_on_its_own() -> None:
    rows = [(100.0, 101.0, 99.0, 100.0)] * 50
    async with make(rows, bar_period_s=0.02) as emu:
        start = emu.clock
        await asyncio.sleep(0.3)
        assert emu.clock - start >= timedelta(hours=5)
