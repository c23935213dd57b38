"""The `[exchange]` configuration and everything about a ccxt exchange object that the venue and
the market-data feed share: construction (sandbox/demo, URL overrides, keys from the
environment), the classification of ccxt errors into venue errors, and redaction of secrets.

Keys are read from environment variables named in the config, never from the file. They, the
request signatures and listen keys never reach a log line or an error message: every message
built from a ccxt exception goes through `redact`.
"""

from __future__ import annotations

import contextvars
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import ccxt
import ccxt.async_support as ccxt_async

from adapters.venue import (
    AuthenticationVenueError,
    OrderNotFound,
    PermanentVenueError,
    TransientVenueError,
    VenueError,
)
from daemon.redact import register_secret
from daemon.settings import ConfigError

# Binance spot market-data websocket bases (ccxt.pro's urls['api'|'test'|'demo']['ws']['spot']
# without the trailing /ws; a test keeps them in step with ccxt.pro).
BINANCE_WS = {"live": "wss://stream.binance.com:9443",
              "sandbox": "wss://stream.testnet.binance.vision",
              "demo": "wss://demo-stream.binance.com"}
# The WebSocket API (ccxt's urls.api.ws['ws-api'].spot): the user data stream since listen keys
# were retired for Spot on 2026-02-20
BINANCE_WS_API = {"live": "wss://ws-api.binance.com:443/ws-api/v3",
                  "sandbox": "wss://ws-api.testnet.binance.vision/ws-api/v3",
                  "demo": "wss://demo-ws-api.binance.com/ws-api/v3"}


@dataclass(frozen=True)
class StreamConfig:
    """[exchange.stream]: the websocket kline feed and the user data stream."""

    bar_deadline_s: float = field(default=10.0, metadata={
        "doc": "after the first kline of a timestamp closes, wait this long for the other "
               "symbols; then fetch the stragglers over REST, and emit without those still "
               "missing", "min": 0.0, "exclusive_min": True, "unit": "s"})
    idle_timeout_s: float = field(default=90.0, metadata={
        "doc": "reconnect when a market-data connection delivers nothing for this long "
               "(Binance pushes kline updates every 2 s)", "min": 0.0, "exclusive_min": True,
        "unit": "s"})
    ping_interval_s: float = field(default=20.0, metadata={
        "doc": "websocket ping period; a pong missing for as long drops the connection",
        "min": 0.0, "exclusive_min": True, "unit": "s"})
    reconnect_min_s: float = field(default=0.5, metadata={
        "doc": "first reconnect delay; doubles per failed attempt, with jitter",
        "min": 0.0, "exclusive_min": True, "unit": "s"})
    reconnect_max_s: float = field(default=30.0, metadata={
        "doc": "cap on one reconnect delay", "min": 0.0, "exclusive_min": True, "unit": "s"})
    backfill_attempts: int = field(default=8, metadata={
        "doc": "REST attempts to fill a gap in the bars before giving up on it (counted as "
               "gaps_unfilled)", "min": 1, "max": 100})
    warmup_bars: int | None = field(default=None, metadata={
        "doc": "closed bars fetched over REST at start so the allocator has history at once; "
               "unset = allocation.lookback_bars + 1; 0 = none", "min": 0, "max": 1000})
    user_stream_api: str = field(default="ws_api", metadata={
        "doc": "binance: how the user data stream is opened. ws_api = a signed "
               "userDataStream.subscribe.signature on the WebSocket API (HMAC keys); "
               "listen_key = the REST listen key Binance retired for Spot on 2026-02-20 "
               "(for venues that still serve it)", "choices": ("ws_api", "listen_key")})
    user_stream: bool = field(default=True, metadata={
        "doc": "binance: fills from the user data stream (user_stream_api); REST polling of own "
               "trades always backs it up"})
    listen_key_keepalive_s: float = field(default=1800.0, metadata={
        "doc": "user_stream_api = listen_key: PUT keep-alive period of the listen key "
               "(Binance expires it after 60 min)",
        "min": 1.0, "max": 3500.0, "unit": "s"})


