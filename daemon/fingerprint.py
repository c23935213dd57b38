"""A replay's fingerprint: every handler call on the bus, in order, hashed.

Two runs with equal fingerprints called the same handlers of the same subscribers with the same
events in the same order, so they made the same decisions: every `OrderIntent` (quantities,
prices, reason), approval, `RiskRejected` (code and context), `Fill` (quantity, price, fee),
`TargetWeights` and trading-state change is in it, field by field (`repr` of the frozen
event, less wall-clock times), and bars and `BarsClosed` by symbol, time and close. It shows
that a faster path (the bus's inline lockstep, a shortcut in a handler) changed speed only.

Attach after every subscriber is on the bus: it wraps the handlers in place, as the bench's
breakdown does.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from daemon.bus import EventBus
from daemon.events import Bar, BarsClosed, Fill, OrderIntent, TargetWeights


class Fingerprint:
    def __init__(self, keep: bool = False) -> None:
        self._sha = hashlib.sha256()
        # the lines themselves, to find where two runs part (`first_difference`)
        self.lines: list[str] | None = [] if keep else None
        self.deliveries = 0
        self.by_type: Counter[str] = Counter()  # events delivered, by type (to any subscriber)

    def attach(self, bus: EventBus) -> None:
        for sub in bus.subscribers:
            for etype, fn in list(sub.handlers.items()):
                sub.handlers[etype] = self._traced(sub.name, fn)

    def _traced(self, name: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        update, lines = self._sha.update, self.lines

        def traced(event: Any) -> Any:
            line = f"{name}|{_key(event)}"
            update(line.encode() + b"\n")
            if lines is not None:
                lines.append(line)
            self.deliveries += 1
            self.by_type[type(event).__name__] += 1
            return fn(event)  # an async handler's coroutine is returned, awaited by the bus

        return traced

    def add(self, label: str, value: object) -> None:
        """Fold a result into the fingerprint (end NAV, counters), by its repr."""
        self._sha.update(f"{label}={value!r}\n".encode())

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


# events whose `ts` is a bar's time; the others' is the wall clock of the component that
# stamped them, different in every run
_MARKET_TIME = (Bar, BarsClosed, OrderIntent, Fill, TargetWeights)


def _key(event: Any) -> str:
    kind = type(event)
    if kind is Bar:  # the bulk of the calls: the fields that tell bars apart
        return f"Bar {event.symbol} {event.ts.isoformat()} {event.close!r}"
    if kind is BarsClosed:
        return f"BarsClosed {event.ts.isoformat()} {event.count}"
    if kind is TargetWeights:  # all but the solve's wall-clock time
        stats = {k: v for k, v in event.stats.items() if k != "solve_seconds"}
        return repr(replace(event, stats=stats))
    if kind not in _MARKET_TIME and hasattr(event, "ts"):
        return repr(replace(event, ts=None))  # stamped by a wall clock (approvals, refusals)
    return repr(event)


def first_difference(a: Fingerprint, b: Fingerprint, context: int = 3) -> str | None:
    """Where two kept traces part, with a few calls before it; None when equal."""
    la, lb = a.lines or [], b.lines or []
    for i, (x, y) in enumerate(zip(la, lb, strict=False)):
        if x != y:
            lo = max(i - context, 0)
            return "\n".join([f"call {i}:", *(f"  = {line}" for line in la[lo:i]),
                              f"  a {x}", f"  b {y}"])
    if len(la) != len(lb):
        return f"one trace ends at call {min(len(la), len(lb))}"
    return None
