"""/healthz and /metrics, the health rules behind them, and the loop-lag monitor."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from daemon.app import Daemon
from daemon.bus import EventBus
from daemon.config import parse_config
from daemon.events import Bar
from daemon.health import Health, HealthConfig, HealthMonitor, auto_stale_after
from daemon.http_api import HttpConfig, HttpServer
from daemon.metrics import EventObserver, LoopLagMonitor, render_prometheus
from daemon.ops import Ops, attach
from daemon.settings import ConfigError

# one sample line of the text exposition format: name{labels} value
SAMPLE = re.compile(r'^tradingd_[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)+\})? '
                    r'(-?[0-9.e+-]+|NaN|[+-]Inf)$')


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _bar(symbol: str = "BTC/USDT") -> Bar:
    from datetime import UTC, datetime

    return Bar(symbol, datetime(2024, 1, 1, tzinfo=UTC), 1.0, 1.0, 1.0, 1.0, 1.0)


def test_health_rules_with_a_fake_clock() -> None:
    clock = Clock()
    lag = LoopLagMonitor(clock=clock)
    observer = EventObserver(clock=clock)
    bus = EventBus()
    started = {"v": False}
    monitor = HealthMonitor(HealthConfig(max_loop_lag_s=1.0, bus_stall_s=30.0),
                            started=lambda: started["v"], lag=lag, bars=observer, bus=bus,
                            stale_after_s=60.0, clock=clock)
    assert monitor.check().reasons == ["starting"]
    started["v"] = True
    lag.record(0.01)
    assert monitor.check().ok
    observer.on_bar(_bar())
    clock.t += 59
    lag.record(0.0)
    assert monitor.check().ok
    clock.t += 2
    lag.record(0.0)
    health = monitor.check()
    assert not health.ok and health.reasons[0].startswith("no new bar for 61s > 60s")
    observer.on_bar(_bar())
    lag.record(2.5)  # the loop was blocked for 2.5 s
    assert monitor.check().reasons == ["loop lag 2.50s > 1s"]
    assert monitor.check().details["loop_lag_max_s"] == 2.5
    lag.record(0.01)  # and runs on time again: healthy, the stall stays in the details
    assert monitor.check().ok and monitor.check().details["loop_lag_max_s"] == 2.5
    lag.record(2.5)
    clock.t += 61  # the blocked moment leaves the one-minute window, but the monitor went quiet
    observer.on_bar(_bar())
    assert any("monitor silent" in r for r in monitor.check().reasons)
    lag.record(0.0)
    assert monitor.check().ok
    # a subscriber holding events without delivering any for bus_stall_s
    sub = bus.subscribe("stuck", {Bar: lambda b: None})
    sub.inbox.append(object())
    assert monitor.check().ok  # first sight starts the clock
    clock.t += 31
    lag.record(0.0)
    observer.on_bar(_bar())
    assert monitor.check().reasons == ["bus stalled: stuck 31s"]
    sub.stats.delivered += 1  # progress resets it
    assert monitor.check().ok


def test_auto_stale_threshold() -> None:
    assert auto_stale_after(3600, None) == 2 * 3600 + 60  # live: two hourly bars late
    assert auto_stale_after(3600, 3600.0) == 62.0       # simulated at 1 bar/s
    assert auto_stale_after(3600, 0.0) == 60.0          # as fast as possible


async def test_loop_lag_monitor_sees_a_blocked_loop() -> None:
    lag = LoopLagMonitor(interval=0.02)
    await lag.start()
    await asyncio.sleep(0.1)
    time.sleep(0.3)  # block the loop, as a synchronous call in a handler would
    await asyncio.sleep(0.1)
    await lag.stop()
    assert lag.window_max() >= 0.25
    assert lag.ticks >= 3


def test_http_host_must_be_an_address() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config('[http]\nhost = "localhost"\n')
    assert err.value.key == "http.host"
    assert parse_config('[http]\nhost = "::1"\nport = 0\n').http.port == 0


async def test_healthz_and_metrics_endpoints() -> None:
    state = {"health": Health(ok=True, details={"loop_lag_s": 0.001})}
    server = HttpServer(HttpConfig(port=0), lambda: state["health"],
                        lambda: "# HELP tradingd_up x\n# TYPE tradingd_up gauge\ntradingd_up 1\n")
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/healthz") as r:
                assert r.status == 200
                assert (await r.json())["status"] == "ok"
            state["health"] = Health(ok=False, reasons=["no new bar for 99s > 60s"])
            async with session.get(f"{base}/healthz") as r:
                assert r.status == 503
                assert (await r.json())["reasons"] == ["no new bar for 99s > 60s"]
            async with session.get(f"{base}/metrics") as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                assert "tradingd_up 1" in await r.text()
            async with session.post(f"{base}/metrics") as r:
                assert r.status == 405  # read-only
    finally:
        await server.stop()
    busy = HttpServer(HttpConfig(port=0), lambda: state["health"], lambda: "")
    await busy.start()
    try:
        clash = HttpServer(HttpConfig(port=busy.port or 0), lambda: state["health"], lambda: "")
        with pytest.raises(RuntimeError, match=r"http\.host, http\.port"):
            await clash.start()
    finally:
        await busy.stop()
    disabled = HttpServer(HttpConfig(enabled=False), lambda: state["health"], lambda: "")
    await disabled.start()
    assert disabled.port is None


CONFIG = """
[daemon]
state_dir = "{state}"
log_level = "warning"
[market]
symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]
[market.simulated]
speed = 720000.0
[rebalance]
solver = "thread"
[allocation]
lookback_bars = 30
[http]
port = 0
"""


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Ops]]:
    cfg = parse_config(CONFIG.format(state=tmp_path / "state"), str(tmp_path / "config.toml"))
    daemon = Daemon(cfg)
    ops = attach(daemon, str(tmp_path / "config.toml"))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop=stop))
    await asyncio.wait_for(daemon.started.wait(), 60)
    try:
        yield daemon, ops
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def test_metrics_of_a_running_daemon(running: tuple[Daemon, Ops]) -> None:
    daemon, ops = running
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while daemon.counters.fills == 0:
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{ops.http.port}/metrics") as r:
            text = await r.text()
        async with session.get(f"http://127.0.0.1:{ops.http.port}/healthz") as r:
            assert r.status == 200, await r.text()
    names = set()
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) tradingd_[a-z_]+ .+$", line), line
            continue
        assert SAMPLE.match(line), line
        names.add(line.split("{")[0].split(" ")[0])
    for name in ("bars_processed_total", "bus_queue_depth", "loop_lag_seconds", "orders",
                 "fills_total", "nav", "max_drift", "solve_seconds", "trading_state",
                 "healthy"):
        assert f"tradingd_{name}" in names, name
    assert len(re.findall(r'^tradingd_trading_state\{state="(ACTIVE|REDUCING|HALTED)"\} 1$',
                          text, re.M)) == 1
    assert re.search(r'^tradingd_bus_queue_depth\{subscriber="oms"\} \d+$', text, re.M)
    assert re.search(r'^tradingd_orders\{state="FILLED"\} [1-9]\d*$', text, re.M)
    # the same numbers as the status snapshot, label escaping included
    snap = ops.snapshot()
    snap["rejections_by_code"] = {'ODD"CODE\\': 2}
    assert 'tradingd_risk_rejections_total{reason="ODD\\"CODE\\\\"} 2' in \
        render_prometheus(snap)
