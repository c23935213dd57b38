"""Strategy files: the return streams and positions that strategies publish for the daemon.

Layout (one folder per strategy; the folder name is the strategy's name):

    <strategies.dir>/
        trend/
            returns.csv       date,return            one row per UTC day, no gaps
            positions.json    {"as_of": ..., "positions": {...}}
        meanrev/
            ...

`returns.csv`: header `date,return`; `date` is an ISO day `YYYY-MM-DD` (UTC), strictly
consecutive (a flat day is a row with 0.0, never a missing row); `return` is that day's simple
return of the strategy's own equity at 1x, a finite number above -1 and at most
`max_abs_daily_return` in size. No date may lie after today (UTC).

`positions.json`: exactly two keys,

    {"as_of": "2024-05-01T00:00:00Z",
     "positions": {"BTC/USDT": 0.5, "ETH/USDT": 0.25}}

`as_of` is an ISO 8601 time with a UTC offset (`Z` or `+00:00`), not more than five minutes in
the future; `positions` maps a market of `market.symbols` to the strategy's position in it as a
signed fraction of the strategy's own capital (0.5 = half its capital long that coin). A market
left out is flat. On a spot account (`allocation.constraints.allow_short = false`) a negative
position is refused; the sum of |position| may not exceed `max_gross_position`.

Publishers must replace a file atomically: write `positions.json.tmp` in the same folder,
flush and fsync it, then `os.replace` it onto `positions.json` (a rename). Only the two exact
file names are read, and folders whose name starts with `.` are ignored, so temporary files
never count.

Bad data never reaches the allocation: a file that fails to read or parse is logged once
(`strategy_file_rejected`, naming the file, the field and the value) and the strategy keeps the
last good copy of that file. A missing folder, file or directory also keeps the last good data:
a strategy that stops publishing is caught by the positions' staleness limit, not by deletion.

Parsing (`parse_returns`, `parse_positions`) is pure; `StrategyFiles` does the I/O: it polls
file signatures (mtime, size and inode, so an atomic rename is seen even within one mtime tick)
and re-reads only what changed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import structlog

log = structlog.get_logger("strategy_files")

RETURNS_FILE = "returns.csv"
POSITIONS_FILE = "positions.json"
STRATEGY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# a publisher's clock may run a little ahead of ours; more than this is a wrong date, and a
# file dated in the future would never go stale
FUTURE_TOLERANCE = timedelta(minutes=5)

Signature = tuple[int, int, int]  # st_mtime_ns, st_size, st_ino


class StrategyFileError(ValueError):
    """A strategy file is unusable: `str()` names the file, the field, the value and the rule."""

    def __init__(self, path: str, field_name: str, value: Any, problem: str) -> None:
        self.path, self.field, self.value, self.problem = path, field_name, value, problem
        super().__init__(f"{path}: {field_name} = {_show(value)}: {problem}")


@dataclass(frozen=True)
class PositionsFile:
    as_of: datetime
    positions: dict[str, float]


@dataclass(frozen=True)
class ParseLimits:
    """What a valid file may say; the daemon builds this from its configuration."""

    symbols: frozenset[str]
    allow_short: bool = False
    max_gross_position: float = 1.0
    max_abs_daily_return: float = 1.0


# -- pure parsing ---------------------------------------------------------------------------
def parse_returns(text: str, path: str, today: date, limits: ParseLimits) -> pd.Series:
    """Daily returns indexed by day (tz-naive midnight timestamps, meaning UTC days)."""
    lines = text.lstrip("\ufeff").splitlines()
    rows = [(n, row) for n, row in enumerate(csv.reader(lines), start=1)
            if any(cell.strip() for cell in row)]
    if not rows:
        raise StrategyFileError(path, "file", "", "empty: expected a header `date,return`")
    n, header = rows[0]
    if [c.strip().lower() for c in header] != ["date", "return"]:
        raise StrategyFileError(path, f"line {n} header", ",".join(header),
                                "must be exactly `date,return`")
    if len(rows) == 1:
        raise StrategyFileError(path, "file", "", "no data rows after the header")
    days: list[date] = []
    values: list[float] = []
    for n, row in rows[1:]:
        if len(row) != 2:
            raise StrategyFileError(path, f"line {n}", ",".join(row),
                                    "must have two fields: date,return")
        raw_day, raw_ret = row[0].strip(), row[1].strip()
        day = _parse_day(raw_day, path, n)
        if day > today:
            raise StrategyFileError(path, f"line {n} date", raw_day,
                                    f"is after today ({today.isoformat()} UTC)")
        if days:
            prev = days[-1]
            if day <= prev:
                raise StrategyFileError(path, f"line {n} date", raw_day,
                                        f"must come after the previous row ({prev.isoformat()})")
            if day != prev + timedelta(days=1):
                missing = (day - prev).days - 1
                raise StrategyFileError(path, f"line {n} date", raw_day,
                                        f"{missing} day(s) missing after {prev.isoformat()}; "
                                        "a flat day is a row with 0.0")
        values.append(_parse_return(raw_ret, path, n, limits.max_abs_daily_return))
        days.append(day)
    return pd.Series(values, index=pd.DatetimeIndex(pd.to_datetime(days), name="date"),
                     name="return", dtype=float)


def parse_positions(text: str, path: str, now: datetime, limits: ParseLimits) -> PositionsFile:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StrategyFileError(path, f"line {exc.lineno} column {exc.colno}",
                                exc.doc[max(exc.pos - 10, 0):exc.pos + 10],
                                f"not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise StrategyFileError(path, "file", data,
                                'must be a JSON object {"as_of": ..., "positions": {...}}')
    for key in data:
        if key not in ("as_of", "positions"):
            raise StrategyFileError(path, str(key), data[key],
                                    "unknown key; allowed: as_of, positions")
    for key in ("as_of", "positions"):
        if key not in data:
            raise StrategyFileError(path, key, None, "is required")
    as_of = _parse_as_of(data["as_of"], path, now)
    raw = data["positions"]
    if not isinstance(raw, dict):
        raise StrategyFileError(path, "positions", raw,
                                'must be an object {"BTC/USDT": 0.5, ...}')
    positions: dict[str, float] = {}
    for symbol, value in raw.items():
        key = f"positions.{symbol}"
        if symbol not in limits.symbols:
            raise StrategyFileError(path, key, value, "unknown symbol; markets: "
                                    + ", ".join(sorted(limits.symbols)))
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise StrategyFileError(path, key, value, "must be a number")
        x = float(value)
        if not math.isfinite(x):
            raise StrategyFileError(path, key, value, "must be a finite number")
        if x < 0 and not limits.allow_short:
            raise StrategyFileError(path, key, value,
                                    "short position on a spot account: positions must be >= 0 "
                                    "unless allocation.constraints.allow_short = true")
        positions[symbol] = x
    gross = sum(abs(x) for x in positions.values())
    if gross > limits.max_gross_position + 1e-9:
        raise StrategyFileError(path, "positions", round(gross, 6),
                                f"sum of |position| exceeds strategies.max_gross_position "
                                f"({limits.max_gross_position:g}) of the strategy's capital")
    return PositionsFile(as_of=as_of, positions=positions)


def _parse_day(raw: str, path: str, n: int) -> date:
    if not _ISO_DAY.match(raw):
        raise StrategyFileError(path, f"line {n} date", raw, "must be an ISO day YYYY-MM-DD")
    try:
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise StrategyFileError(path, f"line {n} date", raw, str(exc)) from None


def _parse_return(raw: str, path: str, n: int, max_abs: float) -> float:
    key = f"line {n} return"
    try:
        x = float(raw)
    except ValueError:
        raise StrategyFileError(path, key, raw, "must be a number") from None
    if not math.isfinite(x):
        raise StrategyFileError(path, key, raw, "must be a finite number")
    if x <= -1.0:
        raise StrategyFileError(path, key, raw, "a 1x strategy cannot lose 100% or more in a day")
    if abs(x) > max_abs:
        raise StrategyFileError(path, key, raw, f"|return| above strategies.max_abs_daily_return "
                                f"({max_abs:g}); returns are fractions (0.01 = 1%)")
    return x


def _parse_as_of(raw: Any, path: str, now: datetime) -> datetime:
    if not isinstance(raw, str):
        raise StrategyFileError(path, "as_of", raw, "must be an ISO 8601 string")
    try:
        ts = datetime.fromisoformat(raw)
    except ValueError:
        raise StrategyFileError(path, "as_of", raw,
                                "not an ISO 8601 time, e.g. 2024-05-01T00:00:00Z") from None
    if ts.tzinfo is None:
        raise StrategyFileError(path, "as_of", raw,
                                "needs a UTC offset, e.g. 2024-05-01T00:00:00Z")
    ts = ts.astimezone(UTC)
    if ts > now + FUTURE_TOLERANCE:
        raise StrategyFileError(path, "as_of", raw,
                                f"is in the future (now {now.isoformat(timespec='seconds')})")
    return ts


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- I/O: the polled directory --------------------------------------------------------------
@dataclass
class StrategyData:
    """The last good copy of each file of one strategy (None: never a good one)."""

    name: str
    returns: pd.Series | None = None
    positions: PositionsFile | None = None
    returns_loaded: datetime | None = None
    positions_loaded: datetime | None = None


@dataclass(frozen=True)
class PollResult:
    returns_changed: tuple[str, ...] = ()
    positions_changed: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.returns_changed or self.positions_changed)


@dataclass
class StrategyFiles:
    """Watches `root` by polling; `poll()` re-reads what changed and keeps the last good data."""

    root: Path
    limits: ParseLimits
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    strategies: dict[str, StrategyData] = field(default_factory=dict)
    _seen: dict[Path, Signature | None] = field(default_factory=dict)
    _problems: dict[str, str] = field(default_factory=dict)  # what is logged: once per problem

    def poll(self) -> PollResult:
        now = self.clock()
        if not self.root.is_dir():
            self._problem("dir", f"strategies directory {self.root} does not exist or is not a "
                          "directory; keeping the last good data of every strategy")
            return PollResult()
        self._resolved("dir")
        returns_changed: list[str] = []
        positions_changed: list[str] = []
        for folder in self._folders():
            name = folder.name
            data = self.strategies.get(name)
            if data is None:
                data = self.strategies[name] = StrategyData(name)
                log.info("strategy_found", strategy=name, folder=str(folder))
            if self._load(folder / RETURNS_FILE, data, now):
                returns_changed.append(name)
            if self._load(folder / POSITIONS_FILE, data, now):
                positions_changed.append(name)
        for name in self.strategies:
            if not (self.root / name).is_dir():
                self._problem(f"{name}/", f"strategy folder {self.root / name} is gone; keeping "
                              "its last good data until a restart (staleness still applies)")
            else:
                self._resolved(f"{name}/")
        return PollResult(tuple(returns_changed), tuple(positions_changed))

    def _folders(self) -> list[Path]:
        out = []
        try:
            entries = sorted(self.root.iterdir())
        except OSError as exc:
            self._problem("dir", f"cannot list {self.root}: {exc.strerror}")
            return []
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue  # publishers' temporary folders and stray files
            if not STRATEGY_NAME.match(entry.name):
                self._problem(f"{entry.name}/", f"strategy folder {entry} ignored: names are "
                              "letters, digits, '_', '.', '-' (at most 64)")
                continue
            out.append(entry)
        return out

    def _load(self, path: Path, data: StrategyData, now: datetime) -> bool:
        """Re-read `path` if its signature changed; True when new good data was taken."""
        key = str(path)
        try:
            st = path.stat()
            sig: Signature | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            sig = None
        except OSError as exc:
            self._problem(key, f"{path}: cannot stat: {exc.strerror}; keeping the last good data")
            return False
        if sig == self._seen.get(path, ()):  # () never equals a signature: first poll reads
            return False
        if sig is None:
            self._seen[path] = None
            kept = "keeping the last good copy" if _last(data, path) else "strategy unusable"
            self._problem(key, f"{path}: file missing; {kept}")
            return False
        try:
            text = path.read_text(encoding="utf-8")
            after = path.stat()
        except (OSError, UnicodeDecodeError) as exc:
            self._reject(data, path, StrategyFileError(key, "file", "", f"cannot be read: {exc}"))
            self._seen[path] = sig
            return False
        if (after.st_mtime_ns, after.st_size, after.st_ino) != sig:
            return False  # written while we read it: read it again on the next poll
        self._seen[path] = sig
        try:
            if path.name == RETURNS_FILE:
                parsed_returns = parse_returns(text, key, now.date(), self.limits)
            else:
                parsed_positions = parse_positions(text, key, now, self.limits)
        except StrategyFileError as exc:
            self._reject(data, path, exc)
            return False
        self._resolved(key)
        if path.name == RETURNS_FILE:
            same = data.returns is not None and data.returns.equals(parsed_returns)
            data.returns, data.returns_loaded = parsed_returns, now
            log.info("strategy_file_loaded", file=key, strategy=data.name,
                     rows=len(parsed_returns), first=str(parsed_returns.index[0].date()),
                     last=str(parsed_returns.index[-1].date()), unchanged=same)
        else:
            same = data.positions == parsed_positions
            data.positions, data.positions_loaded = parsed_positions, now
            log.info("strategy_file_loaded", file=key, strategy=data.name,
                     as_of=parsed_positions.as_of.isoformat(),
                     positions=parsed_positions.positions, unchanged=same)
        return not same

    def _reject(self, data: StrategyData, path: Path, exc: StrategyFileError) -> None:
        last = _last(data, path)
        kept = f"last good copy loaded {last.isoformat(timespec='seconds')}" if last else \
            "none: the strategy has no usable copy of this file"
        # the signature changed, so this is a new bad version: always worth one log line
        self._problems.pop(str(path), None)
        self._problem(str(path), str(exc), field_name=exc.field, value=_show(exc.value),
                      problem=exc.problem, strategy=data.name, kept=kept,
                      event_name="strategy_file_rejected")

    def _problem(self, key: str, message: str, event_name: str = "strategy_files_problem",
                 **facts: Any) -> None:
        if self._problems.get(key) == message:
            return  # logged already; the next change of state is logged again
        self._problems[key] = message
        log.error(event_name, error=message, **facts)

    def _resolved(self, key: str) -> None:
        if self._problems.pop(key, None) is not None:
            log.info("strategy_files_recovered", what=key)


def _last(data: StrategyData, path: Path) -> datetime | None:
    return data.returns_loaded if path.name == RETURNS_FILE else data.positions_loaded


def write_atomically(path: Path, text: str) -> None:
    """How a publisher should write a strategy file (used by the tests and usable as is):
    a temporary file in the same folder, fsynced, then renamed over the target."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
