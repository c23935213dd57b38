"""The replay's fast paths change speed only: the bus's inline lockstep (`publish_settled`
running the handlers in the pump's task), the rebalancer's shortcuts (`_halted_repeat`, the
within-bands skip) and the inline solver against publish-then-settle, the full `decide` and
solves in a worker thread, on real hourly data.

Equal fingerprints (`daemon.fingerprint`: every handler call of every subscriber, in order,
with every order, approval, refusal, fill, target and state change field by field), equal
skip counts and byte-equal metrics.json."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Config
from daemon.fingerprint import Fingerprint
from daemon.logs import configure
from daemon.replay import ReplayRequest, build_metrics, dumps_metrics, execute, prepare
from daemon.solver import SolverPool
from tests.replay_configs import replay_config

SYMBOLS = ["BTC/USDT", "ETH/USDT", "BNB/USDT", "SOL/USDT", "XRP/USDT", "ADA/USDT"]


def run(cfg: Config, data: Path, out: Path, start: str, end: str, *,
        fast: bool) -> dict[str, Any]:
    from risk import solver_cache

    # each run solves cold: a warm cvxpy problem starts from the previous run's solution,
    # which moves the first solve's weights in the last bits
    solver_cache._PROBLEMS.clear()
    with open(out.parent / f"{out.name}.log", "w", encoding="utf-8") as log:
        configure("warning", stream=log)  # `tradingd replay`'s default: debug lines off
        prepared = prepare(cfg, ReplayRequest(data_dir=data, out_dir=out, start=start,
                                              end=end, symbols=SYMBOLS))
        daemon = prepared.daemon
        shortcuts = 0
        if fast:
            halted_repeat = daemon.rebalancer._halted_repeat

            def counted(exempt: bool) -> bool:
                nonlocal shortcuts
                taken = halted_repeat(exempt)
                shortcuts += taken
                return taken

            daemon.rebalancer._halted_repeat = counted
        else:
            daemon.bus.inline_lockstep = False
            daemon.rebalancer._halted_repeat = lambda exempt: False
            daemon.rebalancer.shortcuts = False
            # solves in a worker thread, as `tradingd run` with solver = "thread" does
            daemon.solver = daemon.rebalancer.solver = SolverPool("thread")
        fp = Fingerprint()
        fp.attach(daemon.bus)
        result = asyncio.run(execute(prepared))
    fp.add("end_nav", result.summary.end_nav)
    fp.add("skips", sorted(daemon.rebalancer.skips.items()))
    return {"fingerprint": fp.hexdigest(), "deliveries": fp.deliveries,
            "by_type": dict(fp.by_type), "skips": dict(daemon.rebalancer.skips),
            "metrics": dumps_metrics(build_metrics(result)), "summary": result.summary,
            "inline": daemon.bus.inline_timestamps, "timestamps": len(result.recording),
            "shortcuts": shortcuts}


@pytest.mark.parametrize(("start", "end", "limits"), [
    ("2021-07-01", "2021-08-15", "relaxed"),  # trades throughout: orders, fills, solves
    ("2017-08-17", "2018-04-01", "config.toml"),  # daily loss, then the drawdown halt
])
def test_fast_paths_make_the_same_calls_in_the_same_order(
        shared_data: Path, tmp_path: Path, start: str, end: str, limits: str) -> None:
    cfg = replay_config(limits)
    data = shared_data / "binance-spot" / "1h"
    old = run(cfg, data, tmp_path / "old", start, end, fast=False)
    new = run(cfg, data, tmp_path / "new", start, end, fast=True)

    s = new["summary"]
    # both windows trade (the 2017 one from its first bars: two listed coins held at their
    # 0.4 caps, then halted in 2018), so orders, fills and solves are in the comparison
    assert s.orders > 20 and s.fills > 20 and new["by_type"]["TargetWeights"] > 5
    assert old["inline"] == 0
    # most timestamps ran inline; the rest waited for solves and order sends on the loop
    assert new["inline"] > new["timestamps"] // 2
    if limits == "config.toml":
        assert [c["state"] for c in _changes(new["metrics"])] == ["REDUCING", "HALTED"]
        assert new["shortcuts"] > 1000
    assert new["deliveries"] == old["deliveries"]
    assert new["by_type"] == old["by_type"]
    assert new["skips"] == old["skips"]
    assert new["fingerprint"] == old["fingerprint"]
    assert new["metrics"] == old["metrics"]


def _changes(metrics: str) -> list[dict[str, Any]]:
    import json

    return list(json.loads(metrics)["strategy"]["trading_state_changes"])
