"""A seeded simulated market: correlated CCC-GARCH(1,1) log returns, OHLCV bars.

Model, per bar t and asset i (constant-conditional-correlation GARCH):

    z_t   ~ N(0, C)                              C: equicorrelation `correlation`, optionally
                                                 overridden pairwise; drawn via its Cholesky factor
    h_t,i = ω_i + α ε²_{t-1,i} + β h_{t-1,i}      ω_i = σ²_i (1 - α - β), so E[h] = σ²_i
    ε_t,i = sqrt(h_t,i) z_t,i
    r_t,i = μ Δt - h_t,i / 2 + ε_t,i             log return; E[price] grows at `annual_drift`

σ²_i is the asset's annual variance scaled to one bar with 365-day years (crypto trades 24/7).
High and low come from the exact marginal law of the maximum and minimum of a Brownian bridge
from the open to the close with the bar's variance; volume grows with the size of the move and
the current volatility level. The open of a bar is the previous close.

Determinism: draws are made in fixed-size chunks from one PCG64 stream, so a seed and a config
give bit-identical bars however the consumer paces itself or where `max_timestamps` stops.
Changing the symbol list (or `_CHUNK`) changes every stream.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from daemon.events import Bar
from daemon.settings import ConfigError

_SECONDS_PER_YEAR = 365.0 * 86_400.0
# Timestamps drawn per numpy batch. Part of the seed -> bars mapping: changing it changes the
# stream, so it is a constant rather than a setting.
_CHUNK = 2048
# E|Z| for a standard normal: keeps the mean volume multiplier near 1.
_MEAN_ABS_NORMAL = math.sqrt(2.0 / math.pi)

DEFAULT_SYMBOLS = ("BTC/USDT", "ETH/USDT", "BNB/USDT", "SOL/USDT", "XRP/USDT")

# Rough 2022 levels: only the order of magnitude matters (tick and lot rules bite differently on
# a 30,000 asset and a 0.4 one, which is what a simulation should exercise).
DEFAULT_START_PRICES: dict[str, float] = {
    "BTC/USDT": 30_000.0,
    "ETH/USDT": 2_000.0,
    "BNB/USDT": 300.0,
    "SOL/USDT": 40.0,
    "XRP/USDT": 0.5,
    "ADA/USDT": 0.45,
    "DOGE/USDT": 0.08,
    "DOT/USDT": 8.0,
    "LTC/USDT": 60.0,
    "LINK/USDT": 7.0,
    "AVAX/USDT": 20.0,
    "MATIC/USDT": 0.8,
    "TRX/USDT": 0.06,
}
FALLBACK_START_PRICE = 100.0

# Annualised volatilities in the range realised by these pairs in 2020-2022.
DEFAULT_ANNUAL_VOLS: dict[str, float] = {
    "BTC/USDT": 0.60,
    "ETH/USDT": 0.75,
    "BNB/USDT": 0.80,
    "SOL/USDT": 0.90,
    "XRP/USDT": 0.85,
}


@dataclass(frozen=True)
class SimulatedMarketConfig:
    seed: int = field(default=7, metadata={"doc": "random seed; same seed and config, same bars"})
    symbols: list[str] = field(default_factory=lambda: list(DEFAULT_SYMBOLS), metadata={
        "doc": "ccxt-style symbols, BASE/QUOTE"})
    start_prices: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_START_PRICES),
                                           metadata={
        "doc": f"first open per symbol; symbols not listed start at {FALLBACK_START_PRICE}",
        "min": 0.0, "exclusive_min": True})
    interval_s: int = field(default=3600, metadata={
        "doc": "bar length", "unit": "s", "min": 1})
    speed: float = field(default=0.0, metadata={
        "doc": "clock speed: waits interval_s / speed between timestamps; 0 = no waiting",
        "min": 0.0})
    start: str = field(default="2022-01-01", metadata={
        "doc": "open time of the first bar, ISO 8601 date or datetime (naive = UTC)"})
    max_timestamps: int | None = field(default=None, metadata={
        "doc": "stop after this many timestamps; unset = run until closed", "min": 1})
    annual_vol: float = field(default=0.75, metadata={
        "doc": "annualised volatility of symbols absent from annual_vols", "min": 0.0,
        "exclusive_min": True, "max": 5.0})
    annual_vols: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ANNUAL_VOLS),
                                          metadata={
        "doc": "annualised volatility per symbol (365-day years)", "min": 0.0,
        "exclusive_min": True, "max": 5.0})
    annual_drift: float = field(default=0.0, metadata={
        "doc": "expected annual growth of the price (arithmetic drift)", "min": -5.0, "max": 5.0})
    correlation: float = field(default=0.6, metadata={
        "doc": "one-factor market correlation of every pair's shocks (realised return "
               "correlation comes out ~0.03 lower: each asset's GARCH variance moves on its own)",
        "min": 0.0, "max": 0.99})
    correlations: dict[str, float] = field(default_factory=dict, metadata={
        "doc": 'pairwise overrides keyed "A/Q,B/Q", e.g. {"BTC/USDT,ETH/USDT" = 0.85}',
        "min": -0.99, "max": 0.99})
    garch_alpha: float = field(default=0.08, metadata={
        "doc": "GARCH(1,1) reaction to the last squared shock", "min": 0.0, "max": 1.0,
        "exclusive_max": True})
    garch_beta: float = field(default=0.90, metadata={
        "doc": "GARCH(1,1) persistence of variance; alpha + beta < 1", "min": 0.0, "max": 1.0,
        "exclusive_max": True})
    daily_volume_quote: float = field(default=500_000_000.0, metadata={
        "doc": "mean quote-currency notional traded per symbol per day", "unit": "quote",
        "min": 0.0, "exclusive_min": True})

    def check(self) -> None:
        if not self.symbols:
            raise ConfigError("symbols", self.symbols, "needs at least one symbol")
        if len(set(self.symbols)) != len(self.symbols):
            raise ConfigError("symbols", self.symbols, "must not repeat a symbol")
        for s in self.symbols:
            if s.count("/") != 1 or s.startswith("/") or s.endswith("/"):
                raise ConfigError("symbols", s, "must be BASE/QUOTE")
        if self.garch_alpha + self.garch_beta >= 1.0:
            raise ConfigError("garch_beta", self.garch_beta,
                              f"garch_alpha + garch_beta must be < 1 (alpha={self.garch_alpha})")
        try:
            parse_utc(self.start)
        except ValueError as exc:
            raise ConfigError("start", self.start, "must be an ISO 8601 date or datetime") from exc
        correlation_matrix(self)  # raises ConfigError for unknown pairs or a non-PD matrix


def parse_utc(text: str) -> datetime:
    """ISO 8601 date or datetime -> aware UTC datetime; a naive value is taken as UTC."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def correlation_matrix(cfg: SimulatedMarketConfig) -> np.ndarray:
    """Equicorrelation `cfg.correlation` with the pairwise overrides applied; must be PD."""
    n = len(cfg.symbols)
    c = np.full((n, n), cfg.correlation)
    np.fill_diagonal(c, 1.0)
    index = {s: i for i, s in enumerate(cfg.symbols)}
    for key, rho in cfg.correlations.items():
        pair = [p.strip() for p in key.split(",")]
        if len(pair) != 2 or pair[0] == pair[1] or any(p not in index for p in pair):
            raise ConfigError(f"correlations.{key}", rho,
                              "key must name two different configured symbols: 'A/Q,B/Q'")
        i, j = index[pair[0]], index[pair[1]]
        c[i, j] = c[j, i] = rho
    try:
        np.linalg.cholesky(c)
    except np.linalg.LinAlgError as exc:
        raise ConfigError("correlations", cfg.correlations,
                          "the resulting correlation matrix is not positive definite") from exc
    return c


