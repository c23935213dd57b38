"""`EventBus.publish_settled`: run inline when the bus is quiet, it makes the same handler calls
in the same order as `publish` each event and `settle()`, also when handlers publish, await,
start tracked work or fail."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.bus import EventBus
from daemon.events import Bar, BarsClosed, Event, Fill, OrderCancelled, Side

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")


def stamp(k: int) -> list[Event]:
    ts = T0 + timedelta(hours=k)
    bars: list[Event] = [Bar(s, ts, 1.0, 1.0, 1.0, 100.0 + k, 1.0) for s in SYMBOLS]
    return [*bars, BarsClosed(ts=ts, count=len(bars))]


def fill(tag: str) -> Fill:
    return Fill(tag, "v", f"t-{tag}", "BTC/USDT", Side.BUY, 1.0, 1.0, 0.0, T0)


def cancelled(tag: str) -> OrderCancelled:
    return OrderCancelled(tag, "BTC/USDT", "x", T0)


def tag(event: Event) -> str:
    if isinstance(event, Bar):
        return f"bar {event.symbol} {event.close:g}"
    if isinstance(event, BarsClosed):
        return f"closed {event.ts:%H}"
    return f"{type(event).__name__} {getattr(event, 'client_order_id', '')}"


Wiring = Callable[[EventBus, list[str]], None]


async def trace(wire: Wiring, stamps: int, inline: bool) -> tuple[list[str], EventBus]:
    """Every handler call, in order, over `stamps` lockstep timestamps."""
    bus = EventBus()
    bus.inline_lockstep = inline
    calls: list[str] = []
    wire(bus, calls)
    await bus.start()
    for k in range(stamps):
        await bus.publish_settled(stamp(k))
        calls.append(f"-- settled {k}")
    await bus.stop()
    return calls, bus


async def same_calls(wire: Wiring, stamps: int = 6) -> tuple[list[str], EventBus]:
    old, _ = await trace(wire, stamps, inline=False)
    new, bus = await trace(wire, stamps, inline=True)
    assert new == old
    return new, bus


def recorder(name: str, calls: list[str],
             then: Callable[[Event], Any] | None = None) -> Callable[[Event], Any]:
    def on(event: Event) -> Any:
        calls.append(f"{name}: {tag(event)}")
        return then(event) if then is not None else None
    return on


async def test_cascades_keep_the_workers_order() -> None:
    def wire(bus: EventBus, calls: list[str]) -> None:
        def closes(event: Event) -> None:
            if isinstance(event, BarsClosed):  # to a later, an earlier and the same subscriber
                bus.publish(fill(f"f{event.ts:%H}"))
                bus.publish(cancelled(f"c{event.ts:%H}"))

        def fills(event: Event) -> None:
            bus.publish(cancelled(f"from-{getattr(event, 'client_order_id', '')}"))

        bus.subscribe("marks", {Bar: recorder("marks", calls)})
        bus.subscribe("late", {Fill: recorder("late", calls, fills),
                               OrderCancelled: recorder("late", calls)})
        bus.subscribe("decider", {Bar: recorder("decider", calls),
                                  BarsClosed: recorder("decider", calls, closes),
                                  OrderCancelled: recorder("decider", calls)})
        bus.subscribe("all", {Event: recorder("all", calls)})

    calls, bus = await same_calls(wire)
    assert calls[:4] == ["marks: bar BTC/USDT 100", "marks: bar ETH/USDT 100",
                         "marks: bar SOL/USDT 100", "decider: bar BTC/USDT 100"]
    assert "late: Fill f00" in calls and "decider: OrderCancelled from-f00" in calls
    assert bus.inline_timestamps == 5  # not the first: the workers had not started
    assert {s.name: s.stats.delivered for s in bus.subscribers}["all"] == 6 * 7


async def test_awaiting_handlers_and_tracked_work_hand_over_in_order() -> None:
    def wire(bus: EventBus, calls: list[str]) -> None:
        async def slow(event: Event) -> None:  # suspends: the other workers run meanwhile
            calls.append(f"slow start: {tag(event)}")
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            calls.append(f"slow end: {tag(event)}")
            if isinstance(event, BarsClosed):
                bus.publish(fill(f"s{event.ts:%H}"))

        async def background(hour: str) -> None:
            calls.append(f"task start {hour}")
            await asyncio.sleep(0)
            bus.publish(cancelled(f"t{hour}"))
            calls.append(f"task end {hour}")

        def starts_work(event: Event) -> None:
            if isinstance(event, BarsClosed) and event.ts.hour % 2 == 0:
                bus.track(background(f"{event.ts:%H}"), name="work")

        bus.subscribe("first", {Bar: recorder("first", calls),
                                BarsClosed: recorder("first", calls, starts_work)})
        bus.subscribe("slow", {Bar: slow, BarsClosed: slow})
        bus.subscribe("third", {Event: recorder("third", calls)})

    calls, _ = await same_calls(wire)
    assert "task end 04" in calls and "third: Fill s05" in calls


async def test_a_coroutine_that_never_suspends_stays_inline() -> None:
    def wire(bus: EventBus, calls: list[str]) -> None:
        async def quick(event: Event) -> None:  # like OMS.on_approved: async, never suspends
            calls.append(f"quick: {tag(event)}")
            bus.publish(fill(f"q{tag(event)}"))

        bus.subscribe("quick", {BarsClosed: quick})
        bus.subscribe("sink", {Fill: recorder("sink", calls), Bar: recorder("sink", calls)})

    await same_calls(wire)


async def test_failing_handlers_are_counted_inline_too() -> None:
    def wire(bus: EventBus, calls: list[str]) -> None:
        def explode(event: Event) -> None:
            calls.append(f"boom: {tag(event)}")
            if isinstance(event, Bar) and event.symbol == "ETH/USDT":
                raise RuntimeError("boom")

        bus.subscribe("fragile", {Bar: explode, BarsClosed: explode})
        bus.subscribe("after", {Event: recorder("after", calls)})

    _, bus = await same_calls(wire, stamps=3)
    assert bus.errors() == 3
    assert bus.subscribers[0].stats.delivered == 3 * 3


async def test_pending_work_falls_back_to_publish_and_settle() -> None:
    bus = EventBus()
    calls: list[str] = []
    release = asyncio.Event()

    async def waits(event: Event) -> None:
        await release.wait()
        calls.append(f"waited: {tag(event)}")

    bus.subscribe("blocked", {Fill: waits})
    bus.subscribe("sink", {Event: recorder("sink", calls)})
    await bus.start()
    bus.publish(fill("early"))
    await asyncio.sleep(0)  # "blocked" is busy: the bus is not quiet
    asyncio.get_running_loop().call_later(0.01, release.set)
    await bus.publish_settled(stamp(0))
    assert bus.inline_timestamps == 0
    assert calls[-1] == "waited: Fill early" and len(calls) == 1 + 1 + 4
    await bus.publish_settled(stamp(1))
    assert bus.inline_timestamps == 1
    await bus.stop()


async def test_workers_not_started_yet_fall_back() -> None:
    # right after start() the workers have not run: the loop would run them in the order
    # they were created, not in the order a publish wakes them
    bus = EventBus()
    calls: list[str] = []
    bus.subscribe("closes", {BarsClosed: recorder("closes", calls)})
    bus.subscribe("bars", {Bar: recorder("bars", calls)})
    await bus.start()
    await bus.publish_settled(stamp(0))
    assert bus.inline_timestamps == 0 and calls[0] == "closes: closed 00"
    await bus.publish_settled(stamp(1))
    assert bus.inline_timestamps == 1 and calls[4] == "bars: bar BTC/USDT 101"
    await bus.stop()


async def test_cancelled_midway_the_workers_deliver_the_rest() -> None:
    bus = EventBus()
    calls: list[str] = []
    gate = asyncio.Event()

    async def stuck(event: Event) -> None:
        if isinstance(event, Bar) and event.symbol == "ETH/USDT":
            await gate.wait()
        calls.append(f"stuck: {tag(event)}")

    bus.subscribe("stuck", {Bar: stuck})
    bus.subscribe("sink", {Event: recorder("sink", calls)})
    await bus.start()
    pump = asyncio.create_task(bus.publish_settled(stamp(0)))
    await asyncio.sleep(0.01)
    pump.cancel()
    await asyncio.gather(pump, return_exceptions=True)
    gate.set()
    await bus.settle()
    assert [c for c in calls if c.startswith("stuck")] == [
        "stuck: bar BTC/USDT 100", "stuck: bar SOL/USDT 100"]  # ETH's call was cancelled
    assert len([c for c in calls if c.startswith("sink")]) == 4
    await bus.stop()


def test_wake_order_is_first_appearance_across_the_batch() -> None:
    bus = EventBus()
    bus.subscribe("a", {Fill: print})
    bus.subscribe("b", {Bar: print})
    bus.subscribe("c", {Fill: print, Bar: print})
    order = bus._wake_order([fill("x"), *stamp(0)])
    assert [s.name for s in order] == ["a", "c", "b"]

