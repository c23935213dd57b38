"""Websocket kline streams and the user data stream, read with the `websockets` client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ccxt.async_support as ccxt
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from adapters.binance_emulator import BinanceEmulator, CsvBars, configure_ccxt

SYMBOLS = ["BTC/USDT", "ETH/USDT"]


@pytest.fixture
async def emu(shared_data: Path) -> AsyncIterator[BinanceEmulator]:
    source = CsvBars(shared_data / "binance-spot" / "1h", SYMBOLS, "1h",
                     start=datetime(2022, 3, 1, tzinfo=UTC), end=datetime(2022, 4, 1, tzinfo=UTC))
    async with BinanceEmulator(SYMBOLS, source, balances={"USDT": 5_000.0},
                               history_bars=24) as e:
        yield e


@pytest.fixture
async def ex(emu: BinanceEmulator) -> AsyncIterator[ccxt.binance]:
    exchange = configure_ccxt(ccxt.binance({"enableRateLimit": False}), emu)
    await exchange.load_markets()
    yield exchange
    await exchange.close()


async def recv(ws: Any, timeout: float = 2.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def test_combined_kline_stream_delivers_closed_klines_in_order(
        emu: BinanceEmulator) -> None:
    url = f"{emu.ws_url}/stream?streams=btcusdt@kline_1h/ethusdt@kline_1h"
    async with websockets.connect(url) as ws:
        await asyncio.sleep(0.05)  # let the server register the connection
        closed = [await emu.advance() for _ in range(3)]
        got = [await recv(ws) for _ in range(6)]
    expected = [(f"{b.symbol.replace('/', '').lower()}@kline_1h", int(b.ts.timestamp() * 1000),
                 b.close) for bars in closed for b in bars]
    assert [(m["stream"], m["data"]["k"]["t"], float(m["data"]["k"]["c"])) for m in got] == \
        expected
    k = got[0]["data"]
    assert k["e"] == "kline" and k["s"] == "BTCUSDT" and k["k"]["x"] is True
    assert k["k"]["i"] == "1h" and k["k"]["T"] == k["k"]["t"] + 3_600_000 - 1
    assert k["E"] == k["k"]["T"] + 1  # event time: market time, the bar's close


async def test_raw_stream_and_subscribe_control_messages(emu: BinanceEmulator) -> None:
    async with websockets.connect(f"{emu.ws_url}/ws/ethusdt@kline_1h") as raw, \
            websockets.connect(f"{emu.ws_url}/ws") as sub:
        await sub.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@kline_1h"],
                                   "id": 7}))
        assert await recv(sub) == {"result": None, "id": 7}
        await sub.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 8}))
        assert await recv(sub) == {"result": ["btcusdt@kline_1h"], "id": 8}
        bars = await emu.advance()
        eth = await recv(raw)
        btc = await recv(sub)
    assert "stream" not in eth and eth["s"] == "ETHUSDT"
    assert btc["k"]["c"] == f"{bars[0].close:.8f}"


async def test_user_data_stream_reports_fills(ex: ccxt.binance, emu: BinanceEmulator) -> None:
    listen_key = (await ex.publicPostUserDataStream())["listenKey"]
    assert (await ex.publicPostUserDataStream())["listenKey"] == listen_key
    await ex.publicPutUserDataStream({"listenKey": listen_key})
    async with websockets.connect(f"{emu.ws_url}/ws/{listen_key}") as ws:
        await asyncio.sleep(0.05)
        order = await ex.create_order("BTC/USDT", "market", "buy", 0.01,
                                      params={"newClientOrderId": "ud-1"})
        events = [await recv(ws) for _ in range(3)]
        assert [(e["e"], e.get("x"), e.get("X")) for e in events] == [
            ("executionReport", "NEW", "NEW"), ("executionReport", "TRADE", "FILLED"),
            ("outboundAccountPosition", None, None)]
        trade = events[1]
        assert trade["c"] == "ud-1" and trade["i"] == int(order["id"])
        assert trade["l"] == "0.01000000" and float(trade["L"]) == order["average"]
        assert trade["N"] == "USDT" and float(trade["n"]) == pytest.approx(order["fee"]["cost"])
        assert trade["t"] == int(order["trades"][0]["id"]) and trade["m"] is False
        balances = {b["a"]: b for b in events[2]["B"]}
        assert float(balances["BTC"]["f"]) == 0.01

        last = float(emu.engine.last_price["BTCUSDT"])
        resting = await ex.create_order("BTC/USDT", "limit", "buy", 0.01, round(last * 0.7),
                                        params={"newClientOrderId": "ud-2"})
        assert [(await recv(ws))["e"] for _ in range(2)] == ["executionReport",
                                                             "outboundAccountPosition"]
        await ex.cancel_order(resting["id"], "BTC/USDT")
        canceled = await recv(ws)
        # Binance puts the cancel request's id in `c` and the order's own id in `C`.
        assert canceled["X"] == "CANCELED" and canceled["C"] == "ud-2" and canceled["c"] != "ud-2"
    await ex.publicDeleteUserDataStream({"listenKey": listen_key})


async def test_invalid_listen_key_is_refused(emu: BinanceEmulator) -> None:
    async with websockets.connect(f"{emu.ws_url}/ws/{'0' * 60}") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 2)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_ccxt_pro_watch_ohlcv(emu: BinanceEmulator) -> None:
    """ccxt.pro connects to /ws/<n>, SUBSCRIBEs, and parses the kline payloads."""
    import ccxt.pro as ccxtpro

    pro = configure_ccxt(ccxtpro.binance({"enableRateLimit": False}), emu)
    try:
        await pro.load_markets()
        watch = asyncio.create_task(pro.watch_ohlcv("ETH/USDT", "1h"))
        await asyncio.sleep(0.3)  # let it connect and subscribe
        bars = await emu.advance()
        candles = await asyncio.wait_for(watch, 3)
    finally:
        await pro.close()
    eth = next(b for b in bars if b.symbol == "ETH/USDT")
    assert candles[-1] == [int(eth.ts.timestamp() * 1000), eth.open, eth.high, eth.low,
                           eth.close, eth.volume]


def ws_signed(emu: BinanceEmulator, **params: Any) -> dict[str, Any]:
    """Binance's WebSocket API signing rule, written out here independently of the product."""
    import hashlib
    import hmac
    import time

    out: dict[str, Any] = {"apiKey": emu.api_key, "timestamp": int(time.time() * 1000), **params}
    payload = "&".join(f"{k}={out[k]}" for k in sorted(out))
    out["signature"] = hmac.new(emu.api_secret.encode(), payload.encode(),
                                hashlib.sha256).hexdigest()
    return out


