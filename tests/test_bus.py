"""The event bus: isolation of failing and slow subscribers, and its overflow policy."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from daemon.bus import EventBus
from daemon.events import Bar, Fill, OrderCancelled, Side

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def bar(symbol: str, i: int, close: float = 100.0) -> Bar:
    return Bar(symbol, T0 + timedelta(hours=i), close, close, close, close + i, 1.0)


def fill(i: int) -> Fill:
    return Fill(f"c{i}", f"v{i}", f"t{i}", "BTC/USDT", Side.BUY, 1.0, 100.0, 0.1, T0)


async def test_failing_handler_is_counted_and_bus_keeps_running() -> None:
    bus = EventBus()
    seen: list[int] = []

    def explode(event: Bar) -> None:
        if event.close == 102.0:
            raise RuntimeError("boom")
        seen.append(int(event.close))

    bus.subscribe("fragile", {Bar: explode})
    await bus.start()
    for i in range(5):
        bus.publish(bar("BTC/USDT", i, 100.0))
    await bus.settle()
    assert seen == [100, 101, 103, 104]
    assert bus.errors() == 1
    assert bus.subscribers[0].stats.delivered == 4
    await bus.stop()


async def test_slow_subscriber_does_not_delay_others() -> None:
    bus = EventBus()
    release = asyncio.Event()
    fast_seen: list[Bar] = []

    async def slow(event: Bar) -> None:
        await release.wait()

    bus.subscribe("slow", {Bar: slow})
    bus.subscribe("fast", {Bar: fast_seen.append})
    await bus.start()
    for i in range(50):
        bus.publish(bar("BTC/USDT", i))
    # the fast subscriber gets every bar while the slow one is still stuck on its first
    for _ in range(100):
        if len(fast_seen) == 50:
            break
        await asyncio.sleep(0)
    assert len(fast_seen) == 50
    assert bus.subscribers[0].stats.delivered == 0
    release.set()
    await bus.settle()
    await bus.stop()


async def test_bars_coalesce_per_symbol_but_fills_are_never_dropped() -> None:
    bus = EventBus()
    release = asyncio.Event()
    got: list[object] = []

    async def slow(event: object) -> None:
        await release.wait()
        got.append(event)

    bus.subscribe("slow", {Bar: slow, Fill: slow, OrderCancelled: slow}, capacity=4)
    await bus.start()
    await asyncio.sleep(0)
    for i in range(100):
        bus.publish(bar("BTC/USDT", i))
        bus.publish(bar("ETH/USDT", i))
        if i % 10 == 0:
            bus.publish(fill(i))
    stats = bus.subscribers[0].stats
    release.set()
    await bus.settle()
    fills = [e for e in got if isinstance(e, Fill)]
    bars = [e for e in got if isinstance(e, Bar)]
    assert [f.trade_id for f in fills] == [f"t{i}" for i in range(0, 100, 10)]
    # the newest bar of each symbol always arrives; the backlog stayed bounded
    assert bars[-1].close == 199.0 or bars[-2].close == 199.0
    assert {b.symbol for b in bars if b.close == 199.0} == {"BTC/USDT", "ETH/USDT"}
    assert stats.coalesced > 150
    assert len(bars) < 20
    assert stats.overflowed > 0  # fills went past capacity rather than being dropped
    await bus.stop()


async def test_subscriber_sees_events_in_publish_order_across_types() -> None:
    bus = EventBus()
    got: list[str] = []
    bus.subscribe("portfolio", {Bar: lambda e: got.append(f"bar{int(e.close)}"),
                                Fill: lambda e: got.append(e.trade_id)})
    await bus.start()
    bus.publish(bar("BTC/USDT", 0))
    bus.publish(fill(1))
    bus.publish(bar("BTC/USDT", 1))
    await bus.settle()
    assert got == ["bar100", "t1", "bar101"]
    await bus.stop()


async def test_settle_waits_for_tracked_background_work() -> None:
    bus = EventBus()
    got: list[Fill] = []
    bus.subscribe("sink", {Fill: got.append})
    await bus.start()

    async def later() -> None:
        await asyncio.sleep(0.05)
        bus.publish(fill(7))

    bus.track(later(), name="later")
    await bus.settle()
    assert [f.trade_id for f in got] == ["t7"]
    await bus.stop()
