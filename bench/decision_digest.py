"""A digest of a replay's decisions, to show that a faster path changed speed only.

    .venv/bin/python -m bench.decision_digest [quarter] [full] [relaxed]

Replays the hourly data as `bench_replay` does (2021 Q3; the full data with `config.toml`; the
full data with the loss limits out of reach) and prints, per replay, a hash of every decision
event in publication order (targets, order intents, approvals, refusals, venue answers, fills,
trading-state changes; `daemon.fingerprint`'s rendering, wall-clock times left out), a hash
of `metrics.json`, and the run's counts and end NAV. Bars are not in it, so it also holds
across changes to how bars reach the handlers; `daemon.fingerprint` (every handler call) is
the stricter check the equivalence tests use. Run it before and after a change: equal digests,
equal decisions.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.bench_replay import DATA, QUIET, ROOT, SYMBOLS, _loop_run, relax_loss_limits
from daemon import events as ev
from daemon.config import load_config
from daemon.fingerprint import _key
from daemon.logs import configure
from daemon.replay import ReplayRequest, execute, prepare
from daemon.report import write_report

DECISIONS = (ev.TargetWeights, ev.OrderIntent, ev.OrderApproved, ev.RiskRejected,
             ev.TradingStateChanged, ev.OrderAccepted, ev.OrderRejected, ev.OrderCancelled,
             ev.Fill)
WINDOWS: dict[str, dict[str, Any]] = {
    "quarter": {"start": QUIET[0], "end": QUIET[1]}, "full": {}, "relaxed": {"relaxed": True}}


def digest(start: str | None = None, end: str | None = None,
           relaxed: bool = False) -> dict[str, Any]:
    cfg = load_config(ROOT / "config.toml")
    if relaxed:
        cfg = relax_loss_limits(cfg)
    with tempfile.TemporaryDirectory(prefix="decision-digest-") as tmp, \
            open(Path(tmp) / "replay.log", "w", encoding="utf-8") as log:
        configure("warning", stream=log)
        prepared = prepare(cfg, ReplayRequest(data_dir=DATA, out_dir=Path(tmp), start=start,
                                              end=end, symbols=SYMBOLS))
        sha, count = hashlib.sha256(), 0

        def record(event: Any) -> None:
            nonlocal count
            sha.update(_key(event).encode() + b"\n")
            count += 1

        prepared.daemon.bus.subscribe("decision-digest", dict.fromkeys(DECISIONS, record))
        result = _loop_run(execute(prepared))
        write_report(result, Path(tmp))
        metrics = (Path(tmp) / "metrics.json").read_bytes()
    s = result.summary
    return {"decisions": sha.hexdigest()[:16], "events": count,
            "metrics": hashlib.sha256(metrics).hexdigest()[:16], "orders": s.orders,
            "fills": s.fills, "end_nav": round(s.end_nav, 6), "run_s": round(result.elapsed_s, 2)}


def main() -> None:
    for name in sys.argv[1:] or list(WINDOWS):
        if name not in WINDOWS:
            raise SystemExit(f"unknown replay {name!r}: choose from {', '.join(WINDOWS)}")
        print(name, json.dumps(digest(**WINDOWS[name])), flush=True)


if __name__ == "__main__":
    main()