def _garch(z: list[float], omega: float, alpha: float, beta: float, h: float,
           eps: float) -> tuple[list[float], list[float], float, float]:
    """GARCH(1,1) variances and shocks of one asset over a chunk, from the last (h, eps).

    The recursion is sequential in time. A scalar loop over Python floats costs ~0.2 µs a step;
    numpy across assets costs ~1 µs per operation whatever the width, which is slower below
    about 25 symbols, and most configurations have a handful."""
    hs = [0.0] * len(z)
    es = [0.0] * len(z)
    sqrt = math.sqrt
    for k, zk in enumerate(z):
        h = omega + alpha * eps * eps + beta * h
        eps = sqrt(h) * zk
        hs[k] = h
        es[k] = eps
    return hs, es, h, eps


class Pacer:
    """Paces a feed against a wall clock. Call `wait(sim_seconds)` before emitting each
    timestamp: the first call anchors the schedule and returns at once; each later one returns
    once sim_seconds / speed of real time has passed since the previous timestamp's deadline.

    Deadlines, not plain sleeps, so the consumer's processing time does not stretch the
    simulated clock. A consumer more than one period behind resets the schedule instead of
    receiving a burst of catch-up bars. `clock` and `sleep` are injectable for tests.
    """

    def __init__(self, speed: float, *, clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[object]] | None = None) -> None:
        self.enabled = speed > 0 and math.isfinite(speed)
        self._speed = speed
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._deadline: float | None = None

    async def wait(self, sim_seconds: float) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if self._deadline is None:
            self._deadline = now
            return
        period = sim_seconds / self._speed
        self._deadline += period
        delay = self._deadline - now
        if delay < -period:
            self._deadline = now
        elif delay > 0:
            await self._sleep(delay)


