"""The kill switch (daemon/trading_state.py): transitions, persistence, events, NavWatch."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from daemon.events import TradingStateChanged
from daemon.journal import Journal
from daemon.trading_state import (
    NAV_KEY,
    STATE_KEY,
    NavWatch,
    StateRecord,
    TradingState,
    TradingStateMachine,
)

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)


class Meta:
    def __init__(self, data: dict[str, str] | None = None, fail: bool = False) -> None:
        self.data = dict(data or {})
        self.fail = fail

    def get_meta(self, key: str) -> str | None:
        return self.data.get(key)

    def set_meta(self, key: str, value: str) -> None:
        if self.fail:
            raise OSError("disk full")
        self.data[key] = value


def machine(meta: Meta | None = None) -> tuple[TradingStateMachine, list[Any]]:
    events: list[Any] = []
    return TradingStateMachine(meta, events.append, lambda: NOW), events


def test_starts_active_and_automatic_triggers_only_escalate() -> None:
    m, events = machine()
    assert m.state is TradingState.ACTIVE
    assert m.escalate(TradingState.REDUCING, "DAILY_LOSS_LIMIT", context={"loss": 0.11})
    assert not m.escalate(TradingState.REDUCING, "OTHER")
    assert not m.escalate(TradingState.ACTIVE, "OTHER")
    assert m.escalate(TradingState.HALTED, "DRAWDOWN_LIMIT")
    assert not m.escalate(TradingState.REDUCING, "DAILY_LOSS_LIMIT")
    assert m.state is TradingState.HALTED and m.reason == "DRAWDOWN_LIMIT" and m.by == "gate"
    assert [(e.previous, e.state) for e in events] == [("ACTIVE", "REDUCING"),
                                                       ("REDUCING", "HALTED")]
    assert events[0] == TradingStateChanged(state="REDUCING", previous="ACTIVE",
                                            reason="DAILY_LOSS_LIMIT", by="gate", ts=NOW,
                                            context={"loss": 0.11})


def test_operator_commands_and_undo() -> None:
    m, _ = machine()
    m.reduce("desk review", by="alice")
    m.escalate(TradingState.HALTED, "DATA_STALE")
    assert m.record.previous is not None and m.record.previous.reason == "desk review"
    m.undo(by="gate", reason="DATA_FRESH")
    assert m.state is TradingState.REDUCING and m.reason == "desk review" and m.by == "alice"
    m.halt("maintenance")
    assert m.state is TradingState.HALTED and m.by == "operator"
    m.resume("bob")
    assert m.state is TradingState.ACTIVE and m.by == "bob" and m.reason == "resumed by bob"
    fresh, _ = machine()
    fresh.undo(by="gate", reason="x")  # nothing to go back to: ACTIVE
    assert fresh.state is TradingState.ACTIVE


def test_resume_runs_the_hooks_first_and_failures_never_block_the_switch() -> None:
    m, _ = machine(Meta(fail=True))  # the journal cannot be written
    calls: list[str] = []
    m.before_resume.append(lambda: calls.append("hook"))
    m.before_resume.append(lambda: 1 / 0)  # type: ignore[func-returns-value]
    m.listeners.append(lambda old, new: calls.append(f"{old.state}->{new.state}"))
    m.listeners.append(lambda old, new: 1 / 0)  # type: ignore[func-returns-value]
    m.halt("x")
    m.resume()
    assert m.state is TradingState.ACTIVE
    assert calls == ["ACTIVE->HALTED", "hook", "HALTED->ACTIVE"]


def test_state_is_persisted_and_restored() -> None:
    meta = Meta()
    m, _ = machine(meta)
    m.escalate(TradingState.REDUCING, "DAILY_LOSS_LIMIT", context={"loss": 0.12})
    m.escalate(TradingState.HALTED, "DATA_STALE")
    restored, events = machine(meta)
    assert restored.record == m.record
    assert restored.record.previous is not None
    assert restored.record.previous.reason == "DAILY_LOSS_LIMIT"
    assert events == []  # restoring is not a change


@pytest.mark.parametrize("stored", ["{not json", '{"state": "PAUSED", "reason": "",'
                                                 ' "by": "", "since": "2024-01-01"}', "[]"])
def test_an_unreadable_state_comes_back_halted(stored: str) -> None:
    m, _ = machine(Meta({STATE_KEY: stored}))
    assert m.state is TradingState.HALTED and m.reason == "STATE_UNREADABLE"


def test_record_round_trip_keeps_one_level_of_history() -> None:
    a = StateRecord(TradingState.ACTIVE, "a", "startup", NOW)
    b = StateRecord(TradingState.REDUCING, "b", "gate", NOW, {"x": 1}, previous=a)
    c = StateRecord(TradingState.HALTED, "c", "gate", NOW, previous=b)
    back = StateRecord.from_dict(c.to_dict())
    assert back.previous is not None and back.previous.reason == "b"
    assert back.previous.previous is None


def test_nav_watch_daily_loss_uses_the_last_mark_before_midnight() -> None:
    w = NavWatch()
    w.update(100.0, date(2024, 1, 1))
    w.update(110.0, date(2024, 1, 1))
    assert w.daily_loss == pytest.approx(-0.1) and w.peak_nav == 110.0
    w.update(99.0, date(2024, 1, 2))  # one daily bar: the day's loss is that bar's move
    assert w.day_start_nav == 110.0 and w.daily_loss == pytest.approx(0.1)
    assert w.drawdown == pytest.approx(0.1)
    w.update(float("nan"))
    w.update(-5.0)
    assert w.last_nav == 99.0


def test_nav_watch_survives_a_restart_in_the_journal(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    w = NavWatch()
    w.update(100.0, date(2024, 1, 1))
    assert w.needs_save()
    w.save(journal)
    w.update(100.05)
    assert not w.needs_save()  # under 0.1% higher: not worth an fsync
    w.update(101.0)
    assert w.needs_save()
    journal.close()
    journal = Journal(tmp_path / "j.sqlite")
    back = NavWatch.load(journal)
    assert back.peak_nav == 100.0 and back.day == "2024-01-01" and back.day_start_nav == 100.0
    journal.set_meta(NAV_KEY, "garbage")
    assert NavWatch.load(journal).peak_nav is None
    journal.close()


def test_nav_watch_compares_the_day_it_is_given_with_the_day_it_holds() -> None:
    # the date's isoformat is kept between marks; the day held is still what decides
    w = NavWatch()
    d1, d2 = date(2024, 1, 1), date(2024, 1, 2)
    w.update(100.0, d1)
    w.update(90.0, d1)
    assert (w.day, w.day_start_nav) == ("2024-01-01", 100.0)
    w.update(95.0, d2)
    assert (w.day, w.day_start_nav) == ("2024-01-02", 90.0)  # the last mark before midnight
    w.day = "2023-12-31"  # e.g. loaded from the journal: a new day at the next mark
    w.update(97.0, d2)
    assert (w.day, w.day_start_nav) == ("2024-01-02", 95.0)
    w.update(96.0, d2)
    assert w.day_start_nav == 95.0
