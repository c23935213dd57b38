"""A decision never sends more orders than the risk gate's order throttles pass: a large
account's rebalance is split into more children (`max_child_notional`) than the throttles take
at once, and the refusals would count towards a rejection storm that halts trading. Real hourly
data through the whole daemon: a 2,000,000 USDT account deploying into six coins."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

from daemon.config import Config, load_config
from daemon.events import OrderIntent
from daemon.logs import configure
from daemon.replay import ReplayRequest, execute, prepare

ROOT = Path(__file__).resolve().parent.parent
SYMBOLS = ["BTC/USDT", "ETH/USDT", "BNB/USDT", "SOL/USDT", "XRP/USDT", "ADA/USDT"]


def big_account(cfg: Config) -> Config:
    paper = dataclasses.replace(cfg.venue.paper, initial_cash=2_000_000.0)
    return dataclasses.replace(cfg, venue=dataclasses.replace(cfg.venue, paper=paper))


def run(data: Path, out: Path, *, trim: bool) -> dict[str, Any]:
    cfg = big_account(load_config(ROOT / "config.toml"))
    with open(out.parent / f"{out.name}.log", "w", encoding="utf-8") as log:
        configure("warning", stream=log)
        prepared = prepare(cfg, ReplayRequest(data_dir=data, out_dir=out, start="2021-07-01",
                                              end="2021-07-08", symbols=SYMBOLS))
        daemon = prepared.daemon
        if not trim:  # the decision as planned, whatever the throttles say
            daemon.rebalancer.order_room = lambda symbol: 1 << 30
        per_decision: Counter[str] = Counter()
        daemon.bus.subscribe("decisions", {
            OrderIntent: lambda e: per_decision.update([e.decision_id])})
        result = asyncio.run(execute(prepared))
    return {"summary": result.summary, "per_decision": per_decision,
            "states": [c[1] for c in result.recording.state_changes],
            "weights": result.summary.weights, "limits": cfg.risk.throttle}


def test_a_large_rebalance_goes_out_over_several_bars_without_a_refusal(
        shared_data: Path, tmp_path: Path) -> None:
    data = shared_data / "binance-spot" / "1h"
    trimmed = run(data, tmp_path / "trimmed", trim=True)
    s, limits = trimmed["summary"], trimmed["limits"]
    assert not [c for c in s.rejections_by_code if c.startswith("THROTTLE")]
    assert trimmed["states"] == []  # ACTIVE throughout
    assert max(trimmed["per_decision"].values()) <= limits.orders_per_second
    # the deployment needed far more children than one bar's room, and still got invested
    assert s.orders > 5 * limits.orders_per_second
    assert sum(trimmed["weights"].values()) > 0.9

    # the same decisions sent in full: the throttles refuse the excess and the refusals halt
    untrimmed = run(data, tmp_path / "untrimmed", trim=False)
    u = untrimmed["summary"]
    assert sum(n for c, n in u.rejections_by_code.items() if c.startswith("THROTTLE")) > 0
    assert "HALTED" in untrimmed["states"]