@dataclass(frozen=True)
class ExchangeConfig:
    """[exchange]: the ccxt venue used in testnet mode."""

    id: str = field(default="binance", metadata={
        "doc": "ccxt exchange id: binance (first class), bybit, okx, ..."})
    sandbox: bool = field(default=True, metadata={
        "doc": "call ccxt set_sandbox_mode(true): the exchange's testnet (binance: "
               "testnet.binance.vision; bybit: api-testnet.bybit.com; okx: demo trading header)"})
    demo: bool = field(default=False, metadata={
        "doc": "call ccxt enable_demo_trading(true) instead (bybit demo trading, binance demo); "
               "excludes sandbox"})
    api_key_env: str = field(default="TRADINGD_API_KEY", metadata={
        "doc": "environment variable holding the API key"})
    api_secret_env: str = field(default="TRADINGD_API_SECRET", metadata={
        "doc": "environment variable holding the API secret"})
    password_env: str = field(default="TRADINGD_API_PASSWORD", metadata={
        "doc": "environment variable holding the API passphrase (okx); read only when set"})
    rest_url: str = field(default="", metadata={
        "doc": "override the host of every REST URL, e.g. http://127.0.0.1:8765 for "
               "`tradingd emulator`; empty = the exchange's own"})
    ws_url: str = field(default="", metadata={
        "doc": "override the market/user-data websocket base, e.g. ws://127.0.0.1:8766; "
               "empty = the exchange's own"})
    timeout_s: float = field(default=10.0, metadata={
        "doc": "HTTP timeout of one REST call", "min": 0.1, "max": 120.0, "unit": "s"})
    max_requests_per_s: float = field(default=10.0, metadata={
        "doc": "our own token bucket in front of ccxt's rate limiter: REST calls per second",
        "min": 0.0, "exclusive_min": True})
    burst: int = field(default=10, metadata={
        "doc": "token bucket size: calls allowed back to back", "min": 1, "max": 1000})
    ccxt_rate_limit_ms: float | None = field(default=None, metadata={
        "doc": "ccxt's rateLimit (ms per unit of request weight); unset = ccxt's value for the "
               "exchange", "min": 0.0})
    market_refresh_s: float = field(default=3600.0, metadata={
        "doc": "reload markets (lot steps, ticks, minimum notional) this often",
        "min": 1.0, "unit": "s"})
    fills_poll_s: float = field(default=5.0, metadata={
        "doc": "poll own trades over REST this often while no user data stream is live",
        "min": 0.01, "unit": "s"})
    fills_audit_s: float = field(default=60.0, metadata={
        "doc": "poll own trades this often even while the stream is live: a stream can lose "
               "messages without dropping", "min": 0.01, "unit": "s"})
    fee_bps: float = field(default=10.0, metadata={
        "doc": "taker fee the rebalancer plans with, basis points, when the exchange's markets "
               "do not give one (ccxt market `taker`)", "min": 0.0, "max": 1000.0})
    stream: StreamConfig = field(default_factory=StreamConfig)

    def check(self) -> None:
        if self.id not in ccxt.exchanges:
            raise ConfigError("id", self.id, "not a ccxt exchange id (see ccxt.exchanges)")
        if self.sandbox and self.demo:
            raise ConfigError("demo", self.demo, "sandbox and demo exclude each other")
        for key, schemes in (("rest_url", ("http", "https")), ("ws_url", ("ws", "wss"))):
            value = getattr(self, key)
            if value and (urlsplit(value).scheme not in schemes or not urlsplit(value).netloc):
                raise ConfigError(key, value, f"must be a {'/'.join(schemes)}:// URL or empty")
        for key in ("api_key_env", "api_secret_env", "password_env"):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", getattr(self, key)):
                raise ConfigError(key, getattr(self, key), "must be an environment variable name")

    @property
    def environment(self) -> str:
        return "sandbox" if self.sandbox else "demo" if self.demo else "live"

    def market_ws_url(self) -> str:
        if self.ws_url:
            return self.ws_url.rstrip("/")
        if self.id != "binance":
            raise ConfigError("exchange.id", self.id,
                              "websocket market data is implemented for binance only")
        return BINANCE_WS[self.environment]

    def ws_api_url(self) -> str:
        """The WebSocket API endpoint (with ws_url set: its host, Binance's path)."""
        if self.ws_url:
            return self.ws_url.rstrip("/") + "/ws-api/v3"
        if self.id != "binance":
            raise ConfigError("exchange.id", self.id,
                              "the websocket user data stream is implemented for binance only")
        return BINANCE_WS_API[self.environment]


