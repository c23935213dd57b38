"""`BinanceEmulator`: the facade that wires bars, matching, REST and websockets together, plus
`configure_ccxt` (point a ccxt binance instance at it) and `run_emulator` (the CLI entry).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from adapters.ccxt_exchange import rewrite_urls
from daemon.events import Bar
from risk.market_rules import MarketRules

from . import payloads
from .auth import Credentials
from .bars import INTERVALS, BarSource, CsvBars, KlineHistory, SyntheticBars, from_ms, interval_name
from .faults import FaultConfig, FaultInjector
from .http_api import ApiContext, build_app
from .markets import SymbolSpec, dec, default_rules, market_id
from .matching import FeeAsset, MatchingEngine
from .state import Account, Order, Trade
from .ws_api import ListenKeys, StreamHub

# Not secrets: fixed, public test keys shaped like Binance's (64 alphanumerics), since the
# emulator checks the key format as Binance does.
DEFAULT_API_KEY = "EmulatorApiKey" + "0123456789" * 5
DEFAULT_API_SECRET = "EmulatorSecret" + "9876543210" * 5


@dataclass(frozen=True, slots=True)
class Balance:
    free: float
    locked: float

    @property
    def total(self) -> float:
        return self.free + self.locked


@dataclass(frozen=True, slots=True)
class OrderView:
    order_id: int
    client_order_id: str
    symbol: str
    side: str           # BUY / SELL, as Binance
    type: str
    status: str         # Binance status: NEW, FILLED, CANCELED, EXPIRED
    quantity: float
    filled: float
    price: float | None
    average_price: float | None
    time: datetime


@dataclass(frozen=True, slots=True)
class TradeView:
    trade_id: int
    order_id: int
    client_order_id: str
    symbol: str
    side: str
    price: float
    qty: float
    fee: float
    fee_asset: str
    is_maker: bool
    time: datetime


class BinanceEmulator:
    """A Binance spot exchange on 127.0.0.1: REST on `http_url`, streams on `ws_url`.

    Bars come from `bar_source`; the first `history_bars` timestamps are closed at construction
    (history for REST klines and the first last-price), after that the market moves only on
    `await advance()` or, with `bar_period_s`, on a timer. Market filters come from `markets`
    or `MarketRules.synthetic` at each symbol's first price. `fee_asset`: "quote" charges
    every fee in the quote asset, "received" as Binance does by default (see `matching`).
    """

    def __init__(self, symbols: Sequence[str], bar_source: BarSource,
                 balances: Mapping[str, float] | None = None, fee_bps: float = 10.0,
                 slippage_bps: float = 0.0, api_key: str = DEFAULT_API_KEY,
                 api_secret: str = DEFAULT_API_SECRET, faults: FaultConfig | None = None,
                 seed: int = 0, *, host: str = "127.0.0.1", port: int = 0, ws_port: int = 0,
                 history_bars: int = 100, bar_period_s: float | None = None,
                 markets: Mapping[str, MarketRules] | None = None,
                 unique_client_order_ids: bool = True, fee_asset: FeeAsset = "quote") -> None:
        missing = set(symbols) - set(bar_source.symbols)
        if missing:
            raise ValueError(f"bar source has no bars for {sorted(missing)}")
        if history_bars < 1:
            raise ValueError("history_bars must be >= 1: the market needs a last price")
        self.symbols = list(symbols)
        self.interval_s = bar_source.interval_s
        self.api_key, self.api_secret = api_key, api_secret
        self._host, self._port, self._ws_port = host, port, ws_port
        self._bar_period_s = bar_period_s
        self._bars: Iterator[list[Bar]] = iter(bar_source)
        self._bars_consumed = 0
        self.exhausted = False
        self.history = KlineHistory()
        self._injector = FaultInjector(faults or FaultConfig(), seed)
        self._listen_keys = ListenKeys()
        self._hub = StreamHub(self._injector, self._listen_keys,
                              Credentials(api_key, api_secret))

        warmup: list[list[Bar]] = []
        first_price: dict[str, float] = {}
        for _ in range(history_bars):
            bars = self._next_bars()
            if bars is None:
                break
            warmup.append(bars)
            for b in bars:
                first_price.setdefault(b.symbol, b.close)
        specs: dict[str, SymbolSpec] = {}
        for symbol in self.symbols:
            rules = (markets or {}).get(symbol)
            if rules is None:
                if symbol not in first_price:
                    raise ValueError(f"{symbol} has no bar in the first {history_bars}: pass "
                                     "`markets` or start the source later")
                rules = default_rules(symbol, first_price[symbol])
            specs[market_id(symbol)] = SymbolSpec.from_rules(rules)
        account = Account()
        for asset, amount in (balances if balances is not None else {"USDT": 10_000.0}).items():
            account.credit(asset, dec(amount))
        self.engine = MatchingEngine(specs, account, fee_bps, slippage_bps,
                                     unique_client_order_ids, fee_asset)
        self.engine.subscribe(self._hub.publish_user)
        for bars in warmup:
            self._close(bars, publish=False)

        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self.http_port = 0

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        ctx = ApiContext(engine=self.engine, history=self.history,
                         creds=Credentials(self.api_key, self.api_secret),
                         faults=self._injector, listen_keys=self._listen_keys,
                         interval_s=self.interval_s, stopping=self._stopping)
        app = build_app(ctx)
        app.router.add_post("/_emulator/advance", self._admin_advance)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self.http_port = self._runner.addresses[0][1]
        await self._hub.start(self._host, self._ws_port)
        if self._bar_period_s:
            self._timer = asyncio.create_task(self._tick(self._bar_period_s))

    async def stop(self) -> None:
        self._stopping.set()  # releases requests held by the timeout fault
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        await self._hub.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> BinanceEmulator:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    @property
    def http_url(self) -> str:
        return f"http://{self._host}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self._host}:{self._hub.port}"

    # ---- market ---------------------------------------------------------------------------

    async def advance(self) -> list[Bar]:
        """Close the next timestamp's bars: fill resting orders, push closed klines. Returns
        the bars ([] once the source is exhausted)."""
        bars = self._next_bars()
        if bars is None:
            self.exhausted = True
            return []
        self._close(bars, publish=True)
        await asyncio.sleep(0)
        return bars

    @property
    def clock(self) -> datetime:
        """Market time: the close time of the last closed bar."""
        return from_ms(self.engine.now_ms)

    def _next_bars(self) -> list[Bar] | None:
        for bars in self._bars:
            self._bars_consumed += 1
            wanted = [b for b in bars if b.symbol in self.symbols]
            if wanted:
                return wanted
        return None

    def _close(self, bars: list[Bar], publish: bool) -> None:
        # Fills happen during the bar, so their reports go out before the bar's closed kline.
        self.engine.on_bars(bars)
        for bar in bars:
            self.history.append(market_id(bar.symbol), bar)
            if publish:
                stream = f"{market_id(bar.symbol).lower()}@kline_{interval_name(bar.interval_s)}"
                self._hub.publish_market(stream, payloads.kline_event(bar, True,
                                                                      self.engine.now_ms))

    async def _tick(self, period: float) -> None:
        while not self.exhausted:
            await asyncio.sleep(period)
            await self.advance()

    async def _admin_advance(self, request: web.Request) -> web.Response:
        """Lets a test in another process drive the market: POST /_emulator/advance?n=3."""
        n = int(request.query.get("n", "1"))
        closed = [[payloads.kline_row(b) for b in await self.advance()] for _ in range(n)]
        return web.json_response({"closed": closed, "exhausted": self.exhausted})

    # ---- faults ---------------------------------------------------------------------------

    @property
    def faults(self) -> FaultConfig:
        return self._injector.config

    @faults.setter
    def faults(self, config: FaultConfig) -> None:
        self._injector.config = config

    @property
    def faults_injected(self) -> dict[str, int]:
        return dict(self._injector.counts)

    @property
    def ws_connections(self) -> int:
        return self._hub.connections

    # ---- inspection -----------------------------------------------------------------------

    def balances(self) -> dict[str, Balance]:
        acct = self.engine.account
        return {a: Balance(float(acct.free.get(a, 0)), float(acct.locked.get(a, 0)))
                for a in acct.assets()}

    def orders(self) -> list[OrderView]:
        return [self._order_view(o) for o in self.engine.account.orders.values()]

    def trades(self) -> list[TradeView]:
        return [self._trade_view(t) for t in self.engine.account.trades]

    def _symbol(self, symbol_id: str) -> str:
        return self.engine.specs[symbol_id].symbol

    def _order_view(self, o: Order) -> OrderView:
        avg = float(o.cum_quote / o.executed_qty) if o.executed_qty else None
        return OrderView(o.order_id, o.client_order_id, self._symbol(o.symbol_id), o.side,
                         o.type, o.status, float(o.orig_qty), float(o.executed_qty),
                         float(o.price) if o.type != "MARKET" else None, avg, from_ms(o.time))

    def _trade_view(self, t: Trade) -> TradeView:
        return TradeView(t.trade_id, t.order_id, t.client_order_id, self._symbol(t.symbol_id),
                         t.side, float(t.price), float(t.qty), float(t.commission),
                         t.commission_asset, t.is_maker, from_ms(t.time))

    # ---- persistence ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state. Restore it into an emulator built with the same bar source."""
        return {"account": self.engine.account.snapshot(), "bars_consumed": self._bars_consumed,
                "now_ms": self.engine.now_ms,
                "last_price": {k: str(v) for k, v in self.engine.last_price.items()}}

    def restore(self, state: Mapping[str, Any]) -> None:
        if state["bars_consumed"] < self._bars_consumed:
            raise ValueError("snapshot is older than this emulator's market; build a fresh one")
        while self._bars_consumed < state["bars_consumed"]:
            bars = self._next_bars()
            if bars is None:
                break
            self._close(bars, publish=False)
        self.engine.account = Account.restore(state["account"])
        self.engine.now_ms = state["now_ms"]
        self.engine.last_price = {k: Decimal(v) for k, v in state["last_price"].items()}


