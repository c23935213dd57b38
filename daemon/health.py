"""Is the daemon alive and doing its job? One answer for /healthz, `tradingd health`, Docker's
HEALTHCHECK and the systemd watchdog.

Healthy means all of:
- started: start-up (venue, reconciliation, solver warm-up) has completed;
- the event loop is live: the lag monitor keeps ticking and its latest lag is under
  `health.max_loop_lag_s` (a stall that is over is reported, not held against the daemon: the
  systemd watchdog must restart a daemon that is stuck, not one that was slow once);
- market data is fresh: a bar reached the bus within `health.stale_after_s` (wall clock);
- the bus is delivering: no subscriber has held a non-empty inbox without delivering anything
  for `health.bus_stall_s`.
Halted trading is healthy: it is an operator's decision, not a fault to restart away.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.bus import EventBus
from daemon.metrics import EventObserver, LoopLagMonitor


@dataclass(frozen=True)
class HealthConfig:
    max_loop_lag_s: float = field(default=5.0, metadata={
        "doc": "unhealthy while the event loop runs this late (seconds)",
        "min": 0.05, "max": 600.0})
    stale_after_s: float = field(default=0.0, metadata={
        "doc": "unhealthy when no bar arrived for this long (wall clock); 0 = two bar "
               "intervals at the feed's speed plus 60 s", "min": 0.0})
    bus_stall_s: float = field(default=120.0, metadata={
        "doc": "unhealthy when a bus subscriber has events waiting but delivered none for this "
               "long (a venue call may legitimately take a minute of retries)", "min": 1.0})


@dataclass(frozen=True)
class Health:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def auto_stale_after(interval_s: int, speed: float | None) -> float:
    """Two bar intervals as the feed delivers them, plus a minute for a late exchange.
    A simulation or replay at `speed` x real time delivers a bar every interval/speed seconds;
    speed 0 (as fast as possible) delivers continuously."""
    if speed is None:
        wall = float(interval_s)
    elif speed > 0:
        wall = interval_s / speed
    else:
        wall = 0.0
    return 2.0 * wall + 60.0


class HealthMonitor:
    def __init__(self, cfg: HealthConfig, *, started: Callable[[], bool], lag: LoopLagMonitor,
                 bars: EventObserver, bus: EventBus, stale_after_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.started = started
        self.lag = lag
        self.bars = bars
        self.bus = bus
        self.stale_after_s = stale_after_s
        self.clock = clock
        self.created = clock()
        # subscriber name -> (delivered count last seen, when the inbox was last seen making
        # progress or empty)
        self._progress: dict[str, tuple[int, float]] = {}

    def stalled_subscribers(self) -> dict[str, float]:
        now = self.clock()
        stalled = {}
        for sub in self.bus.subscribers:
            delivered = sub.stats.delivered + sub.stats.errors
            seen = self._progress.get(sub.name)
            if seen is None or seen[0] != delivered or sub.depth == 0:
                self._progress[sub.name] = (delivered, now)
                continue
            waited = now - seen[1]
            if waited > self.cfg.bus_stall_s:
                stalled[sub.name] = round(waited, 1)
        return stalled

    def check(self) -> Health:
        now = self.clock()
        reasons: list[str] = []
        if not self.started():
            reasons.append("starting")
        worst = self.lag.window_max()
        tick_age = now - self.lag.last_tick
        if self.lag.last > self.cfg.max_loop_lag_s:
            reasons.append(f"loop lag {self.lag.last:.2f}s > {self.cfg.max_loop_lag_s:g}s")
        if tick_age > self.cfg.max_loop_lag_s + self.lag.interval:
            reasons.append(f"loop lag monitor silent for {tick_age:.1f}s")
        last = self.bars.last_wall()
        silence = now - (last if last is not None else self.created)
        if self.stale_after_s > 0 and silence > self.stale_after_s:
            what = "no bar" if last is None else "no new bar"
            reasons.append(f"{what} for {silence:.0f}s > {self.stale_after_s:g}s")
        stalled = self.stalled_subscribers()
        if stalled:
            reasons.append("bus stalled: " + ", ".join(f"{k} {v:g}s" for k, v in stalled.items()))
        return Health(ok=not reasons, reasons=reasons, details={
            "loop_lag_s": round(self.lag.last, 4), "loop_lag_max_s": round(worst, 4),
            "bar_silence_s": round(silence, 1), "stale_after_s": self.stale_after_s,
            "stalled_subscribers": stalled})
