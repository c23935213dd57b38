"""The rebalancer respects the gate's trading state: HALTED proposes nothing, REDUCING only
orders that shrink a position."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from daemon.app import Daemon
from daemon.events import BarsClosed, OrderIntent, Side
from tests.test_slice import fast_config


async def run_with_state(tmp_path: Path, state: str) -> tuple[Daemon, list[OrderIntent]]:
    cfg = fast_config(tmp_path)
    daemon = Daemon(cfg)
    intents: list[OrderIntent] = []
    switched_at: list[datetime] = []

    def switch(event: BarsClosed) -> None:
        # once the first rebalance is invested, switch the state and shake the targets so
        # that every later bar wants to trade
        if switched_at or daemon.rebalancer.rebalances < 1 or daemon.oms.working():
            return
        switched_at.append(event.ts)
        if state == "HALTED":
            daemon.gate.halt("test", by="operator")
        else:
            daemon.gate.trading.reduce("test", by="operator")
        n = len(daemon.symbols)
        daemon.rebalancer.targets = {s: (2.0 / n if i % 2 else 0.0)
                                     for i, s in enumerate(daemon.symbols)}

    def watch(intent: OrderIntent) -> None:
        if switched_at and intent.ts > switched_at[0]:
            intents.append(intent)

    daemon.bus.subscribe("test-switch", {BarsClosed: switch, OrderIntent: watch})
    await daemon.run(max_bars=200)
    assert switched_at, "the first rebalance never completed"
    return daemon, intents


async def test_halted_gate_means_no_proposals(tmp_path: Path) -> None:
    daemon, intents = await run_with_state(tmp_path, "HALTED")
    assert intents == []
    assert daemon.rebalancer.skips["trading_halted"] > 0


async def test_reducing_gate_means_only_reducing_orders(tmp_path: Path) -> None:
    daemon, intents = await run_with_state(tmp_path, "REDUCING")
    assert intents, "the shaken targets should have produced sells"
    assert all(i.side is Side.SELL for i in intents)
    assert daemon.counters.risk_rejections == 0
