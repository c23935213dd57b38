from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from adapters.csv_bars import BarDataError, BarFileMissing
from adapters.replay import ReplayConfig, ReplayFeed
from daemon.events import Bar
from daemon.settings import ConfigError, load


def day(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


async def replay(feed: ReplayFeed) -> list[list[Bar]]:
    return [bars async for bars in feed.bars()]


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("timestamp,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    return path


async def test_daily_replay_merges_symbols_in_time_order(shared_data: Path) -> None:
    data = shared_data / "binance-spot" / "1d"
    feed = ReplayFeed(ReplayConfig(data_dir=str(data),
                                   symbols=["ETH/USDT", "BTC/USDT", "SOL/USDT"]))
    rows = await replay(feed)
    assert feed.interval_s == 86_400
    stamps = [bars[0].ts for bars in rows]
    assert stamps == sorted(set(stamps))
    assert all(len({b.ts for b in bars}) == 1 for bars in rows)
    # Within a timestamp, bars come in the configured symbol order.
    assert [b.symbol for b in rows[-1]] == ["ETH/USDT", "BTC/USDT", "SOL/USDT"]

    first = rows[0]
    assert [b.symbol for b in first] == ["ETH/USDT", "BTC/USDT"]  # SOL is not listed yet
    btc = first[1]
    # The first data line of BTC-USDT.csv, value for value.
    assert btc == Bar("BTC/USDT", day("2017-08-17"), 4261.48, 4485.39, 4200.74, 4285.08,
                      795.150377, 86_400)

    sol_first = next(bars for bars in rows if any(b.symbol == "SOL/USDT" for b in bars))
    assert sol_first[0].ts == day("2020-08-11")
    assert len(sol_first) == 3

    report = feed.report
    assert report.bars_per_symbol == {"ETH/USDT": 1881, "BTC/USDT": 1881, "SOL/USDT": 791}
    assert sum(len(bars) for bars in rows) == report.total_bars
    assert report.timestamps == len(rows)
    assert report.symbols["SOL/USDT"].first == day("2020-08-11")
    assert report.symbols["BTC/USDT"].last == day("2022-10-10")
    assert report.gaps_per_symbol == {"ETH/USDT": 0, "BTC/USDT": 0, "SOL/USDT": 0}
    assert report.dropped_by_reason == {}


async def test_values_match_the_csv_row_by_row(shared_data: Path) -> None:
    data = shared_data / "binance-spot" / "1d"
    rows = await replay(ReplayFeed(ReplayConfig(data_dir=str(data), symbols=["ETH/USDT"])))
    expected = pd.read_csv(data / "ETH-USDT.csv")
    got = [(b.ts.strftime("%Y-%m-%dT%H:%M:%SZ"), b.open, b.high, b.low, b.close, b.volume)
           for (b,) in rows]
    assert got == list(expected.itertuples(index=False, name=None))


async def test_start_is_inclusive_and_end_exclusive(shared_data: Path) -> None:
    cfg = ReplayConfig(data_dir=str(shared_data / "binance-spot" / "1d"),
                       symbols=["BTC/USDT", "SOL/USDT"], start="2020-08-09", end="2020-08-14")
    feed = ReplayFeed(cfg)
    rows = await replay(feed)
    assert [bars[0].ts for bars in rows] == [day(f"2020-08-{d:02d}") for d in range(9, 14)]
    assert [len(bars) for bars in rows] == [1, 1, 2, 2, 2]  # SOL lists on the 11th
    assert feed.report.bars_per_symbol == {"BTC/USDT": 5, "SOL/USDT": 3}


async def test_all_files_when_no_symbols_given(shared_data: Path) -> None:
    cfg = ReplayConfig(data_dir=str(shared_data / "binance-spot" / "1d"), start="2022-10-10")
    feed = ReplayFeed(cfg)
    (bars,) = await replay(feed)
    assert len(feed.symbols) == 33 and len(bars) == 33
    assert [b.symbol for b in bars] == sorted(feed.symbols)
    assert all("/" in s for s in feed.symbols)


async def test_hourly_gaps_are_counted_and_replayed_as_partial_lists(shared_data: Path) -> None:
    data = shared_data / "binance-spot" / "1h"
    feed = ReplayFeed(ReplayConfig(data_dir=str(data), symbols=["BTC/USDT", "BNB/USDT"]))
    report = feed.report
    assert feed.interval_s == 3600
    # Independent count: runs of missing hours between consecutive rows of the raw file.
    for symbol, stem in (("BTC/USDT", "BTC-USDT"), ("BNB/USDT", "BNB-USDT")):
        step = pd.to_datetime(pd.read_csv(data / f"{stem}.csv")["timestamp"]).diff()
        hours = step.dt.total_seconds().dropna() / 3600
        assert report.symbols[symbol].gaps == int((hours > 1).sum()) > 10
        assert report.symbols[symbol].missing_bars == int((hours[hours > 1] - 1).sum())
    rows = await replay(feed)
    assert sum(map(len, rows)) == report.total_bars
    stamps = [bars[0].ts for bars in rows]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    # BNB lists months after BTC, and the two do not share every maintenance window.
    assert sum(len(bars) == 1 for bars in rows) > 1000


async def test_malformed_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    write_csv(tmp_path / "BAD-USDT.csv", [
        "2024-01-01T00:00:00Z,10,11,9,10.5,100",
        "2024-01-01T01:00:00Z,abc,11,9,10.5,100",
        "2024-01-01T02:00:00Z,10,11,9,10.5,100,extra",
        "not-a-date,10,11,9,10.5,100",
        "2024-01-01T03:00:00Z,NaN,11,9,10.5,100",
        "2024-01-01T04:00:00Z,,11,9,10.5,100",
        "2024-01-01T05:00:00Z,0,11,9,10.5,100",
        "2024-01-01T06:00:00Z,-1,11,9,10.5,100",
        "2024-01-01T07:00:00Z,10,8,9,8.5,100",
        "2024-01-01T08:00:00Z,10,11,9,12,100",
        "2024-01-01T09:00:00Z,10,11,9,10.5,-5",
        "2024-01-01T10:00:00Z,10,11,9,10.5,0",
        "2024-01-01T10:00:00Z,10,11,9,10.5,1",
        "2024-01-01T09:30:00Z,10,11,9,10.5,1",
        "2024-01-01T11:00:00Z,10,11,9,10.5,inf",
        "2024-01-01T14:00:00Z,10,11,9,10.5,1",
    ])
    feed = ReplayFeed(ReplayConfig(data_dir=str(tmp_path), interval_s=3600))
    report = feed.report.symbols["BAD/USDT"]
    assert report.dropped == {
        "non_numeric": 1, "wrong_field_count": 1, "bad_timestamp": 1, "not_finite": 3,
        "non_positive_price": 2, "high_below_low": 1, "open_close_outside_range": 1,
        "negative_volume": 1, "duplicate_timestamp": 1, "out_of_order": 1}
    rows = await replay(feed)
    # Zero volume is a real hour without trades, not a bad row.
    assert [(b.ts.hour, b.volume) for (b,) in rows] == [(0, 100.0), (10, 0.0), (14, 1.0)]
    assert (report.gaps, report.missing_bars) == (2, 12)


async def test_clean_file_uses_the_fast_path_and_infers_the_interval(tmp_path: Path) -> None:
    write_csv(tmp_path / "A-B.csv", [f"2024-01-01T00:{m:02d}:00Z,1,2,0.5,1.5,3"
                                     for m in range(0, 60, 5)])
    feed = ReplayFeed(ReplayConfig(data_dir=str(tmp_path)))
    assert feed.interval_s == 300
    assert feed.report.dropped_by_reason == {}
    assert len(await replay(feed)) == 12


def test_missing_file_names_it(shared_data: Path) -> None:
    data = shared_data / "binance-spot" / "1d"
    with pytest.raises(BarFileMissing, match=r"NOPE/USDT: .*NOPE-USDT\.csv does not exist"):
        ReplayFeed(ReplayConfig(data_dir=str(data), symbols=["BTC/USDT", "NOPE/USDT"]))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ReplayFeed(ReplayConfig(data_dir=str(data / "nowhere")))


def test_unusable_files_raise_with_the_path(tmp_path: Path) -> None:
    (tmp_path / "X-Y.csv").write_text("time,price\n1,2\n")
    with pytest.raises(BarDataError, match=r"X-Y\.csv: missing column\(s\) timestamp, open"):
        ReplayFeed(ReplayConfig(data_dir=str(tmp_path)))
    (tmp_path / "X-Y.csv").write_text("")
    with pytest.raises(BarDataError, match=r"X-Y\.csv: unreadable"):
        ReplayFeed(ReplayConfig(data_dir=str(tmp_path)))
    (tmp_path / "X-Y.csv").unlink()
    with pytest.raises(BarFileMissing, match=r"no \.csv files"):
        ReplayFeed(ReplayConfig(data_dir=str(tmp_path)))


async def test_speed_sleeps_in_proportion_to_the_time_between_bars(tmp_path: Path) -> None:
    write_csv(tmp_path / "A-B.csv", [
        "2024-01-01T00:00:00Z,1,2,0.5,1.5,3",
        "2024-01-01T01:00:00Z,1,2,0.5,1.5,3",
        "2024-01-01T04:00:00Z,1,2,0.5,1.5,3",  # three hours later, across a gap
    ])
    now = [0.0]
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    feed = ReplayFeed(ReplayConfig(data_dir=str(tmp_path), speed=3600.0),
                      clock=lambda: now[0], sleep=sleep)
    assert len(await replay(feed)) == 3
    assert sleeps == pytest.approx([1.0, 3.0])


def test_config_loads_from_toml_table_and_checks_the_window() -> None:
    cfg = load(ReplayConfig, {"data_dir": "d", "symbols": ["BTC/USDT"], "start": "2021-01-01",
                              "end": "2021-02-01T00:00:00Z"}, "market.replay")
    assert cfg.speed == 0.0 and cfg.interval_s is None
    with pytest.raises(ConfigError, match="is required"):
        load(ReplayConfig, {})
    with pytest.raises(ConfigError, match="later than start"):
        load(ReplayConfig, {"data_dir": "d", "start": "2021-02-01", "end": "2021-02-01"})
    with pytest.raises(ConfigError, match="ISO 8601"):
        load(ReplayConfig, {"data_dir": "d", "end": "02/01/2021"})


def test_fast_bar_factory_builds_the_same_frozen_bar() -> None:
    import dataclasses

    from adapters.replay import _make_bar

    ts = day("2024-01-02")
    fast = _make_bar("BTC/USDT", ts, 1.0, 2.0, 0.5, 1.5, 10.0, 3600)
    plain = Bar("BTC/USDT", ts, 1.0, 2.0, 0.5, 1.5, 10.0, 3600)
    assert type(fast) is Bar
    assert fast == plain and hash(fast) == hash(plain)
    assert dataclasses.astuple(fast) == dataclasses.astuple(plain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.close = 2.0  # type: ignore[misc]