async def test_ws_api_user_data_subscription(ex: ccxt.binance, emu: BinanceEmulator) -> None:
    async with websockets.connect(f"{emu.ws_url}/ws-api/v3") as ws:
        await ws.send(json.dumps({"id": "s1", "method": "userDataStream.subscribe.signature",
                                  "params": ws_signed(emu)}))
        assert await recv(ws) == {"id": "s1", "status": 200, "result": {"subscriptionId": 0}}
        await ws.send(json.dumps({"id": "s2", "method": "session.subscriptions"}))
        assert (await recv(ws))["result"] == [{"subscriptionId": 0}]

        await ex.create_order("BTC/USDT", "market", "buy", 0.01,
                              params={"newClientOrderId": "wsapi-1"})
        events = [await recv(ws) for _ in range(3)]
        assert {e["subscriptionId"] for e in events} == {0}
        assert [(e["event"]["e"], e["event"].get("X")) for e in events] == [
            ("executionReport", "NEW"), ("executionReport", "FILLED"),
            ("outboundAccountPosition", None)]
        assert events[1]["event"]["c"] == "wsapi-1"

        await ws.send(json.dumps({"id": "s3", "method": "userDataStream.unsubscribe",
                                  "params": {"subscriptionId": 0}}))
        assert await recv(ws) == {"id": "s3", "status": 200, "result": {}}
        ended = await recv(ws)
        assert ended["subscriptionId"] == 0 and ended["event"]["e"] == "eventStreamTerminated"
        await ex.create_order("BTC/USDT", "market", "sell", 0.01)
        with pytest.raises(TimeoutError):  # unsubscribed: nothing more arrives
            await recv(ws, timeout=0.3)


@pytest.mark.parametrize("tamper, code, status", [
    ({"signature": "0" * 64}, -1022, 400),
    ({"apiKey": "someoneElse"}, -2015, 401),
    ({"timestamp": 1_600_000_000_000}, -1021, 400),
])
async def test_ws_api_refuses_bad_signatures(emu: BinanceEmulator, tamper: dict[str, Any],
                                             code: int, status: int) -> None:
    params = ws_signed(emu)
    params.update(tamper)
    async with websockets.connect(f"{emu.ws_url}/ws-api/v3") as ws:
        await ws.send(json.dumps({"id": 9, "method": "userDataStream.subscribe.signature",
                                  "params": params}))
        reply = await recv(ws)
    assert (reply["id"], reply["status"], reply["error"]["code"]) == (9, status, code)
    assert "result" not in reply


async def test_ccxt_pro_watch_orders_over_the_ws_api(emu: BinanceEmulator) -> None:
    """ccxt.pro's own spot user stream (userDataStream.subscribe.signature, its signing, its
    parsing of the wrapped events) against the emulator: the protocol as ccxt implements it."""
    import ccxt.pro as ccxtpro

    pro = configure_ccxt(ccxtpro.binance({"enableRateLimit": False}), emu)
    try:
        await pro.load_markets()
        watch = asyncio.create_task(pro.watch_orders("BTC/USDT"))
        await asyncio.sleep(0.3)  # let it connect and subscribe
        placed = await pro.create_order("BTC/USDT", "market", "buy", 0.01,
                                        params={"newClientOrderId": "pro-1"})
        orders = await asyncio.wait_for(watch, 3)
    finally:
        await pro.close()
    assert orders[-1]["clientOrderId"] == "pro-1" and orders[-1]["id"] == placed["id"]
