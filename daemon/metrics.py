"""What the operations surfaces measure: event-loop lag, what passed on the bus, and the
Prometheus text rendering of a status snapshot (`daemon.status.snapshot`).

The core keeps its own counts (`EventCounters`, bus subscriber stats, the OMS's orders); this
module adds only what those do not keep: wall-clock arrival of bars per symbol, solve times,
recent rejections, and loop lag. Nothing here touches money.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

from adapters.tasks import stop_task
from daemon.bus import EventBus
from daemon.events import Bar, OrderRejected, RiskRejected, TargetWeights


class LoopLagMonitor:
    """Sleeps `interval` seconds again and again and records how late each wake-up was: the
    time the loop was busy with something else (a blocking call, a long handler)."""

    name = "loop_lag"

    def __init__(self, interval: float = 0.25, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.window_s = window_s
        self.clock = clock
        self.last = 0.0
        self.last_tick = clock()
        self.ticks = 0
        self._window: deque[tuple[float, float]] = deque()
        self._task: asyncio.Task[None] | None = None

    def record(self, lag: float) -> None:
        now = self.clock()
        self.last = max(lag, 0.0)
        self.last_tick = now
        self.ticks += 1
        self._window.append((now, self.last))
        while self._window and now - self._window[0][0] > self.window_s:
            self._window.popleft()

    def window_max(self) -> float:
        return max((lag for _, lag in self._window), default=0.0)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            self.record(loop.time() - before - self.interval)

    async def start(self) -> None:
        self.last_tick = self.clock()
        self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        await stop_task(self._task)


class EventObserver:
    """A bus subscriber keeping what status and metrics show beyond the core's own counts."""

    def __init__(self, recent: int = 20, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.bars = 0
        self.bar_wall: dict[str, float] = {}      # symbol -> monotonic time it arrived
        self.bar_ts: dict[str, str] = {}          # symbol -> the bar's own open time
        self.solves = 0
        self.last_solve_s: float | None = None
        self.recent_rejections: deque[dict[str, Any]] = deque(maxlen=recent)
        self.venue_rejections: Counter[str] = Counter()

    def subscribe(self, bus: EventBus) -> None:
        bus.subscribe("ops_observer", {Bar: self.on_bar, TargetWeights: self.on_targets,
                                       RiskRejected: self.on_risk_rejected,
                                       OrderRejected: self.on_order_rejected})

    def on_bar(self, bar: Bar) -> None:
        self.bars += 1
        self.bar_wall[bar.symbol] = self.clock()
        self.bar_ts[bar.symbol] = bar.ts.isoformat()

    def on_targets(self, event: TargetWeights) -> None:
        self.solves += 1
        seconds = event.stats.get("solve_seconds")
        if isinstance(seconds, int | float):
            self.last_solve_s = float(seconds)

    def on_risk_rejected(self, event: RiskRejected) -> None:
        self.recent_rejections.append({
            "ts": event.ts.isoformat(), "kind": "risk", "symbol": event.intent.symbol,
            "client_order_id": event.intent.client_order_id, "code": event.code,
            "detail": event.describe()})

    def on_order_rejected(self, event: OrderRejected) -> None:
        # reasons look like "VENUE_REJECTED <venue text>" or "TRADING_HALTED reason=…": the first
        # word is a bounded label set, the rest is detail
        code = event.reason.split(" ", 1)[0] or "UNKNOWN"
        self.venue_rejections[code] += 1
        self.recent_rejections.append({
            "ts": event.ts.isoformat(), "kind": "venue", "symbol": event.symbol,
            "client_order_id": event.client_order_id, "code": code, "detail": event.reason})

    def last_wall(self) -> float | None:
        return max(self.bar_wall.values(), default=None)

    def bar_ages(self) -> dict[str, float]:
        now = self.clock()
        return {s: now - t for s, t in self.bar_wall.items()}


# -- Prometheus text exposition format 0.0.4 ------------------------------------------------

def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[dict[str, object], float | int | None]]) -> None:
        rows = [(labels, v) for labels, v in samples if v is not None]
        self.lines.append(f"# HELP tradingd_{name} {help_text}")
        self.lines.append(f"# TYPE tradingd_{name} {kind}")
        for labels, value in rows:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            suffix = "{" + label_text + "}" if label_text else ""
            self.lines.append(f"tradingd_{name}{suffix} {_number(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float | int | None) -> None:
        self.metric(name, kind, help_text, [({}, value)])


def render_prometheus(snap: dict[str, Any]) -> str:
    """A `daemon.status.snapshot` as Prometheus text. Counters are per process lifetime."""
    w = _Writer()
    health = snap["health"]
    w.one("up", "gauge", "1 while the daemon has started and serves requests",
          1 if snap["started"] else 0)
    w.one("healthy", "gauge", "1 while /healthz answers 200", 1 if health["ok"] else 0)
    w.one("uptime_seconds", "gauge", "seconds since the process started", snap["uptime_s"])
    w.metric("trading_state", "gauge", "1 for the current trading state",
             [({"state": snap["trading"]["state"]}, 1)])
    c = snap["counters"]
    w.one("bars_processed_total", "counter", "bars delivered through the bus", c["bars"])
    w.metric("bar_age_seconds", "gauge", "seconds since the last bar of a symbol arrived",
             [({"symbol": s}, v["age_s"]) for s, v in snap["bars"].items()])
    bus = snap["bus"]
    w.metric("bus_queue_depth", "gauge", "events waiting in a subscriber's inbox",
             [({"subscriber": n}, s["depth"]) for n, s in bus.items()])
    w.metric("bus_queue_high_water", "gauge", "deepest a subscriber's inbox has been",
             [({"subscriber": n}, s["high_water"]) for n, s in bus.items()])
    w.metric("bus_delivered_total", "counter", "events a subscriber handled",
             [({"subscriber": n}, s["delivered"]) for n, s in bus.items()])
    w.metric("bus_handler_errors_total", "counter", "handler calls that raised",
             [({"subscriber": n}, s["errors"]) for n, s in bus.items()])
    w.metric("bus_coalesced_total", "counter", "bars replaced by a newer bar in a full inbox",
             [({"subscriber": n}, s["coalesced"]) for n, s in bus.items()])
    loop = snap["loop"]
    w.one("loop_lag_seconds", "gauge", "lateness of the last loop-lag probe", loop["lag_s"])
    w.one("loop_lag_max_seconds", "gauge", "worst loop lag over the last minute",
          loop["lag_max_s"])
    w.metric("orders", "gauge", "orders of this run by state",
             [({"state": k}, v) for k, v in snap["orders_by_state"].items()])
    w.one("open_orders", "gauge", "orders still working at the venue", len(snap["orders"]))
    w.one("order_intents_total", "counter", "orders proposed by the rebalancer", c["orders"])
    w.one("fills_total", "counter", "executions booked", c["fills"])
    w.one("fees_total", "counter", "fees paid, quote currency", c["fees"])
    w.one("traded_notional_total", "counter", "notional traded, quote currency",
          c["traded_notional"])
    w.metric("risk_rejections_total", "counter", "orders denied by the risk gate, by reason",
             [({"reason": k}, v) for k, v in snap["rejections_by_code"].items()])
    w.metric("venue_rejections_total", "counter", "orders refused by the venue or the OMS",
             [({"reason": k}, v) for k, v in snap["venue_rejections_by_code"].items()])
    w.one("nav", "gauge", "net asset value, quote currency", snap["nav"])
    w.one("cash", "gauge", "cash, quote currency", snap["cash"])
    w.metric("weight", "gauge", "current weight of a symbol (fraction of NAV)",
             [({"symbol": p["symbol"]}, p["weight"]) for p in snap["positions"]])
    w.metric("target_weight", "gauge", "target weight of a symbol",
             [({"symbol": p["symbol"]}, p["target"]) for p in snap["positions"]])
    w.one("max_drift", "gauge", "largest |weight - target| over symbols, working orders "
          "included", snap["max_drift"])
    w.one("rebalance_band", "gauge", "drift that triggers a rebalance", snap["band"])
    risk = snap["risk"]
    w.one("var", "gauge", "value at risk of the book, quote currency", risk.get("var"))
    w.one("var_limit", "gauge", "value-at-risk limit, quote currency", risk.get("var_limit"))
    w.one("var_fraction", "gauge", "value at risk / NAV", risk.get("var_fraction"))
    w.one("var_limit_fraction", "gauge", "value-at-risk limit / NAV",
          risk.get("var_limit_fraction"))
    w.one("gross_exposure", "gauge", "sum of |position value| / NAV", risk.get("gross_exposure"))
    w.one("gross_exposure_limit", "gauge", "gross exposure limit / NAV",
          risk.get("max_gross_exposure"))
    w.one("drawdown", "gauge", "drawdown from peak NAV (fraction)", risk.get("drawdown"))
    w.one("rebalances_total", "counter", "rebalance decisions that sent orders", c["rebalances"])
    w.one("solves_total", "counter", "successful target-weight solves", c["solves"])
    w.one("solve_failures_total", "counter", "failed or timed-out solves", c["solve_failures"])
    w.one("solve_seconds", "gauge", "duration of the last successful solve",
          c["last_solve_s"])
    w.metric("reconnects_total", "counter", "reconnections of a market-data or venue link",
             [({"component": k}, v) for k, v in snap["reconnects"].items()])
    w.metric("config_reloads_total", "counter", "SIGHUP config reloads by result",
             [({"result": k}, v) for k, v in snap["reloads"].items()])
    return "\n".join(w.lines) + "\n"
