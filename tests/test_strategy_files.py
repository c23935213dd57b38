"""Strategy files: what a valid returns.csv / positions.json is, how each kind of bad file is
reported (file, field, value), and the polling watcher: atomic renames are seen, bad versions are
logged and the last good copy is kept."""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from adapters.strategy_files import (
    POSITIONS_FILE,
    RETURNS_FILE,
    ParseLimits,
    StrategyFileError,
    StrategyFiles,
    parse_positions,
    parse_returns,
    write_atomically,
)

SYMBOLS = frozenset({"BTC/USDT", "ETH/USDT"})
LIMITS = ParseLimits(symbols=SYMBOLS)
NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
TODAY = NOW.date()


def csv_text(values: list[float], last: date = TODAY) -> str:
    start = last - timedelta(days=len(values) - 1)
    rows = [f"{(start + timedelta(days=i)).isoformat()},{v}" for i, v in enumerate(values)]
    return "date,return\n" + "\n".join(rows) + "\n"


def pos_text(positions: dict[str, object], as_of: str = "2024-05-10T00:00:00Z") -> str:
    return json.dumps({"as_of": as_of, "positions": positions})


# -- returns.csv ----------------------------------------------------------------------------
def test_returns_parse_to_a_daily_series() -> None:
    s = parse_returns("\ufeffdate,return\n2024-05-08,0.01\n2024-05-09,-0.02\n\n2024-05-10,0\n",
                      "r.csv", TODAY, LIMITS)
    assert list(s) == [0.01, -0.02, 0.0]
    assert [d.date() for d in s.index] == [date(2024, 5, 8), date(2024, 5, 9), date(2024, 5, 10)]


@pytest.mark.parametrize(("text", "field", "value", "problem"), [
    ("", "file", "", "empty"),
    ("day,ret\n2024-05-09,0.01\n", "line 1 header", "day,ret", "date,return"),
    ("date,return\n", "file", "", "no data rows"),
    ("date,return\n2024-05-09\n", "line 2", "2024-05-09", "two fields"),
    ("date,return\n09/05/2024,0.01\n", "line 2 date", "09/05/2024", "YYYY-MM-DD"),
    ("date,return\n2024-02-30,0.01\n", "line 2 date", "2024-02-30", "day is out of range"),
    ("date,return\n2024-05-09,abc\n", "line 2 return", "abc", "must be a number"),
    ("date,return\n2024-05-09,NaN\n", "line 2 return", "NaN", "finite"),
    ("date,return\n2024-05-09,inf\n", "line 2 return", "inf", "finite"),
    ("date,return\n2024-05-09,-1.0\n", "line 2 return", "-1.0", "100%"),
    ("date,return\n2024-05-09,12.5\n", "line 2 return", "12.5", "max_abs_daily_return"),
    ("date,return\n2024-05-08,0.01\n2024-05-08,0.01\n", "line 3 date", "2024-05-08",
     "after the previous row"),
    ("date,return\n2024-05-06,0.01\n2024-05-09,0.01\n", "line 3 date", "2024-05-09",
     "2 day(s) missing"),
    ("date,return\n2024-05-11,0.01\n", "line 2 date", "2024-05-11", "after today"),
])
def test_bad_returns_name_file_field_and_value(text: str, field: str, value: str,
                                               problem: str) -> None:
    with pytest.raises(StrategyFileError) as exc:
        parse_returns(text, "strategies/trend/returns.csv", TODAY, LIMITS)
    e = exc.value
    assert (e.path, e.field, e.value) == ("strategies/trend/returns.csv", field, value)
    assert problem in e.problem
    assert str(e).startswith(f"strategies/trend/returns.csv: {field} = {value!r}: ")


# -- positions.json -------------------------------------------------------------------------
def test_positions_parse() -> None:
    p = parse_positions(pos_text({"BTC/USDT": 0.5, "ETH/USDT": 0}, "2024-05-10T02:00:00+02:00"),
                        "p.json", NOW, LIMITS)
    assert p.positions == {"BTC/USDT": 0.5, "ETH/USDT": 0.0}
    assert p.as_of == datetime(2024, 5, 10, 0, 0, tzinfo=UTC)
    assert parse_positions(pos_text({}), "p.json", NOW, LIMITS).positions == {}  # flat


