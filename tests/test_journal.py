"""The journal: durability settings, write-ahead rows, fills with their order in one
transaction, opening balances written once, and migration of an older file."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.events import Fill, OrderIntent, OrderType, Side
from daemon.journal import Journal, OrderUpdate

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)


def intent(cid: str, qty: float = 2.0, symbol: str = "BTC/USDT") -> OrderIntent:
    return OrderIntent(cid, symbol, Side.BUY, qty, OrderType.MARKET, 100.0, T0,
                       decision_id="000001", reason="band")


def fill(tid: str, cid: str = "a", qty: float = 1.0, side: Side = Side.BUY,
         price: float = 100.0, symbol: str = "BTC/USDT") -> Fill:
    return Fill(cid, "P1", tid, symbol, side, qty, price, 0.1, T0 + timedelta(hours=1))


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.sqlite")


def test_wal_with_synchronous_full(journal: Journal) -> None:
    assert journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_an_intent_is_written_once_and_survives_reopening(tmp_path: Path,
                                                          journal: Journal) -> None:
    assert journal.record_intent(intent("a"), "PENDING_NEW", NOW)
    assert not journal.record_intent(intent("a", qty=99.0), "PENDING_NEW", NOW)
    journal.close()
    again = Journal(tmp_path / "journal.sqlite")
    row = again.order("a")
    assert (row.state, row.quantity, row.decided_at, row.reason) == ("PENDING_NEW", 2.0, T0,
                                                                    "band")
    assert [k for _, k, _ in again.order_events("a")] == ["PENDING_NEW"]


def test_a_fill_and_its_order_quantity_commit_together(journal: Journal) -> None:
    journal.record_intent(intent("a"), "PENDING_NEW", NOW)
    update = OrderUpdate(state="PARTIALLY_FILLED", filled=1.0, average_price=100.0,
                         venue_order_id="P1")
    assert journal.record_fill(fill("t1"), update, at=NOW)
    assert not journal.record_fill(fill("t1"), update, at=NOW)  # the same trade again
    row = journal.order("a")
    assert (row.state, row.filled, row.venue_order_id) == ("PARTIALLY_FILLED", 1.0, "P1")
    assert len(journal.fills()) == 1
    assert journal.order_events("a")[-1][2] == {"trade_id": "t1", "quantity": 1.0,
                                                "price": 100.0, "source": "stream"}


def test_a_failed_order_update_rolls_the_fill_back(journal: Journal) -> None:
    journal.record_intent(intent("a"), "PENDING_NEW", NOW)
    journal._db.execute("CREATE TRIGGER boom BEFORE UPDATE ON orders BEGIN"
                        " SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        journal.record_fill(fill("t1"), OrderUpdate("FILLED", 2.0, 100.0), at=NOW)
    assert journal.fills() == []  # never a fill without its order's quantity


def test_a_late_fill_keeps_the_state(journal: Journal) -> None:
    journal.record_intent(intent("a"), "PENDING_NEW", NOW)
    journal.record_state("a", "CANCELLED", NOW, reason="venue canceled")
    journal.record_fill(fill("t1"), OrderUpdate(None, 1.0, 100.0), at=NOW, source="query")
    row = journal.order("a")
    assert (row.state, row.filled) == ("CANCELLED", 1.0)
    assert journal.order_events("a")[-1][1] == "FILL"
    assert journal.counts()["fills_found_by_query"] == 1


def test_state_events_carry_their_reason(journal: Journal) -> None:
    journal.record_intent(intent("a"), "PENDING_NEW", NOW)
    journal.record_state("a", "REJECTED", NOW, reason="VENUE_REJECTED insufficient funds")
    assert journal.order_events("a")[-1][1:] == (
        "REJECTED", {"reason": "VENUE_REJECTED insufficient funds"})
    assert journal.order("a").reason == "VENUE_REJECTED insufficient funds"


def test_opening_balances_are_written_once(journal: Journal) -> None:
    assert journal.opening_balances() is None
    journal.set_opening_balances({"USDT": 1000.0, "BTC": 0.5})
    journal.set_opening_balances({"USDT": 5.0})
    assert journal.opening_balances() == {"USDT": 1000.0, "BTC": 0.5}


def test_fill_totals_and_watermark(journal: Journal) -> None:
    journal.record_fill(fill("t1", qty=2.0, price=100.0), at=NOW)
    journal.record_fill(fill("t2", qty=0.5, price=120.0, side=Side.SELL), at=NOW)
    journal.record_fill(fill("t3", qty=10.0, price=10.0, symbol="ETH/USDT"), at=NOW)
    cash, quantities = journal.fill_totals()
    assert quantities == pytest.approx({"BTC/USDT": 1.5, "ETH/USDT": 10.0})
    assert cash == pytest.approx(-200.0 + 60.0 - 100.0 - 3 * 0.1)
    assert journal.last_fill_at() == T0 + timedelta(hours=1)


def test_working_orders_are_the_non_terminal_ones(journal: Journal) -> None:
    for cid, state in (("a", "FILLED"), ("b", "UNKNOWN"), ("c", "PENDING_CANCEL"),
                       ("d", "EXPIRED"), ("e", "PARTIALLY_FILLED")):
        journal.record_intent(intent(cid), "PENDING_NEW", NOW)
        journal.record_state(cid, state, NOW)
    assert [o.client_order_id for o in journal.working_orders()] == ["b", "c", "e"]


def test_a_journal_from_before_the_new_columns_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE orders (client_order_id TEXT PRIMARY KEY, decision_id TEXT NOT NULL,
          symbol TEXT NOT NULL, side TEXT NOT NULL, order_type TEXT NOT NULL,
          quantity REAL NOT NULL, limit_price REAL, reference_price REAL NOT NULL,
          state TEXT NOT NULL, venue_order_id TEXT, filled REAL NOT NULL DEFAULT 0,
          average_price REAL, reason TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL,
          updated_at TEXT NOT NULL);
        CREATE TABLE fills (trade_id TEXT PRIMARY KEY, client_order_id TEXT NOT NULL,
          venue_order_id TEXT NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL,
          quantity REAL NOT NULL, price REAL NOT NULL, fee REAL NOT NULL, at TEXT NOT NULL);
        INSERT INTO orders VALUES ('old', '000001', 'BTC/USDT', 'buy', 'market', 1.0, NULL,
          100.0, 'ACCEPTED', 'P1', 0, NULL, '', '2024-01-01T00:00:00+00:00',
          '2024-01-01T00:00:00+00:00');
        INSERT INTO fills VALUES ('t0', 'old', 'P1', 'BTC/USDT', 'buy', 1.0, 100.0, 0.1,
          '2024-01-01T01:00:00+00:00');
    """)
    db.close()
    journal = Journal(path)
    row = journal.order("old")
    assert (row.state, row.decided_at) == ("ACCEPTED", None)
    assert journal.working_orders()[0].client_order_id == "old"
    assert journal.counts()["fills_found_by_query"] == 0  # old fills came from the stream
    journal.record_intent(intent("new"), "PENDING_NEW", NOW)
    assert journal.order("new").decided_at == T0


def test_recent_is_json_ready(journal: Journal) -> None:
    journal.record_intent(intent("a"), "PENDING_NEW", NOW)
    journal.record_fill(fill("t1"), at=NOW)
    journal.record_reconciliation("startup", NOW, True, {"ok": True})
    out = json.loads(json.dumps(journal.recent(5)))
    assert out["orders"][0]["client_order_id"] == "a"
    assert out["orders"][0]["side"] == "buy"
    assert out["fills"][0]["trade_id"] == "t1"
    assert out["last_reconciliation"]["kind"] == "startup"
