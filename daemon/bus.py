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

Lockstep (`publish_settled`): an unpaced replay publishes one timestamp, then waits for the bus
to settle, 45,000 times. When the bus is quiet on entry, the caller's own task runs the handlers
instead of waking the workers, and runs them exactly as the event loop would have run the
workers: a FIFO of subscribers in the order their workers would have been woken, each draining
its whole inbox, events published meanwhile appended as `publish` always does. A worker waits
its turn on the loop's ready queue in the same order, so this is the same sequence of handler
calls, without a task switch, an `asyncio.Event` and a settle round per subscriber. Where the
loop would interleave something the caller cannot run itself (a handler's awaitable, a
`track`ed task's first step), the queued subscribers' workers are woken in that same order and
the loop takes over from there (`_release`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
    # lockstep: queued in the bus's ready list or being run inline (`publish_settled`); stands
    # for a set `wakeup`: a publish need not wake the worker
    _queued: bool = False
    # lockstep: the timestamp's events, delivered before the inbox (`publish_settled`)
    _batch: Sequence[Event] = ()
    # the worker waits for `wakeup` (not merely idle: a worker not started yet would run
    # before those woken by a publish, in the order the tasks were created)
    _parked: bool = False

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


def _take(sub: Subscriber) -> Any:
    """Pop the next event of `sub`'s inbox, unwrapping a coalescable bar."""
    item = sub.inbox.popleft()
    if type(item) is _Slot:
        event = item.bar
        if sub.pending_bars.get(event.symbol) is item:
            del sub.pending_bars[event.symbol]
        return event
    return item


def _requeue(sub: Subscriber, events: Sequence[Event]) -> None:
    """Put the events of a batch that `sub` takes in front of its inbox (lockstep hand-over:
    they were published before anything queued there)."""
    taken = [e for e in events if sub.handler_for(type(e)) is not None]
    sub.inbox.extendleft(reversed(taken))
    sub.stats.high_water = max(sub.stats.high_water, len(sub.inbox))


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
        # `publish_settled` runs handlers in the caller's task when the bus is quiet; False
        # restores publish-then-settle (the equivalence test compares the two)
        self.inline_lockstep = True
        self._ready: deque[Subscriber] | None = None  # lockstep: subscribers due, in wake order
        self._playing: Subscriber | None = None  # lockstep: the subscriber run inline now
        self._orders: dict[tuple[type, ...], list[Subscriber]] = {}  # `_wake_order`'s cache
        self.inline_timestamps = 0  # `publish_settled` calls that ran inline

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
        self._orders.clear()
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
        ready, playing = self._ready, self._playing
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
            if ready is None:
                if sub is not playing:  # a running worker needs no wake-up either
                    sub.wakeup.set()
            elif not sub._queued:  # lockstep: what wakeup.set() would schedule, in order
                sub._queued = True
                ready.append(sub)

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
                sub._parked = True
                await sub.wakeup.wait()
                sub._parked = False
                continue
            event = _take(sub)
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
        if self._ready is not None:
            # lockstep: the task's first step is due after the workers already woken
            self._release()
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

    # -- lockstep -------------------------------------------------------------------------
    async def publish_settled(self, events: Sequence[Event]) -> None:
        """Publish `events`, then wait until the bus has settled: the same as `publish` each
        and `settle()`, and the same handler calls in the same order (module doc), run in the
        caller's task while nothing else is pending on the bus."""
        if not (self.inline_lockstep and self._quiet()):
            for event in events:
                self.publish(event)
            await self.settle()
            return
        ready: deque[Subscriber] = deque()
        self._ready = ready
        self.inline_timestamps += 1
        self.published += len(events)
        # every inbox is empty: instead of queueing `events` in each, each subscriber is handed
        # the batch and skips what it does not handle; what is published meanwhile queues
        # behind it, as it would behind the batch in the inbox (so the batch never counts
        # towards an inbox's high-water mark)
        for sub in self._wake_order(events):
            sub._batch = events
            sub._queued = True
            sub.idle.clear()
            ready.append(sub)
        try:
            while ready and self._ready is not None:
                await self._play(ready.popleft())
        finally:
            self._release()  # after a hand-over, nothing is left here; after an error, the rest
        await self.settle()

    def _quiet(self) -> bool:
        """Every worker parked on its wake-up with an empty inbox, no tracked work left, not
        inline already."""
        if not self._running or self._ready is not None or self._playing is not None:
            return False
        for s in self._subscribers:
            if not s._parked or not s.idle.is_set():
                return False
        return all(t.done() for t in self._background)

    def _wake_order(self, events: Sequence[Event]) -> list[Subscriber]:
        """The subscribers `events` wake, in the order their workers would be woken."""
        key = tuple(map(type, events))
        order = self._orders.get(key)
        if order is None:
            if len(self._orders) >= 64:  # a replay has a few shapes (bars per timestamp)
                self._orders.clear()
            order = list(dict.fromkeys(sub for t in key for sub in self._targets(t)))
            self._orders[key] = order
        return order

    async def _play(self, sub: Subscriber) -> None:
        """Deliver `sub`'s batch, then drain its inbox, in the caller's task, as its worker
        would when woken."""
        inbox, stats, handlers = sub.inbox, sub.stats, sub.handlers
        self._playing = sub
        batch, sub._batch = sub._batch, ()
        n, pos = len(batch), 0
        drained = False
        try:
            while True:
                if pos < n:
                    event = batch[pos]
                    pos += 1
                    handler = handlers.get(type(event)) or sub.handler_for(type(event))
                    if handler is None:
                        continue  # an event of the batch this subscriber does not take
                elif inbox:
                    event = _take(sub)
                    handler = handlers.get(type(event)) or sub.handler_for(type(event))
                else:
                    break
                try:
                    result = handler(event)  # type: ignore[misc]
                    if result is not None and inspect.isawaitable(result):
                        # the worker would await here and the loop run the workers due after
                        # it: wake them, in order, and await as the worker would
                        self._release()
                        await result
                    stats.delivered += 1
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    stats.errors += 1
                    _report_failure(sub, handler, event, exc)
            sub._over = False
            sub.idle.set()
            drained = True
        finally:
            sub._queued = False
            self._playing = None
            if not drained:  # cancelled: its worker takes over what is left
                _requeue(sub, batch[pos:])
                sub.wakeup.set()

    def _release(self) -> None:
        """Leave inline mode: wake the workers of the subscribers still due, in the order the
        loop would have woken them, their batch put in front of their inbox; from here on
        `publish` wakes workers itself."""
        ready, self._ready = self._ready, None
        if ready:
            for sub in ready:
                sub._queued = False
                if sub._batch:
                    _requeue(sub, sub._batch)
                    sub._batch = ()
                sub.wakeup.set()

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
