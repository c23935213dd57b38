"""The daemon's configuration: `config.toml` read with tomllib into typed, frozen objects.

Each table maps to a frozen dataclass; the sections of `risk/` and `adapters/` are declared next
to the code that uses them. `load_config` raises `ConfigError` naming the key, the value and what
is allowed; the CLI turns that into one line on stderr and exit code 2.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from adapters.ccxt_exchange import ExchangeConfig
from adapters.paper import PaperVenueConfig
from adapters.replay import ReplayConfig
from adapters.simulated import SimulatedMarketConfig
from daemon.control import ControlConfig
from daemon.health import HealthConfig
from daemon.http_api import HttpConfig
from daemon.oms import OmsConfig, RetryConfig
from daemon.rebalancer import RebalanceConfig
from daemon.secrets import SecretsConfig
from daemon.settings import ConfigError, load
from daemon.strategy_targets import StrategiesConfig
from risk.allocation import AllocationConfig
from risk.limits import RiskLimits

INTERVALS = {"1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "2h": 7200,
             "4h": 14_400, "6h": 21_600, "12h": 43_200, "1d": 86_400}


@dataclass(frozen=True)
class DaemonConfig:
    mode: Literal["paper", "testnet"] = field(default="paper", metadata={
        "doc": "paper: in-process paper venue, no network; testnet: ccxt venue + websocket "
               "market data against the exchange's sandbox"})
    state_dir: str = field(default="state", metadata={
        "doc": "journal and state files; relative paths are relative to the config file"})
    log_level: Literal["debug", "info", "warning", "error"] = field(default="info", metadata={
        "doc": "lowest level written to the log"})


@dataclass(frozen=True)
class MarketConfig:
    source: Literal["simulated", "replay"] = field(default="simulated", metadata={
        "doc": "where bars come from in paper mode: simulated market or CSV replay"})
    symbols: list[str] = field(default_factory=lambda: ["BTC/USDT", "ETH/USDT"], metadata={
        "doc": "markets to trade, ccxt style BASE/QUOTE, all in the quote currency"})
    quote: str = field(default="USDT", metadata={"doc": "quote (cash) currency"})
    interval: str = field(default="1h", metadata={
        "doc": "bar interval", "choices": tuple(INTERVALS)})
    simulated: SimulatedMarketConfig = field(default_factory=SimulatedMarketConfig)
    replay: ReplayConfig | None = field(default=None, metadata={
        "doc": "CSV replay settings; required when source = \"replay\""})

    @property
    def interval_s(self) -> int:
        return INTERVALS[self.interval]

    def check(self) -> None:
        if not self.symbols:
            raise ConfigError("market.symbols", self.symbols, "must name at least one market")
        for i, symbol in enumerate(self.symbols):
            base, sep, quote = symbol.partition("/")
            if not sep or not base or quote != self.quote:
                raise ConfigError(f"market.symbols[{i}]", symbol,
                                  f"must look like BASE/{self.quote} (quote = market.quote)")
        if len(set(self.symbols)) != len(self.symbols):
            raise ConfigError("market.symbols", self.symbols, "must not repeat a symbol")
        if self.source == "replay" and self.replay is None:
            raise ConfigError("market.replay", None,
                              'a [market.replay] table with data_dir is required for '
                              'source = "replay"')


@dataclass(frozen=True)
class VenueConfig:
    paper: PaperVenueConfig = field(default_factory=PaperVenueConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    market: MarketConfig = field(default_factory=MarketConfig)
    venue: VenueConfig = field(default_factory=VenueConfig)
    rebalance: RebalanceConfig = field(default_factory=RebalanceConfig)
    allocation: AllocationConfig = field(default_factory=AllocationConfig)
    risk: RiskLimits = field(default_factory=RiskLimits)
    oms: OmsConfig = field(default_factory=OmsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    exchange: ExchangeConfig = field(default_factory=ExchangeConfig)
    strategies: StrategiesConfig = field(default_factory=StrategiesConfig)
    path: str = field(default="", metadata={"doc": "(set by the loader)"})

    def check(self) -> None:
        if self.rebalance.max_child_notional > self.risk.max_order_notional:
            raise ConfigError("rebalance.max_child_notional", self.rebalance.max_child_notional,
                              f"must be <= risk.max_order_notional "
                              f"({self.risk.max_order_notional:g}), or every large trade is "
                              f"rejected by the risk gate")
        for key, symbol in self.risk.unknown_symbols(self.market.symbols):
            raise ConfigError(key, symbol, "not in market.symbols: this limit would cover nothing")
        if self.daemon.mode == "testnet" and self.exchange.id != "binance" \
                and not self.exchange.ws_url:
            raise ConfigError("exchange.id", self.exchange.id,
                              'daemon.mode = "testnet" streams market data from Binance\'s '
                              "kline websocket: use binance, or set exchange.ws_url to a "
                              "Binance-compatible stream")

    @property
    def state_path(self) -> Path:
        state = Path(self.daemon.state_dir)
        if not state.is_absolute() and self.path:
            state = Path(self.path).resolve().parent / state
        return state


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config", str(path), "file not found") from None
    except OSError as exc:
        raise ConfigError("config", str(path), f"cannot be read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", str(path), f"is not valid TOML: {exc}") from None
    return _build(data, str(path))


def parse_config(text: str, path: str = "<string>") -> Config:
    """For tests and `check-config` on text."""
    return _build(tomllib.loads(text), path)


# Keys the feed tables share with [market]: one place to say them, so none is silently ignored.
_OWNED_BY_MARKET = {"simulated": ("symbols", "interval_s"), "replay": ("symbols", "interval_s")}


def _build(data: dict[str, object], path: str) -> Config:
    if "path" in data:
        raise ConfigError("path", data["path"], "unknown key")
    market = data.get("market")
    if isinstance(market, dict):
        for table, keys in _OWNED_BY_MARKET.items():
            sub = market.get(table)
            for key in keys:
                if isinstance(sub, dict) and key in sub:
                    where = "market.symbols" if key == "symbols" else "market.interval"
                    raise ConfigError(f"market.{table}.{key}", sub[key],
                                      f"not allowed here: set {where} instead")
    return load(Config, {**data, "path": path})