@pytest.mark.parametrize(("text", "field", "problem"), [
    ('{"as_of": "2024-05-10T00:00:00Z", "positions": {"BTC/USDT": 0.5,}}', "line 1 column",
     "not valid JSON"),
    ("[1, 2]", "file", "must be a JSON object"),
    ('{"positions": {}}', "as_of", "is required"),
    ('{"as_of": "2024-05-10T00:00:00Z"}', "positions", "is required"),
    (pos_text({}) [:-1] + ', "note": 1}', "note", "unknown key"),
    (pos_text({}, as_of="yesterday"), "as_of", "not an ISO 8601 time"),
    (pos_text({}, as_of="2024-05-10T00:00:00"), "as_of", "needs a UTC offset"),
    (json.dumps({"as_of": 1715299200, "positions": {}}), "as_of", "must be an ISO 8601 string"),
    (pos_text({}, as_of="2024-05-10T13:00:00Z"), "as_of", "in the future"),
    (json.dumps({"as_of": "2024-05-10T00:00:00Z", "positions": [0.5]}), "positions",
     "must be an object"),
    (pos_text({"DOGE/USDT": 0.1}), "positions.DOGE/USDT", "unknown symbol"),
    (pos_text({"BTC/USDT": "0.5"}), "positions.BTC/USDT", "must be a number"),
    (pos_text({"BTC/USDT": True}), "positions.BTC/USDT", "must be a number"),
    ('{"as_of": "2024-05-10T00:00:00Z", "positions": {"BTC/USDT": NaN}}', "positions.BTC/USDT",
     "finite"),
    ('{"as_of": "2024-05-10T00:00:00Z", "positions": {"BTC/USDT": Infinity}}',
     "positions.BTC/USDT", "finite"),
    (pos_text({"BTC/USDT": 0.5, "ETH/USDT": -0.2}), "positions.ETH/USDT", "spot account"),
    (pos_text({"BTC/USDT": 0.7, "ETH/USDT": 0.5}), "positions", "max_gross_position"),
])
def test_bad_positions_name_file_field_and_value(text: str, field: str, problem: str) -> None:
    with pytest.raises(StrategyFileError) as exc:
        parse_positions(text, "strategies/trend/positions.json", NOW, LIMITS)
    e = exc.value
    assert e.path == "strategies/trend/positions.json"
    assert e.field.startswith(field)
    assert problem in e.problem
    assert "strategies/trend/positions.json" in str(e) and field in str(e)


def test_shorts_pass_only_when_allowed() -> None:
    shorts = ParseLimits(symbols=SYMBOLS, allow_short=True)
    p = parse_positions(pos_text({"BTC/USDT": 0.5, "ETH/USDT": -0.2}), "p.json", NOW, shorts)
    assert p.positions["ETH/USDT"] == -0.2


# -- the watcher ----------------------------------------------------------------------------
class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_strategy(root: Path, name: str, returns: list[float], positions: dict[str, float],
                  as_of: str = "2024-05-10T00:00:00Z") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / RETURNS_FILE, csv_text(returns))
    write_atomically(folder / POSITIONS_FILE, pos_text(positions, as_of))
    return folder


def test_watcher_sees_an_atomic_rename_even_within_one_mtime_tick(tmp_path: Path) -> None:
    folder = make_strategy(tmp_path, "trend", [0.01, 0.02], {"BTC/USDT": 0.5})
    files = StrategyFiles(tmp_path, LIMITS, clock=Clock(NOW))
    first = files.poll()
    assert first.returns_changed == ("trend",) and first.positions_changed == ("trend",)
    assert files.poll().changed is False  # nothing re-read, nothing reported

    target = folder / POSITIONS_FILE
    before = target.stat()
    write_atomically(target, pos_text({"BTC/USDT": 0.25}))
    # pin the mtime to the old one: only the rename (a new inode) shows the change
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_ino != before.st_ino
    second = files.poll()
    assert second.positions_changed == ("trend",) and second.returns_changed == ()
    positions = files.strategies["trend"].positions
    assert positions is not None and positions.positions == {"BTC/USDT": 0.25}