class SimulatedMarket:
    """`BarFeed` over the simulated market. Every call to `bars()` replays the same stream from
    the start; `close()` ends a running stream at its next timestamp."""

    def __init__(self, cfg: SimulatedMarketConfig, *, clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[object]] | None = None) -> None:
        cfg.check()
        self.cfg = cfg
        self.symbols: list[str] = list(cfg.symbols)
        self.interval_s: int = cfg.interval_s
        self._clock, self._sleep = clock, sleep
        self._closed = False

        dt_years = cfg.interval_s / _SECONDS_PER_YEAR
        vols = np.array([cfg.annual_vols.get(s, cfg.annual_vol) for s in self.symbols])
        self._var = vols**2 * dt_years  # unconditional per-bar variance
        self._omega = self._var * (1.0 - cfg.garch_alpha - cfg.garch_beta)
        self._mu = cfg.annual_drift * dt_years
        self._chol = np.linalg.cholesky(correlation_matrix(cfg))
        self._start_prices = np.array(
            [cfg.start_prices.get(s, FALLBACK_START_PRICE) for s in self.symbols])
        self._start = parse_utc(cfg.start)
        self._volume_quote = cfg.daily_volume_quote * cfg.interval_s / 86_400.0

    def chunks(self) -> Iterator[tuple[np.ndarray, ...]]:
        """The raw stream as numpy arrays, shape (_CHUNK, n_symbols) each:
        (open, high, low, close, volume). Endless; `bars()` is built on it."""
        cfg = self.cfg
        rng = np.random.Generator(np.random.PCG64(cfg.seed))
        n = len(self.symbols)
        alpha, beta = cfg.garch_alpha, cfg.garch_beta
        h = self._var.copy()
        eps = np.zeros(n)  # last shock; zero so the first variance is the unconditional one
        log_close = np.log(self._start_prices)
        prev_close = self._start_prices.copy()
        while True:
            z = rng.standard_normal((_CHUNK, n)) @ self._chol.T
            u_high = rng.random((_CHUNK, n))
            u_low = rng.random((_CHUNK, n))
            noise = rng.standard_normal((_CHUNK, n))

            hs = np.empty((_CHUNK, n))
            es = np.empty((_CHUNK, n))
            for i, z_i in enumerate(z.T.tolist()):
                hs[:, i], es[:, i], h[i], eps[i] = _garch(
                    z_i, float(self._omega[i]), alpha, beta, float(h[i]), float(eps[i]))

            r = self._mu - 0.5 * hs + es
            log_open = np.empty((_CHUNK, n))
            log_open[0] = log_close
            path = log_close + np.cumsum(r, axis=0)
            log_open[1:] = path[:-1]
            log_close = path[-1]

            # Max/min of a Brownian bridge 0 -> r with variance h: P(M > m) = exp(-2m(m-r)/h),
            # inverted. Exact marginals; max and min are drawn independently, which real paths
            # are not, but the Parkinson (high-low) volatility matches the close-to-close one.
            # 1 - u lies in (0, 1], so the logs are finite.
            up = 0.5 * (r + np.sqrt(r * r - 2.0 * hs * np.log1p(-u_high)))
            down = 0.5 * (r - np.sqrt(r * r - 2.0 * hs * np.log1p(-u_low)))
            close = np.exp(path)
            # The open is the previous close bit for bit, not exp(log(close)).
            open_ = np.empty((_CHUNK, n))
            open_[0] = prev_close
            open_[1:] = close[:-1]
            prev_close = close[-1].copy()
            high = np.maximum(np.exp(log_open + up), np.maximum(open_, close))
            low = np.minimum(np.exp(log_open + down), np.minimum(open_, close))

            # Busier when the move is large and when volatility is high, with log-normal noise
            # of mean one (0.045 = 0.3² / 2).
            activity = (0.5 + 0.5 * np.abs(z) / _MEAN_ABS_NORMAL) * np.sqrt(hs / self._var)
            notional = self._volume_quote * activity * np.exp(0.3 * noise - 0.045)
            volume = notional / (0.5 * (high + low))
            yield open_, high, low, close, volume

    async def bars(self) -> AsyncIterator[list[Bar]]:
        self._closed = False
        pacer = Pacer(self.cfg.speed, clock=self._clock, sleep=self._sleep)
        limit = self.cfg.max_timestamps
        symbols, interval = self.symbols, self.interval_s
        step = timedelta(seconds=interval)
        ts = self._start
        emitted = 0
        for arrays in self.chunks():
            rows = zip(*(a.tolist() for a in arrays), strict=True)
            for o_row, h_row, l_row, c_row, v_row in rows:
                if self._closed or (limit is not None and emitted >= limit):
                    return
                await pacer.wait(interval)
                if self._closed:
                    return
                yield [
                    Bar(s, ts, o, h, lo, c, v, interval)
                    for s, o, h, lo, c, v in zip(symbols, o_row, h_row, l_row, c_row, v_row,
                                                 strict=True)
                ]
                emitted += 1
                ts += step

    async def close(self) -> None:
        self._closed = True
