"""The risk gate inside a real replay, old against new: a shadow gate from a git revision runs
beside the daemon's gate on the same events, in the same process.

    .venv/bin/python -m bench.gate_shadow main --relaxed [--start D --end D] [--no-compare]

The daemon's gate (this tree) stays on the bus and makes the replay's decisions. The shadow
(`bench.bench_gate.load_revision(REV)`) reads the same portfolio and OMS, keeps its own journal
and publishes into a list. Each of the gate's handlers (Bar, BarsClosed, OrderIntent, Fill,
OrderRejected) calls both, the order flipped every call so that neither profits from the
other's warm caches, timed with perf_counter_ns: per-handler cost in the pipeline, old and
new, under the same machine load (the load of a shared machine moves absolute numbers by
±30% between runs; the ratio of one run is the measurement).

After every event the two gates are compared: trading state (state, reason, context),
approval and rejection counts, the last rejection's code and context, after each BarsClosed
the loss marks (peak, day, day's start NAV, last NAV, exact floats), after each order the
bar's VaR view (covered assets, the book's risk) and the model's covariance bytes. Any
difference is printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_gate import load_revision  # noqa: E402
from bench.bench_replay import DATA, SYMBOLS, _loop_run, relax_loss_limits  # noqa: E402


class _ListBus:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def publish(self, event: Any) -> None:
        self.events.append(event)

    def track(self, coro: Any, name: str) -> None:
        coro.close()


class _OmsView:
    """The daemon's OMS as the shadow sees it: its working orders and orders, but a halt of
    its own (a gate mirrors its halts into `halted_reason`: the shadow's must not reach the
    OMS the daemon trades through, or the daemon's gate would see it as an OMS halt)."""

    def __init__(self, oms: Any) -> None:
        self._oms = oms
        self.halted_reason: str | None = None

    @property
    def orders(self) -> Any:
        return self._oms.orders

    def working_quantity(self) -> dict[str, float]:
        return self._oms.working_quantity()

    async def cancel(self, client_order_id: str, reason: str) -> None:
        pass

    async def cancel_all(self, reason: str) -> int:
        return 0


def _differences(old: Any, new: Any, kind: str, event: Any) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    at = getattr(event, "ts", None)
    ro, rn = old.trading.record, new.trading.record
    if (ro.state, ro.reason, ro.context) != (rn.state, rn.reason, rn.context):
        out.append((kind, at, "state", ro, rn))
    if (old.approved, dict(old.rejections)) != (new.approved, dict(new.rejections)):
        out.append((kind, at, "counts", old.approved, new.approved, dict(old.rejections),
                    dict(new.rejections)))
    if old.recent and (old.recent[0]["code"], old.recent[0]["context"]) != (
            new.recent[0]["code"], new.recent[0]["context"]):
        out.append((kind, at, "rejection", old.recent[0], new.recent[0]))
    if kind == "BarsClosed":
        wo, wn = old.nav_watch, new.nav_watch
        if (wo.peak_nav, wo.day, wo.day_start_nav, wo.last_nav) != (
                wn.peak_nav, wn.day, wn.day_start_nav, wn.last_nav):
            out.append((kind, at, "loss marks", wo, wn))
    if kind == "OrderIntent":
        vo, vn = old.ctx.var, new.ctx.var
        ko, kn = ((v.bars, v.unavailable, v.covered.tolist(), v.uncovered.tolist(), v.positions,
                   v.book_risk, v.all_covered) for v in (vo, vn))
        po, pn = vo.prepared, vn.prepared
        cov = getattr(po, "covariance", None), getattr(pn, "covariance", None)
        if ko != kn or (po is None) != (pn is None) or (
                cov[0] is not None and (cov[1] is None or cov[0].tobytes() != cov[1].tobytes())):
            out.append((kind, at, "var", ko, kn))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="the shadow gate's git revision")
    ap.add_argument("--start")
    ap.add_argument("--end")
    ap.add_argument("--relaxed", action="store_true", help="loss limits out of reach")
    ap.add_argument("--no-compare", action="store_true")
    args = ap.parse_args()
    from daemon.config import load_config
    from daemon.journal import Journal
    from daemon.logs import configure
    from daemon.replay import ReplayRequest, execute, prepare

    old_gate = load_revision(args.rev).risk_gate
    cfg = load_config(ROOT / "config.toml")
    if args.relaxed:
        cfg = relax_loss_limits(cfg)
    ns: dict[str, list[int]] = {}
    calls: dict[str, int] = {}
    diffs: list[tuple[Any, ...]] = []
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "log", "w") as log:
        configure("warning", stream=log)
        req = ReplayRequest(data_dir=DATA, out_dir=Path(tmp), start=args.start, end=args.end,
                            symbols=SYMBOLS)
        prepared = prepare(cfg, req)
        daemon = prepared.daemon
        new = daemon.gate
        old = old_gate.RiskGate(
            _ListBus(), cfg.risk, new.clock, symbols=daemon.symbols,
            portfolio=daemon.portfolio, oms=_OmsView(daemon.oms), markets=daemon.venue.markets,
            journal=Journal(Path(tmp) / "shadow.sqlite", synchronous="OFF"),
            interval_s=cfg.market.interval_s)
        use_market_time = new.use_market_time

        def both_market_time() -> None:
            use_market_time()
            old.use_market_time()

        new.use_market_time = both_market_time  # type: ignore[method-assign]
        # both gates publish into a list while timed (the shadow's list is all it has); the
        # daemon gate's events then go on to the bus, in order, untimed
        held = _ListBus()
        bus = new.bus
        held.track = bus.track  # type: ignore[method-assign]  # a halt's cancel-all: real
        new.bus = held
        new.trading.publish = held.publish

        def forward() -> None:
            if held.events:
                events, held.events = held.events, []
                for event in events:
                    bus.publish(event)
        clock = time.perf_counter_ns
        flip = [0]

        def pair(kind: str, fn_new: Callable[[Any], Any],
                 fn_old: Callable[[Any], Any]) -> Callable[[Any], Any]:
            total = ns.setdefault(kind, [0, 0])
            calls.setdefault(kind, 0)

            def handler(event: Any) -> Any:
                flip[0] ^= 1
                if flip[0]:
                    t0 = clock()
                    fn_old(event)
                    t1 = clock()
                    out = fn_new(event)
                    t2 = clock()
                    total[0] += t1 - t0
                    total[1] += t2 - t1
                else:
                    t0 = clock()
                    out = fn_new(event)
                    t1 = clock()
                    fn_old(event)
                    t2 = clock()
                    total[1] += t1 - t0
                    total[0] += t2 - t1
                forward()
                calls[kind] += 1
                if not args.no_compare:
                    diffs.extend(_differences(old, new, kind, event))
                return out
            return handler

        for sub in daemon.bus.subscribers:
            if sub.name == "risk_gate":
                for etype, fn in list(sub.handlers.items()):
                    sub.handlers[etype] = pair(etype.__name__, fn, getattr(old, fn.__name__))
        result = _loop_run(execute(prepared))
    s = result.summary
    print(f"replay {result.elapsed_s:.2f} s, {s.orders} orders, {s.fills} fills, "
          f"end NAV {s.end_nav:.5f}; old = {args.rev}, new = this tree")
    print(f"{'handler':<14} {'calls':>8} {'old µs':>8} {'new µs':>8} {'new/old':>8} "
          f"{'old s':>7} {'new s':>7}")
    all_old = all_new = 0
    for kind, (o, n) in ns.items():
        c = calls[kind]
        all_old += o
        all_new += n
        if c:
            print(f"{kind:<14} {c:>8,} {o / c / 1e3:>8.2f} {n / c / 1e3:>8.2f} "
                  f"{n / o if o else 0:>8.3f} {o / 1e9:>7.3f} {n / 1e9:>7.3f}")
    print(f"{'all':<14} {'':>8} {'':>8} {'':>8} {all_new / max(all_old, 1):>8.3f} "
          f"{all_old / 1e9:>7.3f} {all_new / 1e9:>7.3f}")
    if not args.no_compare:
        print(f"differences: {len(diffs)}")
        for d in diffs[:10]:
            print("  ", d)


if __name__ == "__main__":
    main()
