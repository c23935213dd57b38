"""The in-process event bus: async publish/subscribe by event type.

Each subscriber is a named consumer with its own bounded inbox and its own worker task, so a
slow subscriber delays only itself. `publish` never blocks and never awaits.

Overflow policy, when a subscriber's inbox holds `capacity` events:
- a `Bar` replaces the newest bar of the same symbol still waiting in that inbox (bars coalesce to
  the latest per symbol, so a lagging subscriber's backlog is bounded by the number of symbols);
- every other event (orders, fills, rejections) is always enqueued: they are rare, bounded by
  the risk gate's throttles, and losing one would lose track of money. Going past capacity is
  counted and logged once per episode.

A handler that raises is logged with the event and counted; the worker carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from daemon.events import Bar, Event

Handler = Callable[[Any], Awaitable[None] | None]
log = structlog.get_logger("bus")


class _Slot:
    """A queued bar that a newer bar of the same symbol may overwrite in place."""

    __slots__ = ("bar",)

    def __init__(self, bar: Bar) -> None:
        self.bar = bar


@dataclass
class SubscriberStats:
    delivered: int = 0
    coalesced: int = 0
    overflowed: int = 0
    errors: int = 0
    high_water: int = 0


@dataclass(eq=False)
class Subscriber:
    name: str
    handlers: dict[type, Handler]
    capacity: int
    stats: SubscriberStats = field(default_factory=SubscriberStats)
    inbox: deque[Any] = field(default_factory=deque)
    pending_bars: dict[str, _Slot] = field(default_factory=dict)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    _over: bool = False

    def handler_for(self, event_type: type) -> Handler | None:
        handler = self.handlers.get(event_type)
        if handler is None:
            for base in event_type.__mro__[1:]:
                if base in self.handlers:
                    handler = self.handlers[event_type] = self.handlers[base]
                    break
        return handler

    @property
    def depth(self) -> int:
        return len(self.inbox)


def _report_failure(sub: Subscriber, handler: Handler | None, event: object,
                    exc: Exception) -> None:
    # a broken log sink must not stop event delivery
    with contextlib.suppress(Exception):
        log.error("handler_failed", subscriber=sub.name,
                  handler=getattr(handler, "__qualname__", repr(handler)),
                  bus_event=repr(event), error=f"{type(exc).__name__}: {exc}", exc_info=exc)


class EventBus:
    def __init__(self, default_capacity: int = 10_000) -> None:
        self._subscribers: list[Subscriber] = []
        self._by_type: dict[type, list[Subscriber]] = {}
        self._default_capacity = default_capacity
        self._background: set[asyncio.Task[Any]] = set()
        self._running = False
        self.published = 0

    # -- wiring -------------------------------------------------------------------------
    def subscribe(self, name: str, handlers: Mapping[type, Handler],
                  capacity: int | None = None) -> Subscriber:
        """Register consumer `name`; `handlers` maps event types to plain functions (sync or
        async). One subscriber sees its events in publish order, whatever their types."""
        sub = Subscriber(name=name, handlers=dict(handlers),
                         capacity=capacity or self._default_capacity)
        sub.idle.set()
        self._subscribers.append(sub)
        self._by_type.clear()
        if self._running:
            sub.task = asyncio.create_task(self._work(sub), name=f"bus:{name}")
        return sub

    def _targets(self, event_type: type) -> list[Subscriber]:
        targets = self._by_type.get(event_type)
        if targets is None:
            targets = [s for s in self._subscribers if s.handler_for(event_type) is not None]
            self._by_type[event_type] = targets
        return targets

    # -- publishing -----------------------------------------------------------------------
    def publish(self, event: Event) -> None:
        self.published += 1
        event_type = type(event)
        targets = self._by_type.get(event_type)
        if targets is None:
            targets = self._targets(event_type)
        is_bar = event_type is Bar
        symbol: str = event.symbol if is_bar else ""  # type: ignore[attr-defined]
        for sub in targets:
            if is_bar:
                # a full inbox overwrites the waiting bar of the symbol (module doc); inline,
                # as this runs for every bar and subscriber
                waiting = sub.pending_bars.get(symbol) if len(sub.inbox) >= sub.capacity \
                    else None
                if waiting is not None:
                    waiting.bar = event  # type: ignore[assignment]
                    sub.stats.coalesced += 1
                else:
                    slot = _Slot(event)  # type: ignore[arg-type]
                    sub.pending_bars[symbol] = slot
                    sub.inbox.append(slot)
            else:
                sub.inbox.append(event)
                if len(sub.inbox) > sub.capacity:
                    sub.stats.overflowed += 1
                    if not sub._over:
                        sub._over = True
                        log.warning("bus_inbox_over_capacity", subscriber=sub.name,
                                    depth=len(sub.inbox), capacity=sub.capacity)
            depth = len(sub.inbox)
            if depth > sub.stats.high_water:
                sub.stats.high_water = depth
            sub.idle.clear()
            sub.wakeup.set()

    # -- running --------------------------------------------------------------------------
    async def start(self) -> None:
        self._running = True
        for sub in self._subscribers:
            if sub.task is None:
                sub.task = asyncio.create_task(self._work(sub), name=f"bus:{sub.name}")

    async def _work(self, sub: Subscriber) -> None:
        inbox, stats, handlers = sub.inbox, sub.stats, sub.handlers
        while True:
            if not inbox:
                sub._over = False
                sub.idle.set()
                sub.wakeup.clear()
                await sub.wakeup.wait()
                continue
            item = inbox.popleft()
            if type(item) is _Slot:
                event = item.bar
                if sub.pending_bars.get(event.symbol) is item:
                    del sub.pending_bars[event.symbol]
            else:
                event = item
            handler = handlers.get(type(event)) or sub.handler_for(type(event))
            try:
                result = handler(event)  # type: ignore[misc]
                # most handlers are plain functions returning None: the ABC check in
                # isawaitable costs more than the handler
                if result is not None and inspect.isawaitable(result):
                    await result
                stats.delivered += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                stats.errors += 1
                _report_failure(sub, handler, event, exc)

    def track(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """Run background work (a solve, a retry) that `settle` must wait for."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def settle(self) -> None:
        """Wait until every inbox is empty, no handler is running and no tracked background
        work is pending: replays use it to stay deterministic, tests to observe a quiet bus."""
        while True:
            # one busy subscriber at a time: all must go idle anyway, and awaiting the events
            # directly spares gather() a task per subscriber per settle (a replay settles
            # every timestamp); the loop below re-checks everyone before returning
            for s in self._subscribers:
                if not s.idle.is_set():
                    await s.idle.wait()
            busy = [s for s in self._subscribers if not s.idle.is_set()]
            pending = [t for t in self._background if not t.done()]
            if not busy and not pending:
                # a handler that just finished may have published to a subscriber already
                # checked: look once more after yielding
                await asyncio.sleep(0)
                if all(s.idle.is_set() for s in self._subscribers) and not any(
                        not t.done() for t in self._background):
                    return
                continue
            if pending:
                await asyncio.wait(pending)

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Deliver what is queued (bounded by `drain_timeout`), then stop the workers."""
        try:
            await asyncio.wait_for(self.settle(), drain_timeout)
        except TimeoutError:
            log.warning("bus_drain_timeout", depths={s.name: s.depth for s in self._subscribers})
        for sub in self._subscribers:
            if sub.task is not None:
                sub.task.cancel()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*(s.task for s in self._subscribers if s.task),
                             *self._background, return_exceptions=True)
        self._running = False

    # -- observing ------------------------------------------------------------------------
    @property
    def subscribers(self) -> list[Subscriber]:
        return list(self._subscribers)

    def errors(self) -> int:
        return sum(s.stats.errors for s in self._subscribers)
