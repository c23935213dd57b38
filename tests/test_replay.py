"""`tradingd replay`: history through the daemon's own pipeline, the report, determinism,
isolation from the live state, and data with gaps, late listings and bad rows."""

from __future__ import annotations

import io
import json
import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from daemon.cli import main
from daemon.config import Config, parse_config
from daemon.events import Side
from daemon.journal import Journal
from daemon.replay import Progress, ReplayRequest, ReplayResult, run_replay
from daemon.report import CHARTS, write_report
from daemon.settings import ConfigError

CONFIG = """
[daemon]
state_dir = "{live}"
log_level = "warning"
[market]
symbols = {symbols}
[rebalance]
band = 0.03
[allocation]
lookback_bars = {lookback}
min_history_bars = 20
max_weight = 0.6
"""

DAILY = ["BTC/USDT", "ETH/USDT", "BNB/USDT", "SOL/USDT"]


def config(tmp_path: Path, symbols: list[str], lookback: int = 30) -> Config:
    text = CONFIG.format(live=tmp_path / "live-state", symbols=json.dumps(symbols),
                         lookback=lookback)
    path = tmp_path / "config.toml"
    path.write_text(text)
    return parse_config(text, str(path))


async def replay(cfg: Config, data: Path, out: Path, **kw: object) -> ReplayResult:
    return await run_replay(cfg, ReplayRequest(data_dir=data, out_dir=out, **kw))  # type: ignore[arg-type]


def independent_nav(journal_path: Path, cash: float, last: dict[str, float]) -> float:
    journal = Journal(journal_path)
    positions: dict[str, float] = {}
    for f in journal.fills():
        signed = f.quantity if f.side is Side.BUY else -f.quantity
        positions[f.symbol] = positions.get(f.symbol, 0.0) + signed
        cash -= signed * f.price + f.fee
    journal.close()
    return cash + sum(q * last[s] for s, q in positions.items())


async def test_daily_replay_trades_and_writes_a_self_contained_report(
        tmp_path: Path, shared_data: Path) -> None:
    cfg = config(tmp_path, DAILY)
    out = tmp_path / "out"
    result = await replay(cfg, shared_data / "binance-spot" / "1d", out,
                          start="2020-01-01", end="2021-01-01")
    rec, summary = result.recording, result.summary
    assert len(rec) == 366 and summary.bars_per_symbol == 366
    assert result.bars == 3 * 366 + (366 - 223)  # SOL lists on 2020-08-11, day 223
    assert summary.rebalances >= 1 and summary.fills >= 1
    assert summary.handler_errors == 0
    # the recorder's own books agree with the daemon's portfolio and with the journal
    assert rec.nav[-1] == pytest.approx(summary.end_nav, rel=1e-9)
    last = {s: float(rec.closes[~np.isnan(rec.closes[:, i]), i][-1])
            for i, s in enumerate(rec.symbols)}
    journal = out / "state" / "journal.sqlite"
    assert independent_nav(journal, cfg.venue.paper.initial_cash, last) == pytest.approx(
        summary.end_nav, abs=0.01)
    assert float(rec.fees.sum()) == pytest.approx(summary.fees, rel=1e-9)
    # a symbol listed late has no weight before its first bar
    sol = rec.symbols.index("SOL/USDT")
    first_sol = int(np.flatnonzero(~np.isnan(rec.closes[:, sol]))[0])
    assert first_sol == 223 and not rec.weights[:first_sol, sol].any()

    paths = write_report(result, out)
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["window"]["timestamps"] == 366
    assert metrics["window"]["periods_per_year"] == 365
    assert metrics["data"]["SOL/USDT"]["late_start"] is True
    assert metrics["data"]["BTC/USDT"]["late_start"] is False
    s = metrics["strategy"]
    assert s["end_value"] == pytest.approx(summary.end_nav, rel=1e-9)
    assert s["rebalances"] == summary.rebalances
    assert 0.0 <= s["max_drawdown"] < 1.0
    for key in ("annualised_return", "annualised_volatility", "sharpe", "sortino", "calmar",
                "turnover", "fees"):
        assert isinstance(s[key], float), key
    assert metrics["var"]["observations"] > 0  # 366 daily returns, 250-day window
    assert "equity curve" in metrics["var"]["method"] or "VaR model" in metrics["var"]["method"]
    # the risk gate's kill switch moving is part of the story (March 2020 trips the defaults)
    changes = s["trading_state_changes"]
    refused_by_state = any(code.startswith("STATE_") for code in s["risk_rejections_by_code"])
    assert bool(changes) or not refused_by_state
    for change in changes:
        assert "2020-01-01" <= change["at"] < "2021-01-01"
        assert change["state"] in ("ACTIVE", "REDUCING", "HALTED")
    # one file that opens offline: every chart embedded, nothing fetched
    page = paths["html"].read_text()
    for change in changes:
        assert f"<b>{change['state']}</b> ({change['reason']}" in page
    assert page.count('src="data:image/png;base64,') == len(CHARTS)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    for name in CHARTS:
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_same_data_and_config_give_byte_identical_metrics(
        tmp_path: Path, shared_data: Path) -> None:
    cfg = config(tmp_path, DAILY)
    data = shared_data / "binance-spot" / "1d"
    blobs = []
    for run in ("a", "b"):
        result = await replay(cfg, data, tmp_path / run, start="2020-03-01", end="2020-12-01",
                              seed=7)
        paths = write_report(result, tmp_path / run)
        blobs.append((paths["metrics"].read_bytes(), paths["equity"].read_bytes()))
    assert blobs[0][0] == blobs[1][0]
    assert blobs[0][1] == blobs[1][1]  # the charts too
    # a replay into the same folder again replaces its own state and gives the same bytes
    result = await replay(cfg, data, tmp_path / "a", start="2020-03-01", end="2020-12-01",
                          seed=7)
    assert write_report(result, tmp_path / "a")["metrics"].read_bytes() == blobs[0][0]


