"""The replay's hot path was rewritten for speed (bus publish/settle, CloseHistory.returns, the
OMS's and paper venue's shortlists of live orders): each rewrite against the plain version it
replaced, on the same inputs."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from daemon.bus import EventBus
from daemon.config import parse_config
from daemon.events import BarsClosed, Fill, OrderCancelled, Side
from daemon.history import CloseHistory
from daemon.replay import ReplayRequest, execute, prepare
from tests.test_replay import write_hourly

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def test_history_returns_equal_the_pandas_chain_exactly() -> None:
    rng = np.random.default_rng(0)
    symbols = ["A", "B", "C", "D"]
    for capacity in (5, 31, 100):
        h = CloseHistory(symbols, capacity)
        for t in range(250):
            ts = T0 + timedelta(hours=t)
            for j, s in enumerate(symbols):
                if (j == 2 and t < 120) or (j == 3 and t % 37 == 0):
                    continue  # C lists late, D has gaps
                h.add(s, ts, float(rng.uniform(1, 100)))
            if t % 7 and t < 240:
                continue  # a sample of timestamps keeps the pandas reference affordable
            for lookback in (0, 1, 29, 30, 200):
                reference = h.closes().iloc[-(lookback + 1):].dropna(axis=1, how="any")
                pd.testing.assert_frame_equal(h.returns(lookback),
                                              reference.pct_change().iloc[1:], check_exact=True)


async def test_settle_waits_for_a_cascade_and_counts_value_returning_handlers() -> None:
    bus = EventBus()
    got: list[str] = []

    def first(e: Fill) -> bool:  # returns a value that is not awaitable
        bus.publish(OrderCancelled(e.client_order_id, e.symbol, "x", e.ts))
        return True

    async def second(e: OrderCancelled) -> None:
        await asyncio.sleep(0)
        got.append(e.client_order_id)

    bus.subscribe("first", {Fill: first})
    bus.subscribe("second", {OrderCancelled: second})
    await bus.start()
    for i in range(20):
        bus.publish(Fill(f"c{i}", "v", f"t{i}", "BTC/USDT", Side.BUY, 1.0, 1.0, 0.0, T0))
    await bus.settle()
    assert got == [f"c{i}" for i in range(20)]
    assert [s.stats.delivered for s in bus.subscribers] == [20, 20]
    assert bus.errors() == 0
    await bus.stop()


async def test_live_order_shortlists_match_a_full_scan_every_bar(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_hourly(data / "AAA-USDT.csv", T0, 400, 100.0, 1)
    write_hourly(data / "BBB-USDT.csv", T0, 400, 20.0, 2)
    text = f"""
[daemon]
state_dir = "{tmp_path / 'live'}"
[market]
symbols = ["AAA/USDT", "BBB/USDT"]
[rebalance]
band = 0.01
[allocation]
lookback_bars = 30
min_history_bars = 20
max_weight = 0.7
"""
    cfg = parse_config(text, str(tmp_path / "config.toml"))
    prepared = prepare(cfg, ReplayRequest(data_dir=data, out_dir=tmp_path / "out"))
    oms, venue = prepared.daemon.oms, prepared.daemon.venue
    checked: list[int] = []

    def check(_: BarsClosed) -> None:
        assert oms.working() == [o for o in oms.orders.values() if o.state.working]
        assert venue._resting() == [o for o in venue._orders.values()
                                    if o.view.status == "open"]
        checked.append(len(oms.orders))

    prepared.daemon.bus.subscribe("shortlist-check", {BarsClosed: check})
    result = await execute(prepared)
    assert result.summary.handler_errors == 0
    assert len(checked) == 400
    assert checked[-1] >= 20, json.dumps(checked[-5:])  # many orders went through both lists