# ---- ccxt -----------------------------------------------------------------------------------

def configure_ccxt(exchange: Any, emu: BinanceEmulator, *, spot_only: bool = True) -> Any:
    """Point a ccxt `binance` instance (sync, async or pro) at the emulator.

    Every URL under `urls['api']` (and `urls['test']`/`urls['demo']`, which
    `set_sandbox_mode`/demo trading swap in) keeps its path but gets the emulator's host, so no
    request can leak to binance.com. Keys are set when the instance has none. `spot_only`
    makes `load_markets()` one request (exchangeInfo) instead of also asking for futures
    markets, currencies and margin pairs (which the emulator answers, emptily).
    """
    for key in ("api", "test", "demo"):
        if isinstance(exchange.urls.get(key), dict):
            exchange.urls[key] = rewrite_urls(exchange.urls[key], emu.http_url, emu.ws_url)
    if not exchange.apiKey:
        exchange.apiKey, exchange.secret = emu.api_key, emu.api_secret
    if spot_only:
        fetch_markets = exchange.options.get("fetchMarkets")
        exchange.options["fetchMarkets"] = {
            **(fetch_markets if isinstance(fetch_markets, dict) else {}), "types": ["spot"]}
        exchange.options["fetchCurrencies"] = False
        exchange.options["fetchMargins"] = False
    return exchange


