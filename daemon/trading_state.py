"""The trading state, the daemon's kill switch: ACTIVE, REDUCING or HALTED.

    ACTIVE    every order the risk checks pass may go
    REDUCING  only orders that move a position toward zero (working orders included) pass
    HALTED    no new orders; cancels only (the gate may cancel every working order on entry)

Automatic triggers (the risk gate's loss limits, stale data, a burst of rejections, an OMS
halt) only ever make the state stricter. Loosening it is an operator's decision (`resume`),
with one exception the config allows: a stale-data switch is undone when bars flow again,
back to the state it replaced.

The state is kept in the journal's meta table, so a daemon restarted while HALTED comes back
HALTED. A stored state that cannot be read comes back HALTED too: failing open is not an
option for a kill switch.

`NavWatch` keeps what the daily-loss and drawdown limits measure against (peak NAV, NAV at the
start of the UTC day), also in the journal, so a restart does not forget a loss.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Protocol

import structlog

from daemon.events import Event, TradingStateChanged, utcnow

log = structlog.get_logger("trading_state")

STATE_KEY = "risk.trading_state"
NAV_KEY = "risk.nav_watch"


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"

    @property
    def rank(self) -> int:
        """Strictness: automatic triggers may only raise it."""
        return _RANK[self]


_RANK = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


class MetaStore(Protocol):
    """The part of `daemon.journal.Journal` used here."""

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...


@dataclass(frozen=True)
class StateRecord:
    state: TradingState
    reason: str
    by: str  # operator | gate | oms | startup
    since: datetime
    context: dict[str, Any] | None = None
    # the record this one replaced: what undoing a stale-data switch goes back to (one level)
    previous: StateRecord | None = None

    def to_dict(self, depth: int = 1) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state.value, "reason": self.reason, "by": self.by,
                               "since": self.since.isoformat(), "context": self.context or {}}
        if depth > 0 and self.previous is not None:
            out["previous"] = self.previous.to_dict(depth - 1)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StateRecord:
        prev = data.get("previous")
        return cls(state=TradingState(data["state"]), reason=str(data["reason"]),
                   by=str(data["by"]), since=datetime.fromisoformat(data["since"]),
                   context=dict(data.get("context") or {}),
                   previous=cls.from_dict(prev) if isinstance(prev, dict) else None)


StateListener = Callable[[StateRecord, StateRecord], None]


class TradingStateMachine:
    """Holds the state, persists every change, publishes `TradingStateChanged` and tells its
    listeners (old, new). Never raises on a journal or listener failure: the state in memory
    is what the gate obeys."""

    def __init__(self, journal: MetaStore | None = None,
                 publish: Callable[[Event], None] | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.journal = journal
        self.publish = publish
        self.clock = clock
        self.listeners: list[StateListener] = []
        # run before every resume, whoever calls it (the gate re-bases breached loss limits)
        self.before_resume: list[Callable[[], None]] = []
        self.record = self._load()

    @property
    def state(self) -> TradingState:
        return self.record.state

    @property
    def reason(self) -> str:
        return self.record.reason

    @property
    def by(self) -> str:
        return self.record.by

    @property
    def since(self) -> datetime:
        return self.record.since

    # -- transitions ----------------------------------------------------------------------
    def escalate(self, state: TradingState, reason: str, by: str = "gate",
                 context: dict[str, Any] | None = None) -> bool:
        """Move to `state` if it is stricter than the current one; True if it moved."""
        if state.rank <= self.record.state.rank:
            return False
        self._set(state, reason, by, context)
        return True

    def halt(self, reason: str, by: str = "operator",
             context: dict[str, Any] | None = None) -> StateRecord:
        """HALTED, whatever the state; an operator's halt replaces an automatic one (so it is
        never undone automatically)."""
        return self._set(TradingState.HALTED, reason, by, context)

    def reduce(self, reason: str, by: str = "operator",
               context: dict[str, Any] | None = None) -> StateRecord:
        return self._set(TradingState.REDUCING, reason, by, context)

    def resume(self, by: str = "operator", reason: str = "") -> StateRecord:
        for hook in list(self.before_resume):
            try:
                hook()
            except Exception as exc:
                log.error("before_resume_failed", error=f"{type(exc).__name__}: {exc}")
        return self._set(TradingState.ACTIVE, reason or f"resumed by {by}", by, None)

    def undo(self, by: str, reason: str) -> StateRecord:
        """Go back to the record the current one replaced (ACTIVE if none is known)."""
        prev = self.record.previous
        if prev is None:
            return self._set(TradingState.ACTIVE, reason, by, None)
        return self._set(prev.state, prev.reason, prev.by, prev.context,
                         previous=prev.previous, note=reason)

    def _set(self, state: TradingState, reason: str, by: str,
             context: dict[str, Any] | None, *, previous: StateRecord | None = None,
             note: str = "") -> StateRecord:
        old = self.record
        new = StateRecord(state=state, reason=reason, by=by, since=self.clock(),
                          context=dict(context or {}),
                          previous=previous if note else _shallow(old))
        self.record = new
        self._save()
        log.warning("trading_state_changed", state=state.value, previous=old.state.value,
                    reason=reason, by=by, note=note or None, **(context or {}))
        if self.publish is not None:
            try:
                self.publish(TradingStateChanged(state=state.value, previous=old.state.value,
                                                 reason=note or reason, by=by, ts=new.since,
                                                 context=dict(context or {})))
            except Exception as exc:  # the switch itself must not depend on the bus
                log.error("trading_state_publish_failed", error=str(exc))
        for listener in list(self.listeners):
            try:
                listener(old, new)
            except Exception as exc:
                log.error("trading_state_listener_failed", error=f"{type(exc).__name__}: {exc}",
                          listener=getattr(listener, "__qualname__", repr(listener)))
        return new

    # -- persistence ----------------------------------------------------------------------
    def _load(self) -> StateRecord:
        fresh = StateRecord(TradingState.ACTIVE, "no stored state", "startup", self.clock())
        if self.journal is None:
            return fresh
        try:
            text = self.journal.get_meta(STATE_KEY)
            if text is None:
                return fresh
            record = StateRecord.from_dict(json.loads(text))
        except Exception as exc:
            log.error("trading_state_unreadable", error=f"{type(exc).__name__}: {exc}")
            return StateRecord(TradingState.HALTED, "STATE_UNREADABLE", "startup", self.clock(),
                               {"error": f"{type(exc).__name__}: {exc}"})
        if record.state is not TradingState.ACTIVE:
            log.warning("trading_state_restored", state=record.state.value,
                        reason=record.reason, by=record.by, since=record.since.isoformat())
        return record

    def _save(self) -> None:
        if self.journal is None:
            return
        try:
            self.journal.set_meta(STATE_KEY, json.dumps(self.record.to_dict(), default=str))
        except Exception as exc:
            log.error("trading_state_save_failed", error=f"{type(exc).__name__}: {exc}")


def _shallow(record: StateRecord) -> StateRecord:
    # keep one level of history: enough to undo one switch, and the record stays small
    if record.previous is None:
        return record
    return StateRecord(record.state, record.reason, record.by, record.since, record.context)


@dataclass
class NavWatch:
    """Peak NAV and the NAV the UTC day started from. `day` is the bar-time date, so a replay of
    2020 has 2020's days. The day's reference is the NAV at the last mark before midnight: with
    daily bars, a day's loss is that bar's move."""

    peak_nav: float | None = None
    day: str | None = None
    day_start_nav: float | None = None
    last_nav: float | None = None
    _saved_peak: float | None = None
    # the last date `update` was given and its isoformat: a mark per bar, a new day per 24
    _day_date: date | None = field(default=None, repr=False, compare=False)
    _day_iso: str | None = field(default=None, repr=False, compare=False)

    def update(self, nav: float, day: date | None = None) -> None:
        if not (math.isfinite(nav) and nav > 0.0):
            return
        if day is not None:
            if day != self._day_date:
                self._day_date, self._day_iso = day, day.isoformat()
            if self._day_iso != self.day:
                self.day_start_nav = self.last_nav if self.last_nav is not None else nav
                self.day = self._day_iso
        if self.day_start_nav is None:
            self.day_start_nav = nav
        if self.peak_nav is None or nav > self.peak_nav:
            self.peak_nav = nav
        self.last_nav = nav

    @property
    def daily_loss(self) -> float:
        """Loss since the day's start as a fraction of it (negative for a gain)."""
        if not self.day_start_nav or self.last_nav is None:
            return 0.0
        return 1.0 - self.last_nav / self.day_start_nav

    @property
    def drawdown(self) -> float:
        if not self.peak_nav or self.last_nav is None:
            return 0.0
        return 1.0 - self.last_nav / self.peak_nav

    # -- persistence ----------------------------------------------------------------------
    def needs_save(self) -> bool:
        # the peak is written when it has risen 0.1% since the last write, not on every bar:
        # each write is an fsync, and a restart then understates drawdown by at most 0.1%
        if self.peak_nav is None:
            return False
        return self._saved_peak is None or self.peak_nav > self._saved_peak * 1.001

    def to_json(self) -> str:
        return json.dumps({"peak_nav": self.peak_nav, "day": self.day,
                           "day_start_nav": self.day_start_nav})

    def save(self, journal: MetaStore | None) -> None:
        if journal is None:
            return
        try:
            journal.set_meta(NAV_KEY, self.to_json())
            self._saved_peak = self.peak_nav
        except Exception as exc:
            log.error("nav_watch_save_failed", error=f"{type(exc).__name__}: {exc}")

    @classmethod
    def load(cls, journal: MetaStore | None) -> NavWatch:
        if journal is None:
            return cls()
        try:
            text = journal.get_meta(NAV_KEY)
            if text is None:
                return cls()
            data = json.loads(text)
            watch = cls(peak_nav=_pos_or_none(data.get("peak_nav")), day=data.get("day"),
                        day_start_nav=_pos_or_none(data.get("day_start_nav")))
            watch._saved_peak = watch.peak_nav
            return watch
        except Exception as exc:
            # a lost peak understates drawdown; say so loudly rather than refuse to start
            log.error("nav_watch_unreadable", error=f"{type(exc).__name__}: {exc}")
            return cls()


def _pos_or_none(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) and x > 0 else None
