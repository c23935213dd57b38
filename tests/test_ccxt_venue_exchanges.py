"""Bybit and OKX testnet/demo set-ups, and the parts of the exchange wiring that need no
exchange: construction, sandbox URLs, market loading from recorded replies, error mapping,
redaction, the token bucket and backoff.

Bybit and OKX markets are loaded by ccxt's own `load_markets` from hand-written replies in
`tests/fixtures/`, served over loopback (the test double stands in for the network only).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import ccxt
import ccxt.pro
import pytest
from aiohttp import web

from adapters.ccxt_exchange import (
    BINANCE_WS,
    ExchangeConfig,
    build_exchange,
    classify,
    read_credentials,
    redact,
)
from adapters.ccxt_venue import CcxtVenue
from adapters.throttle import Backoff, TokenBucket
from adapters.venue import (
    AuthenticationVenueError,
    OrderNotFound,
    PermanentVenueError,
    TransientVenueError,
)
from daemon.config import parse_config
from daemon.settings import ConfigError
from risk.market_rules import MarketRules

FIXTURES = Path(__file__).parent / "fixtures"
KEYS = {"TRADINGD_API_KEY": "k" * 24, "TRADINGD_API_SECRET": "s" * 24,
        "TRADINGD_API_PASSWORD": "p" * 12}


class RecordedExchange:
    """Serves recorded replies by path; remembers every request (path, query, headers)."""

    def __init__(self) -> None:
        now = int(time.time() * 1000)
        self.replies: dict[str, Any] = {
            "/v5/market/instruments-info": json.loads(
                (FIXTURES / "bybit_spot_instruments.json").read_text()),
            "/v5/market/time": {"retCode": 0, "retMsg": "OK", "result": {
                "timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)},
                "retExtInfo": {}, "time": now},
            # bybit asks for currencies (private) when it holds keys; none are needed here
            "/v5/asset/coin/query-info": {"retCode": 0, "retMsg": "success",
                                          "result": {"rows": []}, "retExtInfo": {}, "time": now},
            "/api/v5/public/instruments": json.loads(
                (FIXTURES / "okx_spot_instruments.json").read_text()),
            "/api/v5/public/time": {"code": "0", "msg": "", "data": [{"ts": str(now)}]},
        }
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.query), dict(request.headers)))
        if request.path not in self.replies:
            return web.json_response({"error": f"not recorded: {request.path}"}, status=404)
        return web.json_response(self.replies[request.path])


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[RecordedExchange, str]]:
    rec = RecordedExchange()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield rec, f"http://127.0.0.1:{port}"
    await runner.cleanup()


# ---- construction and sandbox URLs ----------------------------------------------------------

async def test_binance_sandbox_urls_and_ws_bases_match_ccxt_pro() -> None:
    ex = build_exchange(ExchangeConfig(id="binance", sandbox=True))
    try:
        assert ex.urls["api"]["private"] == "https://testnet.binance.vision/api/v3"
        assert ex.enableRateLimit is True and ex.options["fetchMarkets"]["types"] == ["spot"]
        assert ex.options["recvWindow"] == 10_000  # = timeout_s: no request outlives it
    finally:
        await ex.close()
    pro = ccxt.pro.binance()
    try:
        for env, key in (("live", "api"), ("sandbox", "test"), ("demo", "demo")):
            assert pro.urls[key]["ws"]["spot"] == BINANCE_WS[env] + "/ws"
    finally:
        await pro.close()


async def test_bybit_testnet_and_demo_urls() -> None:
    testnet = build_exchange(ExchangeConfig(id="bybit", sandbox=True))
    demo = build_exchange(ExchangeConfig(id="bybit", sandbox=False, demo=True))
    try:
        assert testnet.urls["api"]["public"] == "https://api-testnet.{hostname}"
        assert testnet.implode_hostname(testnet.urls["api"]["private"]) == \
            "https://api-testnet.bybit.com"
        assert demo.implode_hostname(demo.urls["api"]["private"]) == "https://api-demo.bybit.com"
    finally:
        await testnet.close()
        await demo.close()


async def test_okx_sandbox_is_the_simulated_trading_header() -> None:
    ex = build_exchange(ExchangeConfig(id="okx", sandbox=True),
                        read_credentials(ExchangeConfig(id="okx"), KEYS))
    try:
        assert ex.headers["x-simulated-trading"] == "1"
        assert ex.password == "p" * 12  # OKX needs the passphrase
    finally:
        await ex.close()


@pytest.mark.parametrize("exchange_id, rules", [
    ("bybit", {"BTC/USDT": MarketRules("BTC/USDT", "BTC", "USDT", 1e-06, 0.01, 0.000048,
                                       71.73956243, 1.0, 2_000_000.0),
               "ETH/USDT": MarketRules("ETH/USDT", "ETH", "USDT", 1e-05, 0.01, 0.00062,
                                       1229.2336343, 1.0, 2_000_000.0)}),
    ("okx", {"BTC/USDT": MarketRules("BTC/USDT", "BTC", "USDT", 1e-08, 0.1, 1e-05),
             "ETH/USDT": MarketRules("ETH/USDT", "ETH", "USDT", 1e-06, 0.01, 0.0001)}),
])
async def test_markets_load_from_recorded_replies(
        recorded: tuple[RecordedExchange, str], exchange_id: str,
        rules: dict[str, MarketRules]) -> None:
    rec, url = recorded
    cfg = ExchangeConfig(id=exchange_id, sandbox=True, rest_url=url)
    venue = CcxtVenue(cfg, ["BTC/USDT", "ETH/USDT"], "USDT", environ=KEYS)
    await venue.connect()
    try:
        got = venue.markets()
        # max_qty/max_notional: okx's market limits are parsed differently per order type
        if exchange_id == "okx":
            got = {s: MarketRules(r.symbol, r.base, r.quote, r.amount_step, r.price_tick,
                                  r.min_qty, min_notional=r.min_notional)
                   for s, r in got.items()}
        assert got == rules
        assert venue.name == f"ccxt-{exchange_id}"
    finally:
        await venue.close()
    paths = {path for path, _, _ in rec.requests}
    assert any(p.endswith("instruments-info") or p.endswith("instruments") for p in paths)
    if exchange_id == "okx":  # sandbox mode reaches the wire as OKX's demo-trading header
        assert all(h.get("x-simulated-trading") == "1" for _, _, h in rec.requests)
    else:
        assert [q.get("category") for p, q, _ in rec.requests if "instruments" in p] == ["spot"]


async def test_symbol_missing_on_exchange_stops_start(
        recorded: tuple[RecordedExchange, str]) -> None:
    _, url = recorded
    venue = CcxtVenue(ExchangeConfig(id="bybit", rest_url=url), ["BTC/USDT", "XYZ/USDT"],
                      "USDT", environ=KEYS)
    with pytest.raises(PermanentVenueError, match="XYZ/USDT"):
        await venue.connect()
    assert venue.exchange is None  # its HTTP session was closed


# ---- configuration --------------------------------------------------------------------------

def test_exchange_config_validation() -> None:
    cfg = parse_config('[daemon]\nmode = "testnet"\n[exchange]\nrest_url = "http://127.0.0.1:8765"'
                       '\nws_url = "ws://127.0.0.1:8766"\n[exchange.stream]\nwarmup_bars = 10\n')
    assert cfg.exchange.rest_url == "http://127.0.0.1:8765"
    assert cfg.exchange.stream.warmup_bars == 10
    assert cfg.exchange.market_ws_url() == "ws://127.0.0.1:8766"
    assert parse_config("").exchange.market_ws_url() == "wss://stream.testnet.binance.vision"
    for text, key in (('[exchange]\nid = "nope"', "exchange.id"),
                      ("[exchange]\ndemo = true", "exchange.demo"),
                      ('[exchange]\nrest_url = "127.0.0.1:8765"', "exchange.rest_url"),
                      ('[exchange]\napi_key_env = "MY KEY"', "exchange.api_key_env"),
                      ("[exchange]\nfills_poll_s = 0", "exchange.fills_poll_s"),
                      ('[daemon]\nmode = "testnet"\n[exchange]\nid = "okx"', "exchange.id")):
        with pytest.raises(ConfigError) as err:
            parse_config(text)
        assert err.value.key == key, text


def test_credentials_from_environment_only_named_never_shown() -> None:
    cfg = ExchangeConfig(api_key_env="MY_KEY", api_secret_env="MY_SECRET")
    creds = read_credentials(cfg, {"MY_KEY": " abc123abc123 ", "MY_SECRET": "zzz999zzz999"})
    assert (creds.api_key, creds.secret, creds.password) == ("abc123abc123", "zzz999zzz999", "")
    with pytest.raises(AuthenticationVenueError, match="MY_KEY, MY_SECRET"):
        read_credentials(cfg, {})


# ---- errors and redaction -------------------------------------------------------------------

@pytest.mark.parametrize("exc, expected", [
    (ccxt.RequestTimeout("t"), TransientVenueError),
    (ccxt.DDoSProtection("d"), TransientVenueError),
    (ccxt.RateLimitExceeded("r"), TransientVenueError),
    (ccxt.ExchangeNotAvailable("e"), TransientVenueError),
    (ccxt.NetworkError("n"), TransientVenueError),
    (ccxt.BadResponse("b"), TransientVenueError),
    (ccxt.InsufficientFunds("i"), PermanentVenueError),
    (ccxt.InvalidOrder("i"), PermanentVenueError),
    (ccxt.BadSymbol("b"), PermanentVenueError),
    (ccxt.BadRequest("-1013 Filter failure: NOTIONAL"), PermanentVenueError),
    (ccxt.AuthenticationError("a"), AuthenticationVenueError),
    (ccxt.PermissionDenied("p"), AuthenticationVenueError),
    (ccxt.OrderNotFound("o"), OrderNotFound),
    (KeyError("price"), TransientVenueError),  # ccxt tripped over a reply: outcome unknown
])
def test_ccxt_errors_classified(exc: Exception, expected: type) -> None:
    assert type(classify(exc)) is expected


def test_redaction_of_signatures_listen_keys_and_secrets() -> None:
    text = ("binance GET http://h/api/v3/account?timestamp=1&recvWindow=10000&signature=ab12cd "
            "headers {'X-MBX-APIKEY': 'K3yK3yK3y'} ws://h/ws/abcdef0123456789 listenKey=zz9")
    out = redact(text, ("K3yK3yK3y", "abcdef0123456789"))
    assert "ab12cd" not in out and "K3yK3yK3y" not in out and "zz9" not in out
    assert "abcdef0123456789" not in out and "signature=***" in out and "/api/v3/account" in out


# ---- pacing ---------------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_token_bucket_burst_rate_and_pause() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        await bucket.acquire()
    assert clock.slept == []
    await bucket.acquire()  # the fourth waits for half a second's refill
    assert clock.slept == [pytest.approx(0.5)] and bucket.waits == 1
    bucket.pause(7.0)  # Retry-After: everybody waits it out
    await bucket.acquire()
    assert clock.now == pytest.approx(7.5) and bucket.pauses == 1


def test_backoff_doubles_caps_and_resets() -> None:
    backoff = Backoff(0.5, 4.0, rng=lambda: 1.0)  # no jitter: the upper bound
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5
    assert Backoff(1.0, 8.0, rng=lambda: 0.0).next_delay() == 0.5  # jitter down to half