# ---- CLI entry ------------------------------------------------------------------------------

def _csv_dir(data_dir: Path, interval: str) -> Path:
    for candidate in (data_dir / "binance-spot" / interval, data_dir / interval, data_dir):
        if candidate.is_dir() and any(candidate.glob("*.csv")):
            return candidate
    raise FileNotFoundError(f"no CSV files for {interval} under {data_dir}")


async def run_emulator(host: str = "127.0.0.1", port: int = 0, ws_port: int = 0,
                       data_dir: Path | str | None = None,
                       symbols: Iterable[str] = ("BTC/USDT", "ETH/USDT"), interval: str = "1h",
                       *, start: datetime | None = None, end: datetime | None = None,
                       bar_period_s: float | None = 1.0,
                       balances: Mapping[str, float] | None = None, fee_bps: float = 10.0,
                       slippage_bps: float = 0.0, api_key: str = DEFAULT_API_KEY,
                       api_secret: str = DEFAULT_API_SECRET, faults: FaultConfig | None = None,
                       seed: int = 0, history_bars: int = 100,
                       on_ready: Callable[[BinanceEmulator], None] | None = None) -> None:
    """Serve until cancelled. Bars replay from `data_dir` (the shared-data root, its
    `binance-spot/<interval>` folder or any folder of `BASE-QUOTE.csv`), else a seeded random
    walk; one bar closes every `bar_period_s` (None: only POST /_emulator/advance moves it)."""
    symbols = list(symbols)
    if interval not in INTERVALS:
        raise ValueError(f"unknown interval {interval!r}")
    source: BarSource
    if data_dir is not None:
        source = CsvBars(_csv_dir(Path(data_dir), interval), symbols, interval, start, end)
    else:
        source = SyntheticBars(symbols, INTERVALS[interval], seed=seed)
    emu = BinanceEmulator(symbols, source, balances, fee_bps, slippage_bps, api_key, api_secret,
                          faults, seed, host=host, port=port, ws_port=ws_port,
                          history_bars=history_bars, bar_period_s=bar_period_s)
    async with emu:
        if on_ready is not None:
            on_ready(emu)
        await asyncio.Event().wait()
