"""Read and validate one OHLCV CSV file of the shared schema.

    timestamp,open,high,low,close,volume
    2017-08-17T04:00:00Z,4261.48,4313.62,4261.32,4308.83,47.181009

Bad rows are dropped and counted by reason rather than failing the file: a replay of years of
data should not stop for one corrupt line, and the counts tell the operator what was lost.
A file that cannot be used at all (absent, unreadable, wrong header) raises `BarDataError`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
PRICES = ("open", "high", "low", "close")
NUMERIC = (*PRICES, "volume")

# Drop reasons, in the order rows are tested: a row is counted under the first one it fails.
# Ragged rows (more fields than the header) are counted while parsing.
WRONG_FIELD_COUNT = "wrong_field_count"
BAD_TIMESTAMP = "bad_timestamp"
NON_NUMERIC = "non_numeric"
NOT_FINITE = "not_finite"  # empty field, NaN or infinity
NON_POSITIVE_PRICE = "non_positive_price"
NEGATIVE_VOLUME = "negative_volume"
HIGH_BELOW_LOW = "high_below_low"
OUTSIDE_RANGE = "open_close_outside_range"
DUPLICATE_TIMESTAMP = "duplicate_timestamp"
OUT_OF_ORDER = "out_of_order"


class BarDataError(Exception):
    """The file cannot be replayed at all; the message names it."""


class BarFileMissing(BarDataError, FileNotFoundError):
    """No file where the symbol's bars should be."""


@dataclass(frozen=True)
class BarArrays:
    """The valid rows of one file, oldest first, timestamps strictly increasing."""

    ts_ns: np.ndarray  # int64 nanoseconds since the epoch, UTC
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    dropped: dict[str, int]

    def __len__(self) -> int:
        return len(self.ts_ns)

    def between(self, start_ns: int | None, end_ns: int | None) -> BarArrays:
        """Rows with start <= ts < end (either bound optional)."""
        lo = 0 if start_ns is None else int(np.searchsorted(self.ts_ns, start_ns, "left"))
        hi = len(self) if end_ns is None else int(np.searchsorted(self.ts_ns, end_ns, "left"))
        s = slice(lo, hi)
        return BarArrays(self.ts_ns[s], self.open[s], self.high[s], self.low[s], self.close[s],
                         self.volume[s], self.dropped)


def read_bars_csv(path: Path) -> BarArrays:
    if not path.is_file():
        raise BarFileMissing(f"{path}: no such file")
    dropped: Counter[str] = Counter()
    frame = _read_frame(path, dropped)
    n = len(frame)
    keep = np.ones(n, dtype=bool)

    def drop(mask: np.ndarray, reason: str) -> None:
        hit = mask & keep
        if hit.any():
            dropped[reason] += int(hit.sum())
            keep[hit] = False

    ts = pd.to_datetime(frame["timestamp"], format="ISO8601", utc=True, errors="coerce")
    drop(ts.isna().to_numpy(), BAD_TIMESTAMP)
    ts_ns = ts.to_numpy(dtype="datetime64[ns]", na_value=np.datetime64("NaT")).view(np.int64)

    cols: dict[str, np.ndarray] = {}
    for name in NUMERIC:
        raw = frame[name]
        if raw.dtype == np.float64:
            values = raw.to_numpy()
        else:
            # Slow path, only for a file with text in a number column: find which rows.
            values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64,
                                                                  na_value=np.nan)
            drop((np.isnan(values) & raw.notna().to_numpy()), NON_NUMERIC)
        cols[name] = values
    finite = np.logical_and.reduce([np.isfinite(cols[c]) for c in NUMERIC])
    drop(~finite, NOT_FINITE)

    with np.errstate(invalid="ignore"):
        o, h, lo, c, v = (cols[k] for k in NUMERIC)
        drop((o <= 0) | (h <= 0) | (lo <= 0) | (c <= 0), NON_POSITIVE_PRICE)
        drop(v < 0, NEGATIVE_VOLUME)  # zero volume is real: an hour with no trades
        drop(h < lo, HIGH_BELOW_LOW)
        drop((o > h) | (o < lo) | (c > h) | (c < lo), OUTSIDE_RANGE)

    # A row must be later than every earlier valid row. Dropped rows cannot raise the running
    # maximum (they are not later), so the maximum over valid rows equals that over kept rows.
    idx = np.flatnonzero(keep)
    t = ts_ns[idx]
    prev_max = np.empty_like(t)
    if len(t):
        prev_max[0] = np.iinfo(np.int64).min
        np.maximum.accumulate(t[:-1], out=prev_max[1:])
    drop(_scatter(n, idx, t == prev_max), DUPLICATE_TIMESTAMP)
    drop(_scatter(n, idx, t < prev_max), OUT_OF_ORDER)

    return BarArrays(ts_ns[keep], o[keep], h[keep], lo[keep], c[keep], v[keep], dict(dropped))


def _scatter(n: int, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[idx] = values
    return out


def _read_frame(path: Path, dropped: Counter[str]) -> pd.DataFrame:
    try:
        header = pd.read_csv(path, nrows=0).columns.tolist()
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise BarDataError(f"{path}: unreadable: {exc}") from exc
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise BarDataError(f"{path}: missing column(s) {', '.join(missing)}; header is {header}")
    fast = {"timestamp": "string", **dict.fromkeys(NUMERIC, "float64")}
    try:
        # No usecols: with it pandas silently ignores extra fields, and a ragged row is corrupt.
        return pd.read_csv(path, dtype=fast, engine="c")[list(COLUMNS)]
    except (ValueError, pd.errors.ParserError):
        pass
    # Slow path, only for a damaged file: text in a number column or a row with too many fields.
    # Read numbers as strings (coerced and counted later) and count the ragged rows.
    def ragged(_fields: list[str]) -> None:
        dropped[WRONG_FIELD_COUNT] += 1
        return None

    try:
        frame = pd.read_csv(path, dtype="string", engine="python", on_bad_lines=ragged)
        return frame[list(COLUMNS)]
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise BarDataError(f"{path}: not a valid CSV: {exc}") from exc
