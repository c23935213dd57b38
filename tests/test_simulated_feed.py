from __future__ import annotations

import asyncio
import itertools
import math
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from adapters.simulated import (
    _CHUNK,
    FALLBACK_START_PRICE,
    Pacer,
    SimulatedMarket,
    SimulatedMarketConfig,
)
from daemon.events import Bar
from daemon.settings import ConfigError, load


async def collect(feed: SimulatedMarket, n: int) -> list[list[Bar]]:
    out = []
    async for bars in feed.bars():
        out.append(bars)
        if len(out) == n:
            break
    return out


def closes(rows: list[list[Bar]]) -> np.ndarray:
    return np.array([[b.close for b in bars] for bars in rows])


async def test_same_seed_gives_identical_bars_and_another_seed_does_not() -> None:
    n = _CHUNK + 100  # crosses a chunk boundary
    a = await collect(SimulatedMarket(SimulatedMarketConfig(seed=1)), n)
    b = await collect(SimulatedMarket(SimulatedMarketConfig(seed=1)), n)
    c = await collect(SimulatedMarket(SimulatedMarketConfig(seed=2)), n)
    assert a == b  # dataclass equality: every float bit-identical
    assert closes(a)[-1].tolist() != closes(c)[-1].tolist()


async def test_bars_calls_restart_the_same_stream() -> None:
    feed = SimulatedMarket(SimulatedMarketConfig(max_timestamps=50))
    first = [bars async for bars in feed.bars()]
    second = [bars async for bars in feed.bars()]
    assert len(first) == 50
    assert first == second


async def test_bars_are_consistent_ohlcv_on_a_regular_clock() -> None:
    cfg = SimulatedMarketConfig(symbols=["BTC/USDT", "FOO/USDT"], interval_s=300,
                                start="2023-05-01T12:00:00Z", max_timestamps=_CHUNK + 10)
    rows = [bars async for bars in SimulatedMarket(cfg).bars()]
    assert len(rows) == cfg.max_timestamps
    assert rows[0][0].open == 30_000.0
    assert rows[0][1].open == FALLBACK_START_PRICE
    start = datetime(2023, 5, 1, 12, tzinfo=UTC)
    for k, bars in enumerate(rows):
        assert [b.symbol for b in bars] == cfg.symbols
        for b in bars:
            assert b.ts == start + timedelta(seconds=300 * k)
            assert b.interval_s == 300
            assert 0 < b.low <= min(b.open, b.close) <= max(b.open, b.close) <= b.high
            assert b.volume > 0 and math.isfinite(b.volume)
    # Continuous market: each open is the previous close exactly, across chunks too.
    for prev, cur in itertools.pairwise(rows):
        assert [b.open for b in cur] == [b.close for b in prev]


async def test_returns_have_the_configured_vol_and_correlation() -> None:
    cfg = SimulatedMarketConfig(
        symbols=["BTC/USDT", "ETH/USDT", "SOL/USDT"], correlation=0.3,
        correlations={"BTC/USDT,ETH/USDT": 0.85},
        annual_vols={"BTC/USDT": 0.6, "ETH/USDT": 0.75, "SOL/USDT": 0.9}, seed=11)
    r = np.diff(np.log(closes(await collect(SimulatedMarket(cfg), 20_000))), axis=0)
    corr = np.corrcoef(r.T)
    # `correlation` is the conditional correlation of the shocks (CCC-GARCH). Each asset's
    # variance moves on its own, which pulls the unconditional return correlation a little
    # below it (Cauchy-Schwarz); sampling error alone is ~0.006 here.
    assert corr[0, 1] == pytest.approx(0.85, abs=0.05)
    assert corr[0, 2] == pytest.approx(0.3, abs=0.05)
    assert corr[1, 2] == pytest.approx(0.3, abs=0.05)
    ann_vol = r.std(axis=0) * math.sqrt(365 * 24)
    assert ann_vol == pytest.approx([0.6, 0.75, 0.9], rel=0.1)


def squared_return_acf(cfg: SimulatedMarketConfig, n: int) -> np.ndarray:
    rows = asyncio.run(collect(SimulatedMarket(cfg), n))
    r2 = np.diff(np.log(closes(rows)), axis=0) ** 2
    return np.array([np.corrcoef(r2[:-1, i], r2[1:, i])[0, 1] for i in range(r2.shape[1])])


