"""Replay throughput: the hourly Binance data through the whole daemon, rebalancing on.

    .venv/bin/python -m bench.bench_replay [--breakdown] [--profile OUT.txt] [--start D] [--end D]
    .venv/bin/python -m bench.bench_replay --ab 3     # new paths against the old, alternated

Replays `../shared/data/binance-spot/1h/` (6 assets, about 230,000 bars over 45,000
timestamps) with `config.toml` exactly as `tradingd replay` does (same `Daemon`, paper venue,
journal, the report's recorder on the bus), and reports bars per second of the run itself:
data loading and the report are timed separately. `--profile` writes the cProfile summary
that bench/README.md quotes. `--ab N` replays the full data and the quarter N times each with
the fast paths (the bus's inline lockstep, the rebalancer's halted shortcut) and without them,
alternated in one process, and prints the ratio (tests/test_replay_lockstep.py shows that both
make the same calls in the same order).

Goal: >= 50,000 bars/s end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "binance-spot" / "1h"
SYMBOLS = ["BTC/USDT", "ETH/USDT", "BNB/USDT", "SOL/USDT", "XRP/USDT", "ADA/USDT"]
GOAL_BARS_PER_S = 50_000
# a quarter that trades throughout (REDUCING from 2021-09-07, still sending orders)
QUIET = ("2021-07-01", "2021-10-01")


class Breakdown:
    """Wall time per bus handler (subscriber, event type), the venue's `on_bars` and the
    feed, measured in place with perf_counter_ns: cheaper and less distorting than cProfile.
    What the handlers do not account for is the event loop and the bus between them."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, key: str, fn: Any) -> Any:
        clock = time.perf_counter_ns
        ns, calls = self.ns, self.calls
        ns.setdefault(key, 0)
        calls.setdefault(key, 0)

        def timed(*args: Any) -> Any:
            t = clock()
            try:
                return fn(*args)
            finally:
                ns[key] += clock() - t
                calls[key] += 1

        if asyncio.iscoroutinefunction(fn):
            async def timed_async(*args: Any) -> Any:
                t = clock()
                try:
                    return await fn(*args)
                finally:  # includes time suspended (a venue call, a retry sleep)
                    ns[key] += clock() - t
                    calls[key] += 1
            return timed_async
        return timed

    def instrument(self, daemon: Any) -> None:
        for sub in daemon.bus.subscribers:
            for etype, fn in list(sub.handlers.items()):
                sub.handlers[etype] = self.wrap(f"bus {sub.name}: {etype.__name__}", fn)
        daemon.solver.run = self.wrap("solves (awaited by the lockstep settle)",
                                      daemon.solver.run)
        on_bars = getattr(daemon.venue, "on_bars", None)
        if on_bars is not None:
            daemon.venue.on_bars = self.wrap("venue on_bars (pump)", on_bars)

    def table(self, run_s: float) -> str:
        rows = sorted(self.ns.items(), key=lambda kv: -kv[1])
        total = sum(self.ns.values()) / 1e9
        lines = [f"{'where':<52} {'s':>8} {'share':>6} {'calls':>9} {'µs/call':>9}"]
        for key, ns in rows:
            n = self.calls[key]
            lines.append(f"{key:<52} {ns / 1e9:>8.2f} {ns / 1e9 / run_s:>6.1%} {n:>9,} "
                         f"{ns / 1e3 / n if n else 0:>9.1f}")
        lines.append(f"{'event loop, bus, feed (the rest)':<52} {run_s - total:>8.2f} "
                     f"{(run_s - total) / run_s:>6.1%}")
        return "\n".join(lines)