# ---- construction ---------------------------------------------------------------------------

# Retry-After of the response being handled, per asyncio task (each REST call runs in its
# caller's task, so concurrent calls never see each other's headers).
_retry_after: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "retry_after", default=None)
_classes: dict[type, type] = {}


def _header_capturing(cls: type) -> type:
    """A subclass whose only change is ccxt's documented `on_rest_response` hook: it notes the
    Retry-After header before ccxt raises for a 418/429, so the error can carry it."""
    if cls not in _classes:
        def on_rest_response(self: Any, code: Any, reason: Any, url: Any, method: Any,
                             response_headers: Any, response_body: Any, request_headers: Any,
                             request_body: Any) -> Any:
            _retry_after.set(_parse_retry_after(response_headers))
            return super(sub, self).on_rest_response(code, reason, url, method, response_headers,
                                                     response_body, request_headers, request_body)

        sub = type(cls.__name__, (cls,), {"on_rest_response": on_rest_response})
        _classes[cls] = sub
    return _classes[cls]


def _parse_retry_after(headers: Any) -> float | None:
    if not headers:
        return None
    for key, value in dict(headers).items():
        if str(key).lower() == "retry-after":
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                return None  # an HTTP date: rare from exchanges; the backoff applies instead
            return seconds if seconds >= 0 else None
    return None


@dataclass(frozen=True)
class Credentials:
    api_key: str
    secret: str
    password: str = ""

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.api_key, self.secret, self.password) if s)


def read_credentials(cfg: ExchangeConfig, environ: dict[str, str] | None = None) -> Credentials:
    """Keys from the environment. Missing keys are an authentication error naming the
    variables (never their values): trading cannot start without them."""
    env = os.environ if environ is None else environ
    key, secret = env.get(cfg.api_key_env, "").strip(), env.get(cfg.api_secret_env, "").strip()
    missing = [name for name, value in ((cfg.api_key_env, key), (cfg.api_secret_env, secret))
               if not value]
    if missing:
        raise AuthenticationVenueError(
            f"{cfg.id} API credentials missing: set the environment variable(s) "
            f"{', '.join(missing)} (exchange.api_key_env / exchange.api_secret_env)")
    credentials = Credentials(key, secret, env.get(cfg.password_env, "").strip())
    for value in credentials.secrets():
        register_secret(value)  # scrubbed from every log line from now on
    return credentials


def build_exchange(cfg: ExchangeConfig, credentials: Credentials | None = None) -> Any:
    """A `ccxt.async_support` exchange per the config: rate limiter on, sandbox or demo URLs,
    spot markets only, hosts overridden when `rest_url`/`ws_url` are set."""
    cls = getattr(ccxt_async, cfg.id)
    params: dict[str, Any] = {"enableRateLimit": True, "timeout": int(cfg.timeout_s * 1000),
                              # the exchange's clock, not ours, stamps signed requests
                              "options": {"adjustForTimeDifference": True}}
    if cfg.ccxt_rate_limit_ms is not None:
        params["rateLimit"] = cfg.ccxt_rate_limit_ms
    if credentials is not None:
        params.update(apiKey=credentials.api_key, secret=credentials.secret)
        if credentials.password:
            params["password"] = credentials.password
    exchange = _header_capturing(cls)(params)
    if cfg.sandbox:
        exchange.set_sandbox_mode(True)
    elif cfg.demo:
        exchange.enable_demo_trading(True)
    # Spot only: no futures/option market lists, no private currency/margin calls at start.
    fetch_markets = exchange.options.get("fetchMarkets")
    exchange.options["fetchMarkets"] = {
        **(fetch_markets if isinstance(fetch_markets, dict) else {}), "types": ["spot"]}
    exchange.options["fetchCurrencies"] = False
    exchange.options["fetchMargins"] = False
    if cfg.id == "binance":
        # A signed request older than recvWindow is refused by Binance. Tied to our timeout,
        # a request we gave up on cannot still be executed after we asked for it by client
        # order id and were told "not found" (ccxt signs after its own throttle wait).
        exchange.options["recvWindow"] = min(max(int(cfg.timeout_s * 1000), 1000), 59_000)
    if cfg.rest_url or cfg.ws_url:
        for key in ("api", "test", "demo", "demotrading"):
            if isinstance(exchange.urls.get(key), dict | str):
                exchange.urls[key] = rewrite_urls(exchange.urls[key], cfg.rest_url, cfg.ws_url)
    return exchange


