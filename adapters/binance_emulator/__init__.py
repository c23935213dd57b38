"""A local, Binance-spot-compatible exchange emulator served over loopback.

Unmodified ccxt (`ccxt.async_support.binance`) talks to it as to the testnet once its URLs point
here (`configure_ccxt`). It replays real OHLCV (or a seeded random walk) bar by bar, matches
orders against those bars, and can inject seeded faults.

    source = CsvBars(shared_data / "binance-spot" / "1h", ["BTC/USDT", "ETH/USDT"], "1h")
    async with BinanceEmulator(["BTC/USDT", "ETH/USDT"], source) as emu:
        ex = configure_ccxt(ccxt.async_support.binance(), emu)
        await ex.load_markets()
        await emu.advance()          # closes the next bar: fills, klines, user events

Modules, one job each:

* `bars`      bar sources (CSV replay, synthetic) and the kline history
* `markets`   symbol ids and the filters advertised in exchangeInfo and enforced on orders
* `state`     the account: balances free/locked, orders, trades (exact Decimal)
* `matching`  order validation, fills, fees; execution model documented there
* `payloads`  Binance JSON bodies and stream events
* `auth`      HMAC-SHA256 signatures, API key, timestamp/recvWindow
* `faults`    seeded fault injection (`FaultConfig`)
* `http_api`  REST routes (aiohttp.web); `ws_api` websocket streams
* `server`    the `BinanceEmulator` facade, `configure_ccxt`, `run_emulator`

Clocks: authentication uses the wall clock (ccxt stamps requests with it, and /api/v3/time
reports it); everything about the market (klines, order and trade times, stream event times) is
market time, the close time of the last closed bar. REST klines hold closed bars only: unlike
Binance, there is no still-forming last kline.
"""

from .bars import BarSource, CsvBars, KlineHistory, SyntheticBars
from .faults import FaultConfig
from .server import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    Balance,
    BinanceEmulator,
    OrderView,
    TradeView,
    configure_ccxt,
    run_emulator,
)

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_API_SECRET",
    "Balance",
    "BarSource",
    "BinanceEmulator",
    "CsvBars",
    "FaultConfig",
    "KlineHistory",
    "OrderView",
    "SyntheticBars",
    "TradeView",
    "configure_ccxt",
    "run_emulator",
]
