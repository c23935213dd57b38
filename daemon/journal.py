"""The order journal: SQLite, WAL mode, one file in the state directory.

An order is committed here before it is sent; every venue answer and every fill is committed as
it arrives. Fills are keyed by the venue's trade id, so a fill reported twice (REST poll and
stream) is stored once.

Durability: WAL with `synchronous=FULL`. In WAL mode NORMAL already survives a killed process,
but may lose the last commits on power loss or a kernel crash; an order we sent but forgot is
exactly the failure this journal exists to prevent, and orders are few, so each commit pays
for an fsync.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon.events import Fill, OrderIntent, OrderType, RiskRejected, Side

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    client_order_id TEXT PRIMARY KEY,
    decision_id     TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    side            TEXT NOT NULL,
    order_type      TEXT NOT NULL,
    quantity        REAL NOT NULL,
    limit_price     REAL,
    reference_price REAL NOT NULL,
    state           TEXT NOT NULL,
    venue_order_id  TEXT,
    filled          REAL NOT NULL DEFAULT 0,
    average_price   REAL,
    reason          TEXT NOT NULL DEFAULT '',
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_state ON orders(state);
CREATE TABLE IF NOT EXISTS order_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    client_order_id TEXT NOT NULL,
    at              TEXT NOT NULL,
    kind            TEXT NOT NULL,
    detail          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS order_events_order ON order_events(client_order_id);
CREATE TABLE IF NOT EXISTS fills (
    trade_id        TEXT PRIMARY KEY,
    client_order_id TEXT NOT NULL,
    venue_order_id  TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    side            TEXT NOT NULL,
    quantity        REAL NOT NULL,
    price           REAL NOT NULL,
    fee             REAL NOT NULL,
    at              TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS fills_order ON fills(client_order_id);
CREATE TABLE IF NOT EXISTS risk_rejections (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    client_order_id TEXT NOT NULL,
    symbol          TEXT NOT NULL,
    code            TEXT NOT NULL,
    context         TEXT NOT NULL,
    at              TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key             TEXT PRIMARY KEY,
    value           TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class OrderRow:
    client_order_id: str
    decision_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: float
    limit_price: float | None
    reference_price: float
    state: str
    venue_order_id: str | None
    filled: float
    average_price: float | None
    reason: str
    created_at: datetime
    updated_at: datetime


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


class Journal:
    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- writes ---------------------------------------------------------------------------
    def record_intent(self, intent: OrderIntent, state: str, at: datetime) -> bool:
        """Write-ahead: store the order before it is sent. Returns False if this client order
        id is already journaled (a retry of the same decision), leaving the row untouched."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO orders (client_order_id, decision_id, symbol, side,"
                " order_type, quantity, limit_price, reference_price, state, reason, created_at,"
                " updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (intent.client_order_id, intent.decision_id, intent.symbol, intent.side.value,
                 intent.order_type.value, intent.quantity, intent.limit_price,
                 intent.reference_price, state, intent.reason, _ts(at), _ts(at)))
            if cur.rowcount:
                db.execute("INSERT INTO order_events (client_order_id, at, kind, detail)"
                           " VALUES (?,?,?,?)", (intent.client_order_id, _ts(at), state,
                                                 json.dumps({"reason": intent.reason})))
            return bool(cur.rowcount)

    def record_state(self, client_order_id: str, state: str, at: datetime, *,
                     venue_order_id: str | None = None, filled: float | None = None,
                     average_price: float | None = None, reason: str | None = None,
                     detail: dict[str, Any] | None = None) -> None:
        sets, args = ["state = ?", "updated_at = ?"], [state, _ts(at)]
        for column, value in (("venue_order_id", venue_order_id), ("filled", filled),
                              ("average_price", average_price), ("reason", reason)):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)
        with self._tx() as db:
            db.execute(f"UPDATE orders SET {', '.join(sets)} WHERE client_order_id = ?",
                       (*args, client_order_id))
            db.execute("INSERT INTO order_events (client_order_id, at, kind, detail)"
                       " VALUES (?,?,?,?)", (client_order_id, _ts(at), state,
                                             json.dumps(detail or {}, default=str)))

    def record_fill(self, fill: Fill) -> bool:
        """Store one execution; False when its trade id is already stored (a duplicate)."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO fills (trade_id, client_order_id, venue_order_id, symbol,"
                " side, quantity, price, fee, at) VALUES (?,?,?,?,?,?,?,?,?)",
                (fill.trade_id, fill.client_order_id, fill.venue_order_id, fill.symbol,
                 fill.side.value, fill.quantity, fill.price, fill.fee, _ts(fill.ts)))
            return bool(cur.rowcount)

    def record_rejection(self, rejection: RiskRejected) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO risk_rejections (client_order_id, symbol, code, context, at)"
                       " VALUES (?,?,?,?,?)",
                       (rejection.intent.client_order_id, rejection.intent.symbol,
                        rejection.code, json.dumps(rejection.context, default=str),
                        _ts(rejection.ts)))

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key)"
                       " DO UPDATE SET value = excluded.value", (key, value))

    def next_sequence(self, key: str) -> int:
        """Atomically increment and return a persistent counter (decision ids never repeat
        across restarts, so client order ids never collide with an earlier run's)."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            value = int(row[0]) + 1 if row else 1
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key)"
                       " DO UPDATE SET value = excluded.value", (key, str(value)))
            return value

    # -- reads ----------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def order(self, client_order_id: str) -> OrderRow | None:
        row = self._db.execute("SELECT * FROM orders WHERE client_order_id = ?",
                               (client_order_id,)).fetchone()
        return _order_row(row) if row else None

    def orders(self, states: tuple[str, ...] | None = None, limit: int | None = None
               ) -> list[OrderRow]:
        sql, args = "SELECT * FROM orders", []
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args.extend(states)
        sql += " ORDER BY created_at DESC, client_order_id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_order_row(r) for r in self._db.execute(sql, args)]

    def fills(self, client_order_id: str | None = None, limit: int | None = None) -> list[Fill]:
        sql, args = "SELECT * FROM fills", []
        if client_order_id:
            sql += " WHERE client_order_id = ?"
            args.append(client_order_id)
        sql += " ORDER BY at DESC, trade_id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [Fill(client_order_id=r[1], venue_order_id=r[2], trade_id=r[0], symbol=r[3],
                     side=Side(r[4]), quantity=r[5], price=r[6], fee=r[7], ts=_dt(r[8]))
                for r in self._db.execute(sql, args)]

    def order_events(self, client_order_id: str) -> list[tuple[datetime, str, dict[str, Any]]]:
        rows = self._db.execute("SELECT at, kind, detail FROM order_events WHERE"
                                " client_order_id = ? ORDER BY id", (client_order_id,))
        return [(_dt(a), k, json.loads(d)) for a, k, d in rows]

    def rejections(self, limit: int = 20) -> list[tuple[datetime, str, str, str, dict[str, Any]]]:
        rows = self._db.execute("SELECT at, client_order_id, symbol, code, context FROM"
                                " risk_rejections ORDER BY id DESC LIMIT ?", (limit,))
        return [(_dt(a), c, s, code, json.loads(ctx)) for a, c, s, code, ctx in rows]

    def counts(self) -> dict[str, int]:
        q = self._db.execute
        return {"orders": q("SELECT COUNT(*) FROM orders").fetchone()[0],
                "fills": q("SELECT COUNT(*) FROM fills").fetchone()[0],
                "risk_rejections": q("SELECT COUNT(*) FROM risk_rejections").fetchone()[0]}


def _order_row(r: tuple[Any, ...]) -> OrderRow:
    return OrderRow(client_order_id=r[0], decision_id=r[1], symbol=r[2], side=Side(r[3]),
                    order_type=OrderType(r[4]), quantity=r[5], limit_price=r[6],
                    reference_price=r[7], state=r[8], venue_order_id=r[9], filled=r[10],
                    average_price=r[11], reason=r[12], created_at=_dt(r[13]),
                    updated_at=_dt(r[14]))