def test_volatility_clusters_only_with_garch() -> None:
    n = 20_000
    # Under no clustering the lag-1 autocorrelation is ~N(0, 1/n): 4/sqrt(n) is a 4-sigma bar.
    bar = 4.0 / math.sqrt(n)
    clustered = squared_return_acf(SimulatedMarketConfig(seed=3), n)
    assert (clustered > bar).all(), clustered
    flat = squared_return_acf(SimulatedMarketConfig(seed=3, garch_alpha=0.0, garch_beta=0.0), n)
    assert (np.abs(flat) < bar).all(), flat


async def test_max_timestamps_and_close_end_the_stream() -> None:
    feed = SimulatedMarket(SimulatedMarketConfig(max_timestamps=7))
    assert len([b async for b in feed.bars()]) == 7

    feed = SimulatedMarket(SimulatedMarketConfig())
    seen = 0
    async for _ in feed.bars():
        seen += 1
        if seen == 3:
            await feed.close()
    assert seen == 3


class FakeClock:
    """Virtual time: `sleep` advances it, so pacing is checked without real waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_speed_paces_timestamps_on_the_scaled_interval() -> None:
    clock = FakeClock()
    cfg = SimulatedMarketConfig(interval_s=3600, speed=7200.0, max_timestamps=5)
    feed = SimulatedMarket(cfg, clock=clock, sleep=clock.sleep)
    seen = []
    async for _ in feed.bars():
        seen.append(clock.now)
        clock.now += 0.1  # the consumer's own work counts toward the half-second period
    assert clock.sleeps == pytest.approx([0.4] * 4)
    assert np.diff(seen) == pytest.approx([0.5] * 4)


@pytest.mark.parametrize("speed", [0.0, math.inf])
async def test_speed_zero_or_infinite_never_sleeps(speed: float,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async def forbidden(_: float) -> None:
        raise AssertionError("the feed slept")

    monkeypatch.setattr(asyncio, "sleep", forbidden)
    cfg = SimulatedMarketConfig(speed=speed, max_timestamps=20)
    assert len([b async for b in SimulatedMarket(cfg).bars()]) == 20


async def test_pacing_really_waits() -> None:
    # Only a lower bound: a loaded machine can make it slower, never faster.
    cfg = SimulatedMarketConfig(interval_s=1, speed=50.0, max_timestamps=5)
    started = time.monotonic()
    _ = [b async for b in SimulatedMarket(cfg).bars()]
    assert time.monotonic() - started >= 4 * 0.02 * 0.9


async def test_pacer_resets_instead_of_bursting_after_a_stall() -> None:
    clock = FakeClock()
    pacer = Pacer(1.0, clock=clock, sleep=clock.sleep)
    await pacer.wait(1.0)  # first call anchors the schedule
    await pacer.wait(1.0)
    clock.now += 10.0  # consumer stalled for ten periods
    await pacer.wait(1.0)
    await pacer.wait(1.0)
    assert clock.sleeps == pytest.approx([1.0, 1.0])


def test_config_loads_from_toml_table_and_rejects_bad_values() -> None:
    cfg = load(SimulatedMarketConfig, {
        "seed": 5, "symbols": ["BTC/USDT", "ETH/USDT"], "interval_s": 60, "speed": 0,
        "correlations": {"BTC/USDT,ETH/USDT": 0.9}, "start": "2024-02-01"}, "market.simulated")
    assert cfg.interval_s == 60 and cfg.speed == 0.0
    with pytest.raises(ConfigError, match="garch_alpha"):
        load(SimulatedMarketConfig, {"garch_alpha": 0.2, "garch_beta": 0.85})
    with pytest.raises(ConfigError, match="correlations"):
        load(SimulatedMarketConfig, {"correlations": {"BTC/USDT,DOGE/USDT": 0.5}})
    with pytest.raises(ConfigError, match="positive definite"):
        load(SimulatedMarketConfig, {
            "symbols": ["A/X", "B/X", "C/X"], "correlation": 0.0,
            "correlations": {"A/X,B/X": 0.95, "A/X,C/X": 0.95, "B/X,C/X": -0.95}})
    with pytest.raises(ConfigError, match="start"):
        load(SimulatedMarketConfig, {"start": "yesterday"})
    with pytest.raises(ConfigError, match="BASE/QUOTE"):
        load(SimulatedMarketConfig, {"symbols": ["BTCUSDT"]})
