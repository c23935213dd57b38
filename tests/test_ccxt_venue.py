"""The ccxt venue against the Binance emulator: unmodified ccxt over real loopback sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.binance_emulator import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    BinanceEmulator,
    FaultConfig,
    SyntheticBars,
)
from adapters.ccxt_exchange import ExchangeConfig, StreamConfig
from adapters.ccxt_venue import CcxtVenue
from adapters.venue import (
    AuthenticationVenueError,
    OrderNotFound,
    OrderRequest,
    PermanentVenueError,
    TransientVenueError,
    VenueOrder,
    VenueTrade,
)
from daemon.events import OrderType, Side

SYMBOLS = ["BTC/USDT", "ETH/USDT"]
KEYS = {"TRADINGD_API_KEY": DEFAULT_API_KEY, "TRADINGD_API_SECRET": DEFAULT_API_SECRET}


def exchange_cfg(emu: BinanceEmulator, **overrides: Any) -> ExchangeConfig:
    # fast loopback settings; the polling periods only bound how long a test waits
    cfg = ExchangeConfig(rest_url=emu.http_url, ws_url=emu.ws_url, timeout_s=1.0,
                         ccxt_rate_limit_ms=1, max_requests_per_s=1000, burst=100,
                         fills_poll_s=0.1, fills_audit_s=0.2,
                         stream=StreamConfig(reconnect_min_s=0.05, reconnect_max_s=0.2))
    return replace(cfg, **overrides)


def market(cid: str, qty: float, side: Side = Side.BUY, symbol: str = "BTC/USDT") -> OrderRequest:
    return OrderRequest(cid, symbol, side, OrderType.MARKET, qty)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for something the venue does in the background (a poll, a stream message)."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


class Recorder:
    def __init__(self, venue: CcxtVenue) -> None:
        self.trades: list[VenueTrade] = []
        self.orders: list[VenueOrder] = []
        venue.on_trade(self.trades.append)
        venue.on_order(self.orders.append)


@pytest.fixture
async def emu() -> AsyncIterator[BinanceEmulator]:
    # unique_client_order_ids=False: like Binance, a finished order's client id may be reused,
    # so only the venue's own care prevents a double order after a lost response
    async with BinanceEmulator(SYMBOLS, SyntheticBars(SYMBOLS, seed=4), history_bars=10,
                               balances={"USDT": 10_000.0, "ETH": 1.0}, seed=2,
                               unique_client_order_ids=False) as e:
        yield e


@pytest.fixture
async def venue(emu: BinanceEmulator) -> AsyncIterator[CcxtVenue]:
    v = CcxtVenue(exchange_cfg(emu), SYMBOLS, "USDT", environ=KEYS)
    await v.start()
    yield v
    await v.close()


async def test_start_loads_market_rules_and_balances(venue: CcxtVenue) -> None:
    rules = venue.markets()
    assert set(rules) == set(SYMBOLS)
    assert rules["BTC/USDT"].amount_step == 1e-05 and rules["BTC/USDT"].min_notional == 10.0
    assert await venue.balances() == {"USDT": 10_000.0, "ETH": 1.0}
    await until(lambda: venue.user_stream is not None and venue.user_stream.live)


async def test_market_order_quantised_carries_client_id_and_fill_reported_once(
        venue: CcxtVenue, emu: BinanceEmulator) -> None:
    rec = Recorder(venue)
    await until(lambda: venue.user_stream is not None and venue.user_stream.live)
    view = await venue.submit(market("td-1-btc", 0.0123456789))
    assert (view.client_order_id, view.status, view.quantity) == ("td-1-btc", "closed", 0.01234)
    (sent,) = emu.orders()
    assert sent.client_order_id == "td-1-btc" and sent.quantity == 0.01234  # floored to the step
    # reported by the order reply, the user stream and the poll: delivered once
    await until(lambda: venue.counters["polls"] >= 2 and venue.counters["stream_trades"] >= 1)
    (trade,) = rec.trades
    emu_trade = emu.trades()[0]
    assert trade.trade_id == str(emu_trade.trade_id) and trade.client_order_id == "td-1-btc"
    assert trade.quantity == 0.01234 and trade.price == emu_trade.price
    assert trade.fee == pytest.approx(emu_trade.fee)  # charged in USDT: no conversion
    assert venue.counters["trades_already_reported"] >= 1
    assert [o.status for o in rec.orders if o.client_order_id == "td-1-btc"][-1] == "closed"


async def test_limit_order_rests_then_cancel_by_client_id(venue: CcxtVenue,
                                                          emu: BinanceEmulator) -> None:
    rec = Recorder(venue)
    await until(lambda: venue.user_stream is not None and venue.user_stream.live)
    last = float(emu.engine.last_price["ETHUSDT"])
    request = OrderRequest("td-2-eth", "ETH/USDT", Side.SELL, OrderType.LIMIT, 0.5,
                           limit_price=last * 1.5 + 0.004321)
    view = await venue.submit(request)
    assert view.status == "open" and view.limit_price == round(last * 1.5 + 0.004321, 2)
    assert [o.client_order_id for o in await venue.open_orders()] == ["td-2-eth"]
    canceled = await venue.cancel("td-2-eth", "ETH/USDT")
    # Binance's cancel reply names the cancel request in clientOrderId: the view keeps ours
    assert (canceled.client_order_id, canceled.status) == ("td-2-eth", "canceled")
    await until(lambda: any(o.status == "canceled" for o in rec.orders))
    streamed = [o for o in rec.orders if o.status == "canceled"]
    assert streamed[0].client_order_id == "td-2-eth"  # from `C`, not the cancel's own `c`
    assert await venue.open_orders() == []


async def test_cancel_of_filled_order_returns_it_and_unknown_raises(venue: CcxtVenue) -> None:
    await venue.submit(market("td-3-btc", 0.001))
    # Binance answers "unknown order" to cancelling a filled order: not "never existed"
    view = await venue.cancel("td-3-btc", "BTC/USDT")
    assert (view.status, view.filled) == ("closed", 0.001)
    with pytest.raises(OrderNotFound):
        await venue.cancel("never-sent", "BTC/USDT")
    with pytest.raises(OrderNotFound):
        await venue.fetch_order("never-sent", "BTC/USDT")
    assert (await venue.fetch_order("td-3-btc", "BTC/USDT")).filled == 0.001


async def test_lost_response_resolved_by_client_id_without_second_order(
        venue: CcxtVenue, emu: BinanceEmulator) -> None:
    rec = Recorder(venue)
    emu.faults = FaultConfig(response_lost=1.0, http_paths=("/api/v3/order",))
    with pytest.raises(TransientVenueError):
        await venue.submit(market("td-4-btc", 0.002))
    emu.faults = FaultConfig()
    # the OMS retries with the same client id: the venue asks before sending again
    view = await venue.submit(market("td-4-btc", 0.002))
    assert (view.status, view.filled) == ("closed", 0.002)
    assert len(emu.orders()) == 1 and venue.counters["submit_resolved_by_client_id"] == 1
    await until(lambda: len(rec.trades) == 1)  # its fill comes from the stream or a poll


async def test_duplicate_rejection_answered_with_existing_order(emu: BinanceEmulator) -> None:
    a = CcxtVenue(exchange_cfg(emu), SYMBOLS, "USDT", environ=KEYS)
    b = CcxtVenue(exchange_cfg(emu), SYMBOLS, "USDT", environ=KEYS)
    await a.start()
    await b.start()
    try:
        last = float(emu.engine.last_price["BTCUSDT"])
        limit = OrderRequest("td-5-btc", "BTC/USDT", Side.BUY, OrderType.LIMIT, 0.001,
                             limit_price=round(last * 0.5, 1))
        first = await a.submit(limit)
        # b never heard of it (a restart): Binance refuses the open duplicate
        second = await b.submit(limit)
        assert second.venue_order_id == first.venue_order_id
        assert b.counters["submit_resolved_duplicate"] == 1 and len(emu.orders()) == 1
    finally:
        await a.close()
        await b.close()


async def test_rejections_are_permanent_and_never_sent_twice(venue: CcxtVenue,
                                                             emu: BinanceEmulator) -> None:
    with pytest.raises(PermanentVenueError, match="InsufficientFunds"):
        await venue.submit(market("td-6a", 1.0))
    with pytest.raises(PermanentVenueError, match="NOTIONAL"):  # ccxt: BadRequest
        await venue.submit(market("td-6b", 0.0001))
    with pytest.raises(PermanentVenueError, match="FILTER_MIN_QTY"):  # caught locally
        await venue.submit(market("td-6c", 0.000001))
    with pytest.raises(PermanentVenueError, match="not a loaded market"):
        await venue.submit(market("td-6d", 1.0, symbol="DOGE/USDT"))
    assert emu.orders() == []


async def test_rate_limit_carries_retry_after_and_pauses_everyone(venue: CcxtVenue,
                                                                  emu: BinanceEmulator) -> None:
    # only this call's path: the background poll and stream must not take the fault
    emu.faults = FaultConfig(http_429=1.0, retry_after_s=7, http_paths=("/api/v3/account",))
    with pytest.raises(TransientVenueError) as err:
        await venue.balances()
    assert err.value.retry_after == 7.0
    assert venue.throttle.pauses == 1 and venue.throttle.delay() > 5.0


async def test_gateway_errors_and_timeouts_are_transient_and_redacted(
        venue: CcxtVenue, emu: BinanceEmulator) -> None:
    account = ("/api/v3/account",)
    emu.faults = FaultConfig(http_5xx=1.0, http_paths=account)
    with pytest.raises(TransientVenueError, match="ExchangeNotAvailable"):
        await venue.balances()
    emu.faults = FaultConfig(http_timeout=1.0, timeout_hold_s=3.0, http_paths=account)
    with pytest.raises(TransientVenueError, match="RequestTimeout") as err:
        await venue.balances()  # a signed GET: ccxt puts the signed URL in its message
    text = str(err.value)
    assert "signature=***" in text and DEFAULT_API_KEY not in text
    assert err.value.__cause__ is None  # the unredacted ccxt exception is not chained


async def test_authentication_errors(emu: BinanceEmulator) -> None:
    with pytest.raises(AuthenticationVenueError, match="TRADINGD_API_SECRET") as missing:
        await CcxtVenue(exchange_cfg(emu), SYMBOLS, "USDT",
                        environ={"TRADINGD_API_KEY": DEFAULT_API_KEY}).start()
    assert DEFAULT_API_KEY not in str(missing.value)
    venue = CcxtVenue(exchange_cfg(emu), SYMBOLS, "USDT",
                      environ={**KEYS, "TRADINGD_API_SECRET": "x" * 64})
    # markets are public, but start also reads own trades: bad keys stop it there
    with pytest.raises(AuthenticationVenueError, match="refused our API key") as err:
        await venue.start()
    assert "x" * 64 not in str(err.value) and "-1022" in str(err.value)


async def test_polling_reports_fills_without_user_stream(emu: BinanceEmulator) -> None:
    cfg = exchange_cfg(emu, stream=StreamConfig(user_stream=False))
    venue = CcxtVenue(cfg, SYMBOLS, "USDT", environ=KEYS)
    await venue.start()
    rec = Recorder(venue)
    try:
        last = float(emu.engine.last_price["ETHUSDT"])
        price = round(last * 1.001, 2)
        await venue.submit(OrderRequest("td-7-eth", "ETH/USDT", Side.SELL, OrderType.LIMIT,
                                        0.25, limit_price=price))
        for _ in range(300):  # rests until a bar trades through it
            if any(b.symbol == "ETH/USDT" and b.high >= price for b in await emu.advance()):
                break
        await until(lambda: len(rec.trades) == 1)
        assert venue.user_stream is None and venue.counters["poll_trades"] == 1
        trade = rec.trades[0]
        # Binance's trade list has no client id: the venue learnt it from the order
        assert (trade.client_order_id, trade.price, trade.quantity) == ("td-7-eth", price, 0.25)
        since = datetime(2000, 1, 1, tzinfo=UTC)
        assert [t.trade_id for t in await venue.trades_since(since)] == [trade.trade_id]
    finally:
        await venue.close()


async def test_trades_before_start_are_history_not_fills(emu: BinanceEmulator) -> None:
    first = CcxtVenue(exchange_cfg(emu), SYMBOLS, "USDT", environ=KEYS)
    await first.start()
    await first.submit(market("td-8-old", 0.001))
    await first.close()
    venue = CcxtVenue(exchange_cfg(emu), SYMBOLS, "USDT", environ=KEYS)
    await venue.start()
    rec = Recorder(venue)
    try:
        await venue.submit(market("td-8-new", 0.001))
        await until(lambda: venue.counters["polls"] >= 3)
        assert [t.client_order_id for t in rec.trades] == ["td-8-new"]
    finally:
        await venue.close()


async def test_order_by_exchange_id(venue: CcxtVenue) -> None:
    view = await venue.submit(market("td-9-btc", 0.001))
    by_id = await venue.fetch_order_by_venue_id(view.venue_order_id, "BTC/USDT")
    assert (by_id.client_order_id, by_id.filled) == ("td-9-btc", 0.001)


async def test_listen_key_keepalive_and_expiry(emu: BinanceEmulator) -> None:
    cfg = exchange_cfg(emu)
    cfg = replace(cfg, stream=replace(cfg.stream, user_stream_api="listen_key",
                                      listen_key_keepalive_s=1.0))
    venue = CcxtVenue(cfg, SYMBOLS, "USDT", environ=KEYS)
    await venue.start()
    try:
        stream = venue.user_stream
        assert stream is not None
        await until(lambda: stream.counters["keepalives"] >= 1)  # PUT /userDataStream
        emu._hub.publish_user({"e": "listenKeyExpired", "E": 1})  # as Binance announces it
        await until(lambda: stream.counters["connects"] == 2 and stream.live)
        # garbage on the stream is counted, never raised
        emu._hub.publish_user({"e": "executionReport", "s": "BTCUSDT", "X": "NEW"})
        emu._hub.publish_user({"e": "executionReport", "s": "DOGEUSDT"})
        await until(lambda: venue.counters["stream_dropped_malformed"] == 1
                    and venue.counters["stream_dropped_unknown_symbol"] == 1)
        assert stream.live and stream.counters["listen_key_expired"] == 1
    finally:
        await venue.close()


async def test_ws_api_stream_resubscribes_after_termination(venue: CcxtVenue,
                                                            emu: BinanceEmulator) -> None:
    rec = Recorder(venue)
    stream = venue.user_stream
    assert stream is not None and stream.cfg.user_stream_api == "ws_api"  # the default
    await until(lambda: stream.live)
    assert stream.secrets() == ()  # no listen key: nothing bearer-like to scrub
    assert emu._hub.terminate_user_streams() == 1  # Binance ends the subscription
    await until(lambda: stream.counters["connects"] == 2 and stream.live)
    assert stream.counters["stream_terminated"] == 1 and stream.counters["subscriptions"] == 2
    # fills still arrive on the new subscription, as themselves, once
    await venue.submit(market("td-ws-1", 0.001))
    await until(lambda: venue.counters["stream_trades"] >= 1)
    assert [t.client_order_id for t in rec.trades] == ["td-ws-1"]
    # garbage inside the wrapper is counted, never raised
    emu._hub.publish_user({"e": "executionReport", "s": "BTCUSDT", "X": "NEW"})
    await until(lambda: venue.counters["stream_dropped_malformed"] == 1)
    assert stream.live


class _Signer:
    """The venue's signing replaced by a wrong one; the network and the emulator are real."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def ws_api_signed_params(self) -> dict[str, Any]:
        return dict(self.params)


