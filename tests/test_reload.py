"""SIGHUP reload: limits and bands change in place, state stays, a bad file changes nothing."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from daemon.app import Daemon
from daemon.config import load_config, parse_config
from daemon.ops import attach
from daemon.reload import plan, reloadable
from daemon.settings import ConfigError

BASE = """
[daemon]
state_dir = "{state}"
log_level = "warning"
[market]
symbols = ["BTC/USDT", "ETH/USDT", "BNB/USDT"]
[market.simulated]
seed = 3
speed = 720000.0
[rebalance]
band = {band}
solver = "{solver}"
[allocation]
lookback_bars = {lookback}
[risk]
max_order_notional = {max_order}
[http]
port = 0
"""


def _text(tmp_path: Path, band: float = 0.05, solver: str = "thread", lookback: int = 30,
          max_order: float = 25_000.0) -> str:
    return BASE.format(state=tmp_path / "state", band=band, solver=solver, lookback=lookback,
                       max_order=max_order)


def test_plan_applies_limits_and_bands_and_lists_restart_only_keys(tmp_path: Path) -> None:
    old = parse_config(_text(tmp_path))
    new = parse_config(_text(tmp_path, band=0.08, solver="process", lookback=60,
                             max_order=30_000.0))
    result = plan(old, new)
    assert result.applied == {"rebalance.band": (0.05, 0.08),
                              "risk.max_order_notional": (25_000.0, 30_000.0)}
    assert set(result.needs_restart) == {"rebalance.solver", "allocation.lookback_bars"}
    cfg = result.config
    assert (cfg.rebalance.band, cfg.risk.max_order_notional) == (0.08, 30_000.0)
    assert (cfg.rebalance.solver, cfg.allocation.lookback_bars) == ("thread", 30)
    assert cfg.market == old.market  # not reloadable: untouched
    assert reloadable("risk.var.max_var_fraction") and reloadable("risk.throttle.burst")
    assert not reloadable("rebalance.schedule.vol_window_bars")
    assert not reloadable("market.symbols") and not reloadable("control.socket")


def test_plan_rechecks_cross_field_rules_on_the_merged_config(tmp_path: Path) -> None:
    old = parse_config(_text(tmp_path))
    new = parse_config(_text(tmp_path, max_order=25_000.0))
    # a merged config that breaks a rule spanning sections is refused, not half-applied
    bad = replace(new, risk=replace(new.risk, max_order_notional=1_000.0))
    with pytest.raises(ConfigError, match="max_child_notional"):
        plan(old, bad)


async def test_sighup_swaps_limits_keeps_state_and_survives_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(_text(tmp_path))
    daemon = Daemon(load_config(path))
    ops = attach(daemon, str(path))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop=stop))
    try:
        await asyncio.wait_for(daemon.started.wait(), 60)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while daemon.counters.fills == 0:
            assert loop.time() < deadline
            await asyncio.sleep(0.02)
        portfolio, targets = daemon.portfolio, dict(daemon.rebalancer.targets or {})
        positions = dict(portfolio.positions)

        path.write_text(_text(tmp_path, band=0.11, max_order=20_000.0))
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = loop.time() + 10
        while ops.reloader.results["ok"] == 0:
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        assert daemon.rebalancer.cfg.band == 0.11
        assert daemon.gate.limits.max_order_notional == 20_000.0
        ctx = getattr(daemon.gate, "ctx", None)
        if ctx is not None:  # the gate's per-decision view of the limits moved too
            assert ctx.limits.max_order_notional == 20_000.0
        assert daemon.cfg.rebalance.band == 0.11
        # nothing about the book was rebuilt
        assert daemon.portfolio is portfolio
        assert set(daemon.portfolio.positions) >= set(positions)
        assert daemon.rebalancer.targets is not None and set(daemon.rebalancer.targets) == \
            set(targets)

        path.write_text(_text(tmp_path, band=-1.0))
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = loop.time() + 10
        while ops.reloader.results["failed"] == 0:
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        assert daemon.rebalancer.cfg.band == 0.11  # the running config stays
        answer = ops.reloader.reload()
        assert "rebalance.band = -1.0" in answer["error"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