def test_bad_file_is_logged_once_and_the_last_good_copy_kept(tmp_path: Path) -> None:
    folder = make_strategy(tmp_path, "trend", [0.01, 0.02], {"BTC/USDT": 0.5})
    files = StrategyFiles(tmp_path, LIMITS, clock=Clock(NOW))
    files.poll()
    with capture_logs() as logs:
        write_atomically(folder / POSITIONS_FILE, pos_text({"BTC/USDT": float("nan")}))
        write_atomically(folder / RETURNS_FILE, "date,return\n2024-05-10,oops\n")
        assert files.poll().changed is False
        assert files.poll().changed is False  # same bad files: no second log line
    rejected = [e for e in logs if e["event"] == "strategy_file_rejected"]
    assert len(rejected) == 2
    by_field = {e["field_name"]: e for e in rejected}
    assert by_field["positions.BTC/USDT"]["value"] == "nan"
    assert by_field["positions.BTC/USDT"]["error"].startswith(str(folder / POSITIONS_FILE))
    assert by_field["line 2 return"]["value"] == "'oops'"
    assert all(e["log_level"] == "error" and "last good copy" in e["kept"] for e in rejected)
    data = files.strategies["trend"]
    assert data.positions is not None and data.positions.positions == {"BTC/USDT": 0.5}
    assert data.returns is not None and list(data.returns) == [0.01, 0.02]

    with capture_logs() as logs:  # fixed: taken, and the recovery is logged
        write_atomically(folder / POSITIONS_FILE, pos_text({"BTC/USDT": 0.4}))
        assert files.poll().positions_changed == ("trend",)
    assert any(e["event"] == "strategy_files_recovered" for e in logs)


def test_missing_files_folders_and_dir_keep_the_last_good_data(tmp_path: Path) -> None:
    root = tmp_path / "strategies"
    folder = make_strategy(root, "trend", [0.01, 0.02], {"BTC/USDT": 0.5})
    (root / ".trend.tmp").mkdir()  # a publisher's temporary folder: ignored
    (root / "bad name!").mkdir()  # not a strategy name: ignored with an error
    files = StrategyFiles(root, LIMITS, clock=Clock(NOW))
    with capture_logs() as logs:
        files.poll()
    assert set(files.strategies) == {"trend"}
    assert any("bad name!" in e.get("error", "") for e in logs)

    with capture_logs() as logs:
        (folder / POSITIONS_FILE).unlink()
        assert files.poll().changed is False
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
        assert files.poll().changed is False
        root.joinpath("bad name!").rmdir()
        root.joinpath(".trend.tmp").rmdir()
        root.rmdir()
        assert files.poll().changed is False
    errors = [e["error"] for e in logs if e["log_level"] == "error"]
    assert any("file missing; keeping the last good copy" in m for m in errors)
    assert any("is gone" in m for m in errors)
    assert any("does not exist" in m for m in errors)
    data = files.strategies["trend"]
    assert data.positions is not None and data.positions.positions == {"BTC/USDT": 0.5}


def test_a_new_strategy_without_positions_is_unusable_until_they_arrive(tmp_path: Path) -> None:
    folder = tmp_path / "carry"
    folder.mkdir()
    write_atomically(folder / RETURNS_FILE, csv_text([0.0, 0.01]))
    files = StrategyFiles(tmp_path, LIMITS, clock=Clock(NOW))
    with capture_logs() as logs:
        result = files.poll()
    assert result.returns_changed == ("carry",) and files.strategies["carry"].positions is None
    assert any("strategy unusable" in e.get("error", "") for e in logs)
    write_atomically(folder / POSITIONS_FILE, pos_text({"ETH/USDT": 1.0}))
    assert files.poll().positions_changed == ("carry",)
