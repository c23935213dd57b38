"""Event bus throughput against a raw `asyncio.Queue` baseline, measured in the same run.

    .venv/bin/python -m bench.bench_bus

Both sides deliver the same pre-built events to the same number of consumers, each running a
trivial handler, on the same event loop (uvloop when installed, as the daemon runs):

- raw: one `asyncio.Queue` per consumer; `put_nowait`, then a consumer task does `get`,
  handler, `task_done`; the producer waits with `join()`.
- bus: `EventBus.publish`, one subscriber per consumer; the producer waits with `settle()`.

Two shapes: `burst` publishes 1,000 events between waits (throughput), `lockstep` publishes
one replay timestamp (6 bars and a BarsClosed) between waits, as an unpaced replay did, and
`lockstep inline` hands the timestamp to `publish_settled`, as it does now: with the bus quiet,
the handlers run in the publisher's task in the workers' order. Rates
are deliveries per second (events x consumers); the ratio bus / raw is what the goal is about
(>= 0.5): absolute numbers move with the load of a shared machine, the ratio much less. Each
figure is the best of `REPEATS` runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.bus import EventBus
from daemon.events import Bar, BarsClosed, Event, Fill, Side

CONSUMERS = 5  # the daemon's bar consumers: portfolio, risk gate, rebalancer, counters, replay
BURST = 1_000
BURST_EVENTS = 100_000
STAMPS = 10_000
SYMBOLS = 6
REPEATS = 3
GOAL_RATIO = 0.5
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _fills(n: int) -> list[Event]:
    return [Fill(f"c{i}", f"v{i}", f"t{i}", "BTC/USDT", Side.BUY, 1.0, 100.0, 0.1, T0)
            for i in range(n)]


def _stamps(n: int) -> list[list[Event]]:
    out: list[list[Event]] = []
    for k in range(n):
        ts = T0 + timedelta(hours=k)
        bars: list[Event] = [Bar(f"S{j}/USDT", ts, 1.0, 1.0, 1.0, 1.0, 1.0)
                             for j in range(SYMBOLS)]
        out.append([*bars, BarsClosed(ts=ts, count=SYMBOLS)])
    return out


def _batches(shape: str) -> list[list[Event]]:
    if shape == "burst":
        events = _fills(BURST_EVENTS)
        return [events[i:i + BURST] for i in range(0, len(events), BURST)]
    return _stamps(STAMPS)


async def raw_queue(batches: list[list[Event]], consumers: int) -> tuple[float, int]:
    seen = [0] * consumers
    queues: list[asyncio.Queue[Event]] = [asyncio.Queue() for _ in range(consumers)]

    def handler(i: int) -> Callable[[Event], None]:
        def on(event: Event) -> None:
            seen[i] += 1
        return on

    async def consume(q: asyncio.Queue[Event], on: Callable[[Event], None]) -> None:
        while True:
            event = await q.get()
            on(event)
            q.task_done()

    tasks = [asyncio.create_task(consume(q, handler(i))) for i, q in enumerate(queues)]
    started = time.perf_counter()
    for batch in batches:
        for event in batch:
            for q in queues:
                q.put_nowait(event)
        for q in queues:
            await q.join()
    elapsed = time.perf_counter() - started
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return elapsed, sum(seen)


async def bus(batches: list[list[Event]], consumers: int) -> tuple[float, int]:
    return await _bus(batches, consumers, inline=False)


async def bus_inline(batches: list[list[Event]], consumers: int) -> tuple[float, int]:
    return await _bus(batches, consumers, inline=True)


async def _bus(batches: list[list[Event]], consumers: int, inline: bool) -> tuple[float, int]:
    seen = [0] * consumers
    b = EventBus()

    def handler(i: int) -> Callable[[Event], None]:
        def on(event: Event) -> None:
            seen[i] += 1
        return on

    for i in range(consumers):
        on = handler(i)
        b.subscribe(f"c{i}", {Fill: on, Bar: on, BarsClosed: on})
    await b.start()
    started = time.perf_counter()
    for batch in batches:
        if inline:
            await b.publish_settled(batch)
            continue
        for event in batch:
            b.publish(event)
        await b.settle()
    elapsed = time.perf_counter() - started
    await b.stop()
    return elapsed, sum(seen)


def _loop_run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def measure(shape: str) -> dict[str, float]:
    batches = _batches(shape)
    expected = sum(len(b) for b in batches) * CONSUMERS
    sides: list[tuple[str, Callable[..., Coroutine[Any, Any, tuple[float, int]]]]] = [
        ("raw", raw_queue), ("bus", bus)]
    if shape == "lockstep":
        sides.append(("inline", bus_inline))
    best = {name: float("inf") for name, _ in sides}
    for _ in range(REPEATS):
        # alternate, so a burst of load on the machine hits every side alike
        for name, fn in sides:
            elapsed, delivered = _loop_run(fn(batches, CONSUMERS))
            if delivered != expected:
                raise AssertionError(f"{name} {shape}: delivered {delivered} of {expected}")
            best[name] = min(best[name], elapsed)
    raw_rate, bus_rate = expected / best["raw"], expected / best["bus"]
    out = {"raw": raw_rate, "bus": bus_rate, "ratio": bus_rate / raw_rate,
           "stamps_per_s": len(batches) / best["bus"]}
    if "inline" in best:
        out["inline"] = expected / best["inline"]
        out["inline_stamps_per_s"] = len(batches) / best["inline"]
    return out


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for shape in ("burst", "lockstep"):
        m = measure(shape)
        label = f"{shape}, {CONSUMERS} consumers"
        rows.append({"metric": f"raw asyncio.Queue deliveries/s ({label})", "value": m["raw"],
                     "unit": "/s"})
        rows.append({"metric": f"bus deliveries/s ({label})", "value": m["bus"], "unit": "/s"})
        rows.append({"metric": f"bus / raw ({shape})", "value": m["ratio"], "unit": "x",
                     "goal": f">= {GOAL_RATIO}", "ok": m["ratio"] >= GOAL_RATIO})
        if shape == "lockstep":
            rows.append({"metric": f"bus timestamps/s ({SYMBOLS} bars + BarsClosed, settle)",
                         "value": m["stamps_per_s"], "unit": "/s"})
            rows.append({"metric": f"bus deliveries/s (lockstep inline, {CONSUMERS} consumers)",
                         "value": m["inline"], "unit": "/s"})
            rows.append({"metric": "bus inline / raw (lockstep)", "value": m["inline"] / m["raw"],
                         "unit": "x", "goal": f">= {GOAL_RATIO}",
                         "ok": m["inline"] / m["raw"] >= GOAL_RATIO})
            rows.append({"metric": "bus timestamps/s (publish_settled, inline)",
                         "value": m["inline_stamps_per_s"], "unit": "/s"})
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row['metric']:<60} {row['value']:>14,.2f} {row['unit']}")
