"""Unmodified ccxt binance (async) against the emulator over real loopback sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import ccxt.async_support as ccxt
import pytest
from ccxt.base.errors import (
    AuthenticationError,
    BadRequest,
    BadSymbol,
    InsufficientFunds,
    InvalidNonce,
    InvalidOrder,
    OrderNotFound,
)

from adapters.binance_emulator import BinanceEmulator, CsvBars, configure_ccxt
from risk.market_rules import MarketRules

SYMBOLS = ["BTC/USDT", "ETH/USDT"]


@pytest.fixture
async def emu(shared_data: Path) -> AsyncIterator[BinanceEmulator]:
    source = CsvBars(shared_data / "binance-spot" / "1h", SYMBOLS, "1h",
                     start=datetime(2021, 1, 1, tzinfo=UTC), end=datetime(2021, 2, 1, tzinfo=UTC))
    async with BinanceEmulator(SYMBOLS, source, balances={"USDT": 10_000.0, "ETH": 1.0},
                               history_bars=48) as e:
        yield e


def client(emu: BinanceEmulator, **config: object) -> ccxt.binance:
    # enableRateLimit off only to keep the suite fast; the emulator does not need throttling.
    ex = ccxt.binance({"enableRateLimit": False, **config})
    return configure_ccxt(ex, emu)


@pytest.fixture
async def ex(emu: BinanceEmulator) -> AsyncIterator[ccxt.binance]:
    exchange = client(emu)
    await exchange.load_markets()
    yield exchange
    await exchange.close()


async def test_load_markets_precision_and_limits(ex: ccxt.binance, emu: BinanceEmulator) -> None:
    m = ex.market("BTC/USDT")
    assert (m["id"], m["base"], m["quote"], m["spot"], m["active"]) == (
        "BTCUSDT", "BTC", "USDT", True, True)
    first_close = 28_995.13  # BTC/USDT close of the first 2021 hourly bar
    expected = MarketRules.synthetic("BTC/USDT", first_close, min_notional=10.0)
    # Binance advertises a finite maxNotional (NOTIONAL filter) where synthetic() has none.
    assert MarketRules.from_ccxt(m) == replace(expected, max_notional=9_000_000.0)
    assert m["precision"] == {"amount": 1e-05, "price": 0.1, "base": 1e-08, "quote": 1e-08}
    assert m["limits"]["cost"]["min"] == 10.0
    assert set(ex.markets) == set(SYMBOLS)


async def test_default_ccxt_options_also_load(emu: BinanceEmulator) -> None:
    """Without spot_only ccxt also asks for futures markets, currencies and margin pairs."""
    ex = ccxt.binance({"enableRateLimit": False})
    configure_ccxt(ex, emu, spot_only=False)
    try:
        markets = await ex.load_markets()
        assert set(markets) == set(SYMBOLS)
        assert "USDT" in ex.currencies
    finally:
        await ex.close()


async def test_balance_and_market_order_round_trip(ex: ccxt.binance,
                                                   emu: BinanceEmulator) -> None:
    bal = await ex.fetch_balance()
    assert bal["USDT"] == {"free": 10_000.0, "used": 0.0, "total": 10_000.0}
    last = float(emu.engine.last_price["BTCUSDT"])
    order = await ex.create_order("BTC/USDT", "market", "buy", 0.01,
                                  params={"newClientOrderId": "reb-1-btc"})
    assert order["clientOrderId"] == "reb-1-btc"
    assert order["status"] == "closed" and order["filled"] == 0.01
    assert order["average"] == pytest.approx(last)
    fee = round(0.01 * last * 0.001, 8)
    assert order["fee"] == {"currency": "USDT", "cost": pytest.approx(fee)}
    bal = await ex.fetch_balance()
    assert bal["BTC"]["total"] == pytest.approx(0.01)
    assert bal["USDT"]["total"] == pytest.approx(10_000 - 0.01 * last - fee)

    by_id = await ex.fetch_order(order["id"], "BTC/USDT")
    by_client = await ex.fetch_order(None, "BTC/USDT", params={"origClientOrderId": "reb-1-btc"})
    assert by_id["id"] == by_client["id"] == order["id"]
    assert by_client["clientOrderId"] == "reb-1-btc" and by_client["status"] == "closed"


async def test_limit_order_rests_fills_on_cross_and_trades_since(
        ex: ccxt.binance, emu: BinanceEmulator) -> None:
    since = emu.engine.now_ms
    last = float(emu.engine.last_price["ETHUSDT"])
    # Sell 0.5 ETH slightly above the market: rests until a bar's high reaches it.
    price = float(ex.price_to_precision("ETH/USDT", last * 1.002))
    order = await ex.create_order("ETH/USDT", "limit", "sell", 0.5, price,
                                  params={"newClientOrderId": "reb-2-eth"})
    assert order["status"] == "open"
    assert emu.balances()["ETH"].locked == pytest.approx(0.5)
    opened = await ex.fetch_open_orders("ETH/USDT")
    assert [o["clientOrderId"] for o in opened] == ["reb-2-eth"]

    for _ in range(200):
        bars = await emu.advance()
        if any(b.symbol == "ETH/USDT" and b.high >= price for b in bars):
            break
    else:
        pytest.fail("ETH never traded through the limit in 200 bars")
    filled = await ex.fetch_order(order["id"], "ETH/USDT")
    assert filled["status"] == "closed" and filled["average"] == pytest.approx(price)
    assert await ex.fetch_open_orders("ETH/USDT") == []

    trades = await ex.fetch_my_trades("ETH/USDT", since=since)
    assert [(t["order"], t["side"], t["amount"], t["takerOrMaker"]) for t in trades] == [
        (order["id"], "sell", 0.5, "maker")]
    assert trades[0]["timestamp"] == emu.engine.now_ms  # stamped with the filling bar's close
    assert await ex.fetch_my_trades("ETH/USDT", since=emu.engine.now_ms + 1) == []


async def test_cancel_by_id_and_client_id(ex: ccxt.binance, emu: BinanceEmulator) -> None:
    last = float(emu.engine.last_price["BTCUSDT"])
    price = float(ex.price_to_precision("BTC/USDT", last * 0.8))
    a = await ex.create_order("BTC/USDT", "limit", "buy", 0.001, price,
                              params={"newClientOrderId": "c-a"})
    await ex.create_order("BTC/USDT", "limit", "buy", 0.001, price,
                          params={"newClientOrderId": "c-b"})
    assert emu.balances()["USDT"].locked > 0
    canceled = await ex.cancel_order(a["id"], "BTC/USDT")
    assert canceled["status"] == "canceled"
    canceled = await ex.cancel_order(None, "BTC/USDT", params={"origClientOrderId": "c-b"})
    assert canceled["status"] == "canceled"
    assert emu.balances()["USDT"] == type(emu.balances()["USDT"])(10_000.0, 0.0)
    with pytest.raises(OrderNotFound):  # -2011: already canceled
        await ex.cancel_order(a["id"], "BTC/USDT")


async def test_fetch_ohlcv_backfill_up_to_current_bar(ex: ccxt.binance,
                                                      emu: BinanceEmulator) -> None:
    candles = await ex.fetch_ohlcv("BTC/USDT", "1h", limit=1000)
    assert len(candles) == 48
    assert candles[0][0] == int(datetime(2021, 1, 1, tzinfo=UTC).timestamp() * 1000)
    assert candles[0][1:5] == [28923.63, 29031.34, 28690.17, 28995.13]
    bars = await emu.advance()
    newest = await ex.fetch_ohlcv("BTC/USDT", "1h", since=candles[-1][0])
    assert [c[0] for c in newest] == [candles[-1][0], candles[-1][0] + 3_600_000]
    assert newest[-1][4] == next(b.close for b in bars if b.symbol == "BTC/USDT")
    with pytest.raises(BadRequest):  # -1120: only the replayed interval exists
        await ex.fetch_ohlcv("BTC/USDT", "4h")


async def test_rejections_map_to_ccxt_exceptions(ex: ccxt.binance, emu: BinanceEmulator) -> None:
    with pytest.raises(InsufficientFunds, match="insufficient balance"):  # -2010
        await ex.create_order("BTC/USDT", "market", "buy", 1.0)
    with pytest.raises(InvalidOrder, match="LOT_SIZE"):  # -1013, above maxQty
        await ex.create_order("BTC/USDT", "market", "buy", 10_000_000)
    with pytest.raises(InvalidOrder, match="PRICE_FILTER"):  # -1013, above maxPrice
        await ex.create_order("ETH/USDT", "limit", "sell", 0.1, 2_000_000)
    # ccxt maps -1013 to BadRequest unless the body names LOT_SIZE/PRICE_FILTER: a NOTIONAL
    # failure is a BadRequest, not an InvalidOrder, against real Binance too.
    with pytest.raises(BadRequest, match="NOTIONAL") as notional:
        await ex.create_order("BTC/USDT", "market", "buy", 0.0001)
    assert not isinstance(notional.value, InvalidOrder)
    with pytest.raises(OrderNotFound):  # -2013
        await ex.fetch_order("42", "BTC/USDT")
    with pytest.raises(OrderNotFound):  # -2013 by client id
        await ex.fetch_order(None, "BTC/USDT", params={"origClientOrderId": "never-sent"})
    with pytest.raises(OrderNotFound):  # -2011
        await ex.cancel_order("42", "BTC/USDT")
    with pytest.raises(BadSymbol):  # -1121: ccxt checks symbols locally, so go raw
        await ex.publicGetKlines({"symbol": "DOGEUSDT", "interval": "1h"})
    assert emu.orders() == []


async def test_duplicate_client_order_id_rejected(ex: ccxt.binance, emu: BinanceEmulator) -> None:
    await ex.create_order("BTC/USDT", "market", "buy", 0.001, params={"newClientOrderId": "dup"})
    with pytest.raises(InvalidOrder, match="Duplicate order sent"):  # -2010
        await ex.create_order("BTC/USDT", "market", "buy", 0.001,
                              params={"newClientOrderId": "dup"})
    assert len(emu.orders()) == 1 and len(emu.trades()) == 1


async def test_authentication_failures(emu: BinanceEmulator) -> None:
    wrong_secret = client(emu, apiKey=emu.api_key, secret="x" * 64)
    unknown_key = client(emu, apiKey="A" * 64, secret=emu.api_secret)
    malformed_key = client(emu, apiKey="not a key!", secret=emu.api_secret)
    stale = client(emu)
    # A clock 30 s behind: every request falls outside ccxt's 10 s recvWindow.
    stale.nonce = lambda: stale.milliseconds() - 30_000
    try:
        for bad, match in ((wrong_secret, "-1022"), (unknown_key, "-2015"),
                           (malformed_key, "-2014")):
            with pytest.raises(AuthenticationError, match=match):
                await bad.fetch_balance()
        with pytest.raises(InvalidNonce, match="-1021"):
            await stale.fetch_balance()
    finally:
        for e in (wrong_secret, unknown_key, malformed_key, stale):
            await e.close()


async def test_order_response_types(ex: ccxt.binance) -> None:
    ack = await ex.private_post_order({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET",
                                       "quantity": "0.001", "newOrderRespType": "ACK",
                                       "newClientOrderId": "ack-1"})
    assert set(ack) == {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}
    result = await ex.private_post_order({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET",
                                          "quantity": "0.001", "newOrderRespType": "RESULT"})
    assert result["status"] == "FILLED" and "fills" not in result
    full = await ex.private_post_order({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET",
                                        "quoteOrderQty": "100"})
    assert full["fills"][0]["commissionAsset"] == "USDT"
    assert 99 <= float(full["cummulativeQuoteQty"]) <= 100