def rewrite_urls(node: Any, http_base: str, ws_base: str) -> Any:
    """Keep each URL's path, replace scheme and host (REST by `http_base`, ws by `ws_base`)."""
    if isinstance(node, dict):
        return {k: rewrite_urls(v, http_base, ws_base) for k, v in node.items()}
    if isinstance(node, str) and "://" in node:
        parts = urlsplit(node)
        base = ws_base if parts.scheme in ("ws", "wss") else http_base
        if not base:
            return node
        return base.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")
    return node


# ---- errors ---------------------------------------------------------------------------------

_SECRET_PARAMS = re.compile(
    r"(?i)\b(signature|sign|listenkey|apikey|api_key|api-key|x-mbx-apikey|secret|passphrase|"
    r"access-key|access-sign|access-passphrase)(\"?\s*[=:]\s*\"?)([^&\s\"',}]+)")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with signatures, listen keys and the given secret values replaced by '***'."""
    out = _SECRET_PARAMS.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    for secret in secrets:
        if secret and len(secret) >= 6:
            out = out.replace(secret, "***")
    return out


# The exchange told us to slow down (429/418, or ccxt's own limiter).
RATE_LIMITED: tuple[type[BaseException], ...] = (ccxt.DDoSProtection, ccxt.RateLimitExceeded)
# A request refused before the exchange processed it: a retry cannot duplicate anything.
NOT_PROCESSED: tuple[type[BaseException], ...] = (*RATE_LIMITED, ccxt.InvalidNonce)


def classify(exc: BaseException, secrets: tuple[str, ...] = ()) -> VenueError:
    """A ccxt exception as a venue error. Order matters: OrderNotFound is an InvalidOrder and
    PermissionDenied an AuthenticationError in ccxt's hierarchy."""
    message = redact(f"{type(exc).__name__}: {exc}", secrets)
    if isinstance(exc, VenueError):
        return exc
    if isinstance(exc, ccxt.OrderNotFound):
        return OrderNotFound(message)
    if isinstance(exc, ccxt.AuthenticationError):  # includes PermissionDenied, AccountSuspended
        return AuthenticationVenueError(
            f"{message} — the exchange refused our API key: check the key, its permissions "
            f"(spot trading) and IP whitelist; trading halts until fixed")
    if isinstance(exc, ccxt.NetworkError | ccxt.BadResponse | ccxt.CancelPending):
        # NetworkError covers RequestTimeout, DDoSProtection, RateLimitExceeded,
        # ExchangeNotAvailable, OnMaintenance and InvalidNonce; a malformed reply
        # (BadResponse) leaves the outcome unknown just like a lost one.
        return TransientVenueError(message, retry_after=_retry_after.get())
    if isinstance(exc, ccxt.ExchangeError):
        # InsufficientFunds, InvalidOrder, BadSymbol, BadRequest (Binance NOTIONAL filter
        # failures arrive as BadRequest), NotSupported, OperationRejected, …
        return PermanentVenueError(message)
    # Anything else (an unexpected exception while ccxt parsed a reply): the outcome is
    # unknown, so treat it like a lost response and resolve by asking the exchange.
    return TransientVenueError(f"unexpected {message}")


def reset_retry_after() -> None:
    _retry_after.set(None)
