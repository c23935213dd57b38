"""Resuming a deterministic market feed after a restart.

The simulated market restarts from its seed at bar 0, a CSV replay from its first bar. The paper
venue remembers the last bar it saw (`last_bar_ts`, kept in its state file): giving it older
bars again would replay prices into a market that has already moved on. `resume_feed` wraps
the feed so that every timestamp up to that bar is skipped without pacing (the simulator is
deterministic, so skipping is exact), the last `warm` of them are handed over first as warm-up
(the daemon's pump gives bars at or before the resume point to the bus only: estimator history
and marks, never the venue, never a decision), and the rest are paced as the original would be.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta

import structlog

from adapters.feed import BarFeed
from adapters.replay import ReplayFeed
from adapters.simulated import Pacer, SimulatedMarket, parse_utc
from daemon.events import Bar

log = structlog.get_logger("resume")


class ResumedFeed:
    def __init__(self, inner: BarFeed, after: datetime, warm: int, speed: float,
                 lockstep: bool) -> None:
        self.inner = inner
        self.after = after
        self.warm = warm
        self.speed = speed  # 0: `inner` paces itself (or does not pace)
        self.lockstep = lockstep
        self.symbols = inner.symbols
        self.interval_s = inner.interval_s
        self.skipped = 0
        self._closed = False

    async def bars(self) -> AsyncIterator[list[Bar]]:
        pacer = Pacer(self.speed)
        held: deque[list[Bar]] = deque(maxlen=max(self.warm, 0) or None)
        async for bars in self.inner.bars():
            if self._closed:
                return
            if bars and max(b.ts for b in bars) <= self.after:
                self.skipped += 1
                if self.warm > 0:
                    held.append(bars)
                continue
            if held:
                log.info("feed_resumed", after=self.after.isoformat(), skipped=self.skipped,
                         warm_up=len(held))
            while held:
                yield held.popleft()
            await pacer.wait(self.interval_s)
            if self._closed:
                return
            yield bars

    async def close(self) -> None:
        self._closed = True
        await self.inner.close()


def resume_feed(feed: BarFeed, after: datetime | None, warm: int) -> BarFeed:
    """`feed` resumed after bar time `after`, or `feed` itself when there is nothing to
    resume. Simulated and replay feeds are rebuilt unpaced and re-paced here, so the skipped
    bars cost no waiting; any other feed is only filtered."""
    if after is None:
        return feed
    cfg = getattr(feed, "cfg", None)
    speed = float(getattr(cfg, "speed", 0.0) or 0.0)
    lockstep = getattr(feed, "lockstep", None)
    lockstep = (not speed) if lockstep is None else bool(lockstep)
    inner: BarFeed = feed
    if isinstance(feed, SimulatedMarket) and speed > 0:
        inner = SimulatedMarket(replace(feed.cfg, speed=0.0))
    elif isinstance(feed, ReplayFeed):
        # a replay can start late instead of skipping: from the first warm-up bar on
        start = after - timedelta(seconds=feed.interval_s * warm)
        first = feed.cfg.start
        if first is None or parse_utc(first) < start:
            first = start.isoformat()
        inner = ReplayFeed(replace(feed.cfg, speed=0.0, start=first,
                                   interval_s=feed.interval_s))
    else:
        speed = 0.0
    return ResumedFeed(inner, after, warm, speed, lockstep)
