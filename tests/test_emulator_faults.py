"""Seeded fault injection, seen through ccxt and the websockets client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import ccxt.async_support as ccxt
import pytest
import websockets
from ccxt.base.errors import (
    DDoSProtection,
    InvalidOrder,
    NetworkError,
    RateLimitExceeded,
    RequestTimeout,
)
from websockets.exceptions import ConnectionClosedError

from adapters.binance_emulator import BinanceEmulator, FaultConfig, SyntheticBars, configure_ccxt
from adapters.binance_emulator.faults import FaultInjector

SYMBOLS = ["BTC/USDT"]


@pytest.fixture
async def emu() -> AsyncIterator[BinanceEmulator]:
    async with BinanceEmulator(SYMBOLS, SyntheticBars(SYMBOLS, seed=3), seed=11,
                               history_bars=5) as e:
        yield e
    print("faults injected:", e.faults_injected)


@pytest.fixture
async def ex(emu: BinanceEmulator) -> AsyncIterator[ccxt.binance]:
    exchange = configure_ccxt(ccxt.binance({"enableRateLimit": False}), emu)
    await exchange.load_markets()
    yield exchange
    await exchange.close()


async def test_429_and_418_with_retry_after(ex: ccxt.binance, emu: BinanceEmulator) -> None:
    emu.faults = FaultConfig(http_429=1.0, retry_after_s=7)
    with pytest.raises(DDoSProtection, match="-1003"):
        await ex.fetch_balance()
    async with aiohttp.ClientSession() as http, http.get(f"{emu.http_url}/api/v3/ping") as r:
        assert r.status == 429 and r.headers["Retry-After"] == "7"
        assert (await r.json())["code"] == -1003
    emu.faults = FaultConfig(http_418=1.0)
    with pytest.raises(DDoSProtection, match="418"):
        await ex.fetch_ticker("BTC/USDT")
    emu.faults = FaultConfig()
    await ex.fetch_balance()
    assert emu.faults_injected == {"http_429": 2, "http_418": 1}
    # ccxt's binance raises DDoSProtection for any 418/429 before reading the -1003 code;
    # RateLimitExceeded (its own throttle, or -1003 on a 4xx) is a sibling, not a subclass:
    # a retry policy must catch both.
    assert not issubclass(RateLimitExceeded, DDoSProtection)
    assert issubclass(RateLimitExceeded, NetworkError) and issubclass(DDoSProtection, NetworkError)


async def test_gateway_errors_are_network_errors(ex: ccxt.binance, emu: BinanceEmulator) -> None:
    emu.faults = FaultConfig(http_5xx=1.0)
    for _ in range(4):
        with pytest.raises(NetworkError):  # ExchangeNotAvailable: HTML body, no JSON code
            await ex.fetch_balance()
    assert emu.faults_injected == {"http_5xx": 4}


async def test_timeout_holds_request_and_does_not_process_it(ex: ccxt.binance,
                                                             emu: BinanceEmulator) -> None:
    ex.timeout = 300  # ms
    emu.faults = FaultConfig(http_timeout=1.0, timeout_hold_s=5.0)
    with pytest.raises(RequestTimeout):
        await ex.create_order("BTC/USDT", "market", "buy", 0.001,
                              params={"newClientOrderId": "held"})
    assert emu.orders() == [] and emu.faults_injected == {"http_timeout": 1}


async def test_response_lost_after_order_accepted(ex: ccxt.binance, emu: BinanceEmulator) -> None:
    emu.faults = FaultConfig(response_lost=1.0)
    seen: list[type[Exception]] = []
    for i in range(6):
        with pytest.raises(NetworkError) as err:
            await ex.create_order("BTC/USDT", "market", "buy", 0.001,
                                  params={"newClientOrderId": f"lost-{i}"})
        seen.append(type(err.value))
    emu.faults = FaultConfig()
    print("client saw:", [t.__name__ for t in seen])
    # The orders exist although no client heard of them: look them up by client id.
    for i in range(6):
        order = await ex.fetch_order(None, "BTC/USDT", params={"origClientOrderId": f"lost-{i}"})
        assert order["status"] == "closed"
    with pytest.raises(InvalidOrder, match="Duplicate"):  # a blind retry is refused
        await ex.create_order("BTC/USDT", "market", "buy", 0.001,
                              params={"newClientOrderId": "lost-0"})
    assert len(emu.trades()) == 6 and emu.faults_injected == {"response_lost": 6}


async def test_http_faults_limited_to_paths(ex: ccxt.binance, emu: BinanceEmulator) -> None:
    emu.faults = FaultConfig(http_5xx=1.0, http_paths=("/api/v3/order",))
    await ex.fetch_balance()
    with pytest.raises(NetworkError):
        await ex.create_order("BTC/USDT", "market", "buy", 0.001)
    assert emu.orders() == []  # a pre-processing fault: the order never reached the engine


async def _klines(ws: Any, n: int, timeout: float = 1.0) -> list[int]:
    out = []
    for _ in range(n):
        out.append(json.loads(await asyncio.wait_for(ws.recv(), timeout))["k"]["t"])
    return out


async def test_ws_duplicates_and_reordering(emu: BinanceEmulator) -> None:
    async with websockets.connect(f"{emu.ws_url}/ws/btcusdt@kline_1h") as ws:
        await asyncio.sleep(0.05)
        emu.faults = FaultConfig(ws_duplicate=1.0)
        t1 = (await emu.advance())[0].ts.timestamp() * 1000
        assert await _klines(ws, 2) == [t1, t1]
        emu.faults = FaultConfig(ws_reorder=1.0)
        ts = [(await emu.advance())[0].ts.timestamp() * 1000 for _ in range(4)]
        assert await _klines(ws, 4) == [ts[1], ts[0], ts[3], ts[2]]
    assert emu.faults_injected == {"ws_duplicate": 1, "ws_reorder": 2}


async def test_ws_stall_then_disconnect(emu: BinanceEmulator) -> None:
    async with websockets.connect(f"{emu.ws_url}/ws/btcusdt@kline_1h") as ws:
        await asyncio.sleep(0.05)
        emu.faults = FaultConfig(ws_stall=1.0, ws_stall_s=0.5)
        await emu.advance()
        emu.faults = FaultConfig()
        await emu.advance()  # still inside the stall: silently lost
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
        await asyncio.sleep(0.3)
        third = (await emu.advance())[0].ts.timestamp() * 1000
        assert await _klines(ws, 1) == [third]  # the connection itself never dropped

        emu.faults = FaultConfig(ws_disconnect=1.0)
        await emu.advance()
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), 2)
    assert emu.faults_injected == {"ws_stall": 1, "ws_disconnect": 1}


def test_same_seed_same_faults() -> None:
    config = FaultConfig(http_429=0.3, http_5xx=0.2, ws_duplicate=0.5)

    def run(seed: int) -> list[str]:
        inj = FaultInjector(config, seed)
        return [k for _ in range(200) for k in ("http_429", "http_5xx", "ws_duplicate")
                if inj.roll(k)]
    assert run(1) == run(1) != run(2)
    assert 40 <= run(1).count("http_429") <= 80


def test_fault_probabilities_validated() -> None:
    with pytest.raises(ValueError, match="http_429"):
        FaultConfig(http_429=1.5)