async def test_ws_api_refused_signature_is_an_auth_failure(emu: BinanceEmulator) -> None:
    from adapters.binance_user_stream import BinanceUserStream

    cfg = exchange_cfg(emu).stream
    signer = _Signer({"apiKey": DEFAULT_API_KEY, "timestamp": 1, "signature": "0" * 64})
    connected: list[int] = []
    stream = BinanceUserStream("", signer, cfg, lambda msg: None,  # type: ignore[arg-type]
                               lambda: connected.append(1), str,
                               ws_api_url=f"{emu.ws_url}/ws-api/v3")
    stream.start()
    try:
        await until(lambda: stream.counters["subscribe_failures"] >= 1)  # -1021: stale stamp
        signer.params["timestamp"] = int(datetime.now(UTC).timestamp() * 1000)
        await until(lambda: stream.counters["auth_refused"] >= 1)  # -1022: bad signature
        assert not stream.live and connected == []
    finally:
        await stream.close()


def test_ws_api_signing_follows_binances_rule_and_refuses_other_keys() -> None:
    import ccxt.async_support as ccxt_async

    from adapters.binance_emulator.auth import Credentials

    venue = CcxtVenue(ExchangeConfig(), SYMBOLS, "USDT", environ=KEYS)
    with pytest.raises(AuthenticationVenueError, match="no API key"):
        venue.ws_api_signed_params()  # not connected: nothing to sign with
    venue.exchange = ccxt_async.binance({"apiKey": DEFAULT_API_KEY,
                                         "secret": DEFAULT_API_SECRET})
    params = venue.ws_api_signed_params()
    assert sorted(params) == ["apiKey", "signature", "timestamp"]
    Credentials(DEFAULT_API_KEY, DEFAULT_API_SECRET).check_ws_signed(params)  # raises if wrong
    with pytest.raises(Exception, match="Signature for this request is not valid"):
        Credentials(DEFAULT_API_KEY, "another-secret").check_ws_signed(params)
    venue.exchange.secret = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END"
    with pytest.raises(AuthenticationVenueError, match="HMAC keys only"):
        venue.ws_api_signed_params()