def write_hourly(path: Path, start: datetime, n: int, price: float, seed: int,
                 skip: range = range(0), bad_rows: int = 0) -> None:
    rng = np.random.default_rng(seed)
    closes = price * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    lines = ["timestamp,open,high,low,close,volume"]
    prev = price
    for i in range(n):
        if i in skip:
            prev = closes[i]
            continue
        c = closes[i]
        t = (start + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines.append(f"{t},{prev:.6f},{max(prev, c) * 1.001:.6f},{min(prev, c) * 0.999:.6f},"
                     f"{c:.6f},{rng.uniform(1e6, 2e6):.4f}")
        prev = c
    lines += ["not-a-time,1,1,1,1,1"] * bad_rows
    path.write_text("\n".join(lines) + "\n")


async def test_gaps_late_listing_and_bad_rows_are_reported_not_fatal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    t0 = datetime(2023, 1, 1, tzinfo=UTC)
    write_hourly(data / "AAA-USDT.csv", t0, 400, 100.0, 1, skip=range(150, 156), bad_rows=2)
    write_hourly(data / "BBB-USDT.csv", t0, 400, 20.0, 2)
    # listed 100 hours after the others
    write_hourly(data / "CCC-USDT.csv", t0 + timedelta(hours=100), 300, 5.0, 3)
    cfg = config(tmp_path, ["AAA/USDT", "BBB/USDT", "CCC/USDT"], lookback=48)
    out = tmp_path / "out"
    result = await replay(cfg, data, out)
    assert len(result.recording) == 400
    assert result.summary.handler_errors == 0
    assert result.summary.fills >= 1
    metrics = json.loads(write_report(result, out)["metrics"].read_text())
    a, c = metrics["data"]["AAA/USDT"], metrics["data"]["CCC/USDT"]
    assert (a["gaps"], a["missing_bars"], a["dropped_rows"]) == (1, 6, {"bad_timestamp": 2})
    assert c["late_start"] is True and c["first"] == "2023-01-05T04:00:00Z"
    assert metrics["window"]["periods_per_year"] == 8760
    # in the gap AAA keeps its last close as the mark: NAV never jumps to a missing price
    nav = result.recording.nav
    assert np.isfinite(nav).all() and (nav > 0).all()


async def test_replay_never_touches_the_live_state(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    t0 = datetime(2023, 1, 1, tzinfo=UTC)
    write_hourly(data / "AAA-USDT.csv", t0, 120, 100.0, 1)
    write_hourly(data / "BBB-USDT.csv", t0, 120, 20.0, 2)
    cfg = config(tmp_path, ["AAA/USDT", "BBB/USDT"])
    out = tmp_path / "out"
    result = await replay(cfg, data, out)
    assert not (tmp_path / "live-state").exists()
    assert result.summary.journal_path == str((out / "state" / "journal.sqlite").resolve())
    # a state folder the replay did not create is never deleted
    other = tmp_path / "other"
    (other / "state").mkdir(parents=True)
    (other / "state" / "journal.sqlite").write_text("precious")
    with pytest.raises(ConfigError, match="not written by a replay"):
        await replay(cfg, data, other)
    assert (other / "state" / "journal.sqlite").read_text() == "precious"
    with pytest.raises(ConfigError, match="no bars"):
        await replay(cfg, data, tmp_path / "empty", start="2030-01-01")


def test_progress_bar_redraws_one_line() -> None:
    stream = io.StringIO()
    bar = Progress(300, stream, every_s=0.0, width=10)
    t = datetime(2024, 1, 1, tzinfo=UTC)
    for _ in range(300):
        bar.tick(t)
    bar.close()
    text = stream.getvalue()
    assert text.count("\r") == 3  # at 128, 256 and the last: never once per timestamp
    assert "100.0% 300/300" in text and text.endswith("\n")
    assert "\n" not in text[:-1]


def test_cli_replay_writes_the_report_and_exit_codes(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    t0 = datetime(2023, 1, 1, tzinfo=UTC)
    write_hourly(data / "AAA-USDT.csv", t0, 150, 100.0, 1)
    write_hourly(data / "BBB-USDT.csv", t0, 150, 20.0, 2)
    config(tmp_path, ["AAA/USDT", "BBB/USDT"])
    out = tmp_path / "report"
    code = main(["replay", "--config", str(tmp_path / "config.toml"), "--data", str(data),
                 "--report", str(out), "--start", "2023-01-02"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "bars/s" in printed.out and str(out / "report.html") in printed.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["window"]["first_bar"] == "2023-01-02T00:00:00Z"
    assert metrics["window"]["timestamps"] == 150 - 24
    assert math.isfinite(metrics["strategy"]["end_value"])
    # 150 bars cannot fill the daemon's 250-bar VaR window: the equity-curve fallback, named
    assert "equity curve" in metrics["var"]["method"]
    assert (out / "replay.log").exists()
    # a symbol without a file is a usage error naming the file: exit 2, one line
    code = main(["replay", "--config", str(tmp_path / "config.toml"), "--data", str(data),
                 "--report", str(out), "--symbols", "AAA/USDT,ZZZ/USDT"])
    err = capsys.readouterr().err
    assert code == 2 and "ZZZ-USDT.csv" in err and err.count("\n") == 1
