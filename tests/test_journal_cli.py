"""`tradingd journal`: recent orders and fills as a table or JSON; clear errors otherwise."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.events import Fill, OrderIntent, OrderType, Side
from daemon.journal import Journal, OrderUpdate

T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('[daemon]\nstate_dir = "state"\n')
    return path


def populate(state: Path) -> None:
    journal = Journal(state / "journal.sqlite")
    for i, side in enumerate((Side.BUY, Side.SELL)):
        cid = f"td-000001-BTCUSDT-{side.value[0]}{i}"
        journal.record_intent(OrderIntent(cid, "BTC/USDT", side, 0.5, OrderType.MARKET, 100.0,
                                          T0, decision_id="000001", reason="initial"),
                              "PENDING_NEW", T0)
        journal.record_fill(Fill(cid, f"P{i}", f"paper-{i}", "BTC/USDT", side, 0.5, 101.0,
                                 0.05, T0), OrderUpdate("FILLED", 0.5, 101.0, f"P{i}"), at=T0)
    journal.record_state("td-000001-BTCUSDT-s1", "FILLED", T0, reason="venue status closed")
    journal.record_reconciliation("startup", T0, True, {"ok": True})
    journal.close()


def test_table(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    populate(config.parent / "state")
    assert main(["journal", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "orders (latest 2)" in out and "fills (latest 2)" in out
    assert "td-000001-BTCUSDT-b0" in out and "paper-1" in out
    assert "FILLED" in out
    assert "last reconciliation  2024-01-01 00:00:00 startup: ok" in out


def test_json_with_limit(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    populate(config.parent / "state")
    assert main(["journal", "--config", str(config), "--json", "--limit", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["orders"]) == 1 and len(out["fills"]) == 1
    order = out["orders"][0]
    assert order["state"] == "FILLED" and order["side"] in ("buy", "sell")
    assert order["decided_at"] == "2024-01-01T00:00:00+00:00"
    assert out["fills"][0]["price"] == 101.0
    assert out["last_reconciliation"]["ok"] is True


def test_missing_journal_is_one_line_and_exit_1(config: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["journal", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tradingd: no journal at ") and err.count("\n") == 1


def test_bad_limit_names_the_option(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["journal", "--config", str(config), "--limit", "0"]) == 2
    assert capsys.readouterr().err == "tradingd: config error: --limit = 0: must be >= 1\n"
