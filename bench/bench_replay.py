"""Replay throughput: the hourly Binance data through the whole daemon, rebalancing on.

    .venv/bin/python -m bench.bench_replay [--profile OUT.txt] [--start DATE] [--end DATE]

Replays `../shared/data/binance-spot/1h/` (6 assets, about 230,000 bars over 45,000
timestamps) with `config.toml` exactly as `tradingd replay` does (same `Daemon`, paper venue,
journal, the report's recorder on the bus), and reports bars per second of the run itself:
data loading and the report are timed separately. `--profile` writes the cProfile summary
that bench/README.md quotes.

Goal: >= 50,000 bars/s end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "binance-spot" / "1h"
SYMBOLS = ["BTC/USDT", "ETH/USDT", "BNB/USDT", "SOL/USDT", "XRP/USDT", "ADA/USDT"]
GOAL_BARS_PER_S = 50_000


def replay_once(start: str | None = None, end: str | None = None,
                profile: cProfile.Profile | None = None) -> dict[str, Any]:
    from daemon.config import load_config
    from daemon.logs import configure
    from daemon.replay import ReplayRequest, execute, prepare
    from daemon.report import write_report

    cfg = load_config(ROOT / "config.toml")
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp, \
            open(Path(tmp) / "replay.log", "w", encoding="utf-8") as log:
        configure("warning", stream=log)  # `tradingd replay`'s default --log-level
        req = ReplayRequest(data_dir=DATA, out_dir=Path(tmp), start=start, end=end,
                            symbols=SYMBOLS)
        prepared = prepare(cfg, req)
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
            "orders": s.orders, "fills": s.fills,
            "target_updates": result.recording.target_updates,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


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
    r = replay_once()
    note = (f"{r['bars']:,} bars, {r['timestamps']:,} timestamps, {r['rebalances']} "
            f"rebalances, {r['orders']} orders, {r['target_updates']} solves")
    return [
        {"metric": "replay bars/s (1h, 6 assets, rebalancing on)", "value": r["bars_per_s"],
         "unit": "/s", "goal": f">= {GOAL_BARS_PER_S:,}",
         "ok": r["bars_per_s"] >= GOAL_BARS_PER_S, "note": note},
        {"metric": "replay run / data load / report", "value": r["run_s"], "unit": "s",
         "note": f"load {r['load_s']:.2f} s, report {r['report_s']:.2f} s"},
        {"metric": "replay peak RSS", "value": r["peak_rss_mb"], "unit": "MB"},
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, help="write a cProfile summary here")
    ap.add_argument("--start")
    ap.add_argument("--end")
    ap.add_argument("--top", type=int, default=45)
    args = ap.parse_args()
    prof = cProfile.Profile() if args.profile else None
    r = replay_once(args.start, args.end, prof)
    for k, v in r.items():
        print(f"{k:<16} {v:,.2f}" if isinstance(v, float) else f"{k:<16} {v:,}")
    if prof is not None:
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        args.profile.write_text(buf.getvalue())
        print(f"profile: {args.profile}")


if __name__ == "__main__":
    main()
