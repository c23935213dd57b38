"""Bar-to-order latency through the whole pipeline, the risk gate in place, solve times.

    .venv/bin/python -m bench.bench_pipeline

One replay of a quarter of hourly bars (2021 Q3, 6 assets, `config.toml`) through the real `Daemon`,
instrumented from outside:

- bar-to-order: from the moment the feed hands a timestamp's bars to the pump until the paper
  venue receives each order that timestamp's decision produced (bus, rebalancer, risk gate,
  journal write-ahead, OMS). Orders of a timestamp that also re-solved targets include the
  solve; they are reported separately, so the pipeline's own latency is not hidden by it.
- risk gate: time of the gate's `OrderIntent` handler per order, as it runs in the pipeline
  (bench_gate.py measures it in isolation, at more assets and models).
- solves: `risk.allocation.solve` on windows of the same data in a fresh process: the first
  call (cold: builds and canonicalises the problem) against the median of the next ones
  (steady state). Used when bench_solve.py does not provide `run()`.

The replay is unpaced (lockstep), so each timestamp's latency is its own processing time, not
time spent queued behind other bars.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_replay import DATA, ROOT, SYMBOLS, _loop_run
from daemon.events import OrderIntent, TargetWeights

# a quarter in which config.toml's risk state never leaves ACTIVE: every order reaches the venue
START, END = "2021-07-01", "2021-10-01"


class _Clock:
    """Times shared by the feed wrapper, the venue wrapper and the bus hooks."""

    def __init__(self) -> None:
        self.bars_at = 0
        self.solved_ts: object = None
        self.current_ts: object = None
        self.latency_ns: list[int] = []
        self.latency_solve_ns: list[int] = []
        self.gate_ns: list[int] = []


class _TimedFeed:
    def __init__(self, inner: Any, clock: _Clock) -> None:
        self.inner, self.clock = inner, clock
        self.symbols, self.interval_s = inner.symbols, inner.interval_s
        self.cfg = getattr(inner, "cfg", None)
        self.report = getattr(inner, "report", None)
        self.lockstep = True

    async def bars(self) -> Any:
        async for bars in self.inner.bars():
            self.clock.bars_at = time.perf_counter_ns()
            self.clock.current_ts = bars[0].ts if bars else None
            yield bars

    async def close(self) -> None:
        await self.inner.close()


def _instrument(prepared: Any, clock: _Clock) -> None:
    from daemon.solver import SolverPool

    daemon = prepared.daemon
    daemon.feed = _TimedFeed(daemon.feed, clock)
    # solves in a worker thread, as a live daemon runs them off the loop (a replay solves
    # inline): the latency of a timestamp that re-solved includes the hand-over
    daemon.solver = daemon.rebalancer.solver = SolverPool("thread")
    venue = daemon.venue
    submit = venue.submit

    async def timed_submit(request: Any) -> Any:
        lag = time.perf_counter_ns() - clock.bars_at
        solved = clock.solved_ts is not None and clock.solved_ts == clock.current_ts
        (clock.latency_solve_ns if solved else clock.latency_ns).append(lag)
        return await submit(request)

    venue.submit = timed_submit  # the OMS calls venue.submit: timed on the instance only

    gate_sub = next(s for s in daemon.bus.subscribers if s.name == "risk_gate")
    on_intent = gate_sub.handlers[OrderIntent]

    def timed_intent(intent: Any) -> Any:
        t = time.perf_counter_ns()
        try:
            return on_intent(intent)
        finally:
            clock.gate_ns.append(time.perf_counter_ns() - t)

    gate_sub.handlers[OrderIntent] = timed_intent

    def on_targets(event: TargetWeights) -> None:
        clock.solved_ts = event.ts

    daemon.bus.subscribe("bench-solves", {TargetWeights: on_targets})


def latency() -> tuple[_Clock, Any]:
    from daemon.config import load_config
    from daemon.logs import configure
    from daemon.replay import ReplayRequest, execute, prepare

    cfg = load_config(ROOT / "config.toml")
    clock = _Clock()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp, \
            open(Path(tmp) / "replay.log", "w", encoding="utf-8") as log:
        configure("warning", stream=log)  # `tradingd replay`'s default --log-level
        prepared = prepare(cfg, ReplayRequest(data_dir=DATA, out_dir=Path(tmp), start=START,
                                              end=END, symbols=SYMBOLS))
        _instrument(prepared, clock)
        result = _loop_run(execute(prepared))
    return clock, result


def solve_times(reps: int = 30) -> tuple[float, float]:
    """(cold s, median steady-state s) of risk.allocation.solve on hourly windows."""
    import pandas as pd

    from daemon.config import load_config
    from risk.allocation import solve

    cfg = load_config(ROOT / "config.toml")
    closes = pd.concat({s: pd.read_csv(DATA / f"{s.replace('/', '-')}.csv", index_col=0,
                                       usecols=["timestamp", "close"])["close"]
                        for s in SYMBOLS}, axis=1).dropna()
    returns = closes.pct_change().dropna()
    look = cfg.allocation.lookback_bars
    windows = [returns.iloc[i:i + look + 1] for i in range(0, (reps + 1) * 97, 97)]
    import riskfolio  # noqa: F401  (imports are start-up cost, not the cold solve)

    t = time.perf_counter()
    solve(windows[0], cfg.allocation, 3600)
    cold = time.perf_counter() - t
    steady = []
    for w in windows[1:]:
        t = time.perf_counter()
        solve(w, cfg.allocation, 3600)
        steady.append(time.perf_counter() - t)
    return cold, statistics.median(steady)


def _pct(ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(ns) / 1e6, q)) if ns else float("nan")


def run(with_solves: bool = True) -> list[dict[str, Any]]:
    if not DATA.is_dir():
        return [{"metric": "bar-to-order latency", "value": None, "unit": "",
                 "note": f"skipped: {DATA} not found"}]
    # solves first: the replay warms the solver cache, and "cold" must mean cold
    cold, steady = solve_times() if with_solves else (None, None)
    clock, result = latency()
    n, ns = len(clock.latency_ns), len(clock.latency_solve_ns)
    rows: list[dict[str, Any]] = [
        {"metric": "bar-to-order latency p50 (no solve in the timestamp)",
         "value": _pct(clock.latency_ns, 50), "unit": "ms", "note": f"{n} orders"},
        {"metric": "bar-to-order latency p99 (no solve in the timestamp)",
         "value": _pct(clock.latency_ns, 99), "unit": "ms"},
        {"metric": "bar-to-order latency p50 / p99 (timestamp re-solved targets)",
         "value": _pct(clock.latency_solve_ns, 50), "unit": "ms",
         "note": f"p99 {_pct(clock.latency_solve_ns, 99):.2f} ms, {ns} orders"},
        {"metric": "risk gate per order in the pipeline p50",
         "value": _pct(clock.gate_ns, 50) * 1000, "unit": "µs",
         "note": f"p99 {_pct(clock.gate_ns, 99) * 1000:.0f} µs over {len(clock.gate_ns)} "
                 f"orders (approved {result.summary.orders - result.summary.risk_rejections}"
                 f", rejected {result.summary.risk_rejections})"},
    ]
    if cold is not None and steady is not None:
        rows.append({"metric": "solve cold / steady state (config method, 6 assets)",
                     "value": cold * 1000, "unit": "ms",
                     "note": f"cold = first solve after imports; steady {steady * 1000:.1f} ms "
                             f"median, ratio {cold / steady:.0f}x"})
    return rows


if __name__ == "__main__":
    for row in run():
        v = row["value"]
        print(f"{row['metric']:<62} {v:>12,.2f} {row['unit']:<3} {row.get('note', '')}")