def report(**fields: Any) -> dict[str, Any]:
    """An executionReport as Binance sends it (the fields we read)."""
    base = {"e": "executionReport", "E": 1_700_000_000_000, "s": "BTCUSDT", "c": "td-1", "C": "",
            "S": "BUY", "o": "MARKET", "q": "0.01000000", "p": "0.00000000", "X": "FILLED",
            "x": "TRADE", "i": 42, "l": "0.01000000", "L": "30000.00", "z": "0.01000000",
            "Z": "300.00", "n": "0.30", "N": "USDT", "T": 1_700_000_000_000, "t": 7}
    return {**base, **fields}


def test_execution_report_parsing() -> None:
    from adapters.binance_user_stream import MalformedMessage, parse_execution_report

    def symbol_of(market_id: str) -> str | None:
        return {"BTCUSDT": "BTC/USDT"}.get(market_id)

    got = parse_execution_report(report(), symbol_of)
    assert got.trade is not None
    assert (got.trade.trade_id, got.trade.client_order_id, got.trade.quantity, got.trade.fee) \
        == ("7", "td-1", 0.01, 0.30)
    assert (got.order.status, got.order.average_price, got.order.venue_order_id) == (
        "closed", 30_000.0, "42")
    base_fee = parse_execution_report(report(n="0.00001", N="BTC"), symbol_of)
    assert base_fee.trade is not None  # passed on in BTC, as charged; valued at the price
    assert (base_fee.trade.fee, base_fee.trade.fee_currency) == (0.00001, "BTC")
    assert base_fee.trade.fee_quote == pytest.approx(0.3)
    cancel = parse_execution_report(report(x="CANCELED", X="CANCELED", c="cancel-9", C="td-2",
                                           z="0", Z="0", o="LIMIT", p="25000.00"),
                                    symbol_of)
    assert cancel.trade is None
    assert (cancel.order.client_order_id, cancel.order.status, cancel.order.limit_price) == (
        "td-2", "canceled", 25_000.0)
    for bad, reason in ((report(s="ETHUSDT"), "unknown_symbol"), (report(X="???"), "malformed"),
                        (report(l="abc"), "malformed"), (report(t=-1), "malformed"),
                        (report(L="0"), "malformed"), (report(c="", C=""), "malformed"),
                        (report(q="inf"), "malformed")):
        with pytest.raises(MalformedMessage) as err:
            parse_execution_report(bad, symbol_of)
        assert err.value.reason == reason