def replay_once(start: str | None = None, end: str | None = None,
                profile: cProfile.Profile | None = None,
                breakdown: Breakdown | None = None,
                config: Path = ROOT / "config.toml", fast: bool = True,
                relaxed: bool = False) -> dict[str, Any]:
    from daemon.config import load_config
    from daemon.logs import configure
    from daemon.replay import ReplayRequest, execute, prepare
    from daemon.report import write_report

    cfg = relax_loss_limits(load_config(config)) if relaxed else load_config(config)
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp, \
            open(Path(tmp) / "replay.log", "w", encoding="utf-8") as log:
        configure("warning", stream=log)  # `tradingd replay`'s default --log-level
        req = ReplayRequest(data_dir=DATA, out_dir=Path(tmp), start=start, end=end,
                            symbols=SYMBOLS)
        prepared = prepare(cfg, req)
        if not fast:
            old_paths(prepared.daemon)
        if breakdown is not None:
            breakdown.instrument(prepared.daemon)
        if profile is not None:
            profile.enable()
        result = _loop_run(execute(prepared))
        if profile is not None:
            profile.disable()
        t = time.perf_counter()
        write_report(result, Path(tmp))
        report_s = time.perf_counter() - t
    s = result.summary
    return {"bars": result.bars, "timestamps": len(result.recording), "run_s": result.elapsed_s,
            "load_s": result.load_s, "report_s": report_s,
            "bars_per_s": result.bars_per_second, "rebalances": s.rebalances,
            "orders": s.orders, "fills": s.fills, "risk_rejections": s.risk_rejections,
            "target_updates": result.recording.target_updates,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def relax_loss_limits(cfg: Any) -> Any:
    """config.toml with the daily loss and drawdown limits out of reach. With them, the full
    replay goes REDUCING then HALTED in its first weeks (BTC and ETH at their caps in 2017) and
    nothing trades afterwards: most of its bars are the cheap halted path. Relaxed, it
    rebalances through 2017-2022 (about 39,000 orders as its NAV grows: a decision is split
    into children of `max_child_notional` and sent as fast as the order throttles pass them):
    the pipeline's cost when it trades."""
    import dataclasses

    state = dataclasses.replace(cfg.risk.state, max_daily_loss_fraction=1.0,
                                max_drawdown_fraction=1.0)
    return dataclasses.replace(cfg, risk=dataclasses.replace(cfg.risk, state=state))


def old_paths(daemon: Any) -> None:
    """The switchable fast paths off: publish every event then `settle()`, the rebalancer's
    full `decide` on every bar (no halted or within-bands shortcut), solves in a worker
    thread instead of inline (tests/test_replay_lockstep.py: the same calls either way)."""
    from daemon.solver import SolverPool

    daemon.bus.inline_lockstep = False
    daemon.rebalancer._halted_repeat = lambda exempt: False
    daemon.rebalancer.shortcuts = False
    daemon.solver = daemon.rebalancer.solver = SolverPool("thread")


def ab(rounds: int) -> str:
    """Fast paths against old paths, alternated in this process (the order flips every round,
    so a drift in the machine's load favours neither); medians of `rounds` runs each."""
    windows = {"full data": (None, None), f"{QUIET[0]}..{QUIET[1]}": QUIET}
    replay_once(*QUIET)  # warm-up: imports, the solver cache's first compile of each shape
    runs: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for k in range(rounds):
        for window, (start, end) in windows.items():
            for fast in ((True, False) if k % 2 == 0 else (False, True)):
                runs.setdefault((window, fast), []).append(replay_once(start, end, fast=fast))
    lines = [f"{'window':<24} {'variant':<10} {'run, s':>7} {'bars/s':>8} {'old / new':>9}"]
    for window in windows:
        median = {fast: statistics.median(r["run_s"] for r in runs[(window, fast)])
                  for fast in (True, False)}
        bars = runs[(window, True)][0]["bars"]
        for fast, name in ((False, "old paths"), (True, "new")):
            lines.append(f"{window:<24} {name:<10} {median[fast]:>7.2f} "
                         f"{bars / median[fast]:>8,.0f} {median[False] / median[fast]:>9.2f}")
    return "\n".join(lines)


def _loop_run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run() -> list[dict[str, Any]]:
    if not DATA.is_dir():
        return [{"metric": "replay bars/s", "value": None, "unit": "",
                 "note": f"skipped: {DATA} not found"}]
    quiet = replay_once(*QUIET)
    r = replay_once()
    trading = replay_once(relaxed=True)
    return [
        {"metric": "replay bars/s (1h, 6 assets, rebalancing on)", "value": r["bars_per_s"],
         "unit": "/s", "goal": f">= {GOAL_BARS_PER_S:,}",
         "ok": r["bars_per_s"] >= GOAL_BARS_PER_S, "note": _note(r)},
        {"metric": "replay run / data load / report", "value": r["run_s"], "unit": "s",
         "note": f"load {r['load_s']:.2f} s, report {r['report_s']:.2f} s"},
        {"metric": "replay bars/s, full data, loss limits relaxed (trades throughout)",
         "value": trading["bars_per_s"], "unit": "/s", "goal": f">= {GOAL_BARS_PER_S:,}",
         "ok": trading["bars_per_s"] >= GOAL_BARS_PER_S, "note": _note(trading)},
        {"metric": f"replay bars/s, {QUIET[0]}..{QUIET[1]} only", "value": quiet["bars_per_s"],
         "unit": "/s", "note": _note(quiet)},
        {"metric": "replay peak RSS (full data)", "value": r["peak_rss_mb"], "unit": "MB"},
    ]


def _note(r: dict[str, Any]) -> str:
    return (f"{r['bars']:,} bars, {r['rebalances']:,} rebalances, {r['orders']:,} orders "
            f"({r['risk_rejections']:,} refused by the risk gate), {r['fills']:,} fills, "
            f"{r['target_updates']:,} solves")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, help="write a cProfile summary here")
    ap.add_argument("--config", type=Path, default=ROOT / "config.toml")
    ap.add_argument("--start")
    ap.add_argument("--end")
    ap.add_argument("--top", type=int, default=45)
    ap.add_argument("--breakdown", action="store_true",
                    help="print the wall time of each bus handler, the venue and the rest")
    ap.add_argument("--ab", type=int, metavar="N",
                    help="fast paths against old paths, N alternated rounds")
    ap.add_argument("--old-paths", action="store_true",
                    help="publish-then-settle and the full decide (see old_paths)")
    ap.add_argument("--relaxed", action="store_true",
                    help="daily loss and drawdown limits out of reach (see relax_loss_limits)")
    args = ap.parse_args()
    if args.ab:
        print(ab(args.ab))
        return
    prof = cProfile.Profile() if args.profile else None
    bd = Breakdown() if args.breakdown else None
    r = replay_once(args.start, args.end, prof, bd, args.config, fast=not args.old_paths,
                    relaxed=args.relaxed)
    for k, v in r.items():
        print(f"{k:<16} {v:,.2f}" if isinstance(v, float) else f"{k:<16} {v:,}")
    if bd is not None:
        print(bd.table(r["run_s"]))
    if prof is not None:
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        args.profile.write_text(buf.getvalue())
        print(f"profile: {args.profile}")


if __name__ == "__main__":
    main()
