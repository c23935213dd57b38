"""The order journal: SQLite, WAL mode, one file in the state directory.

An order is committed here before it is sent; every venue answer and every fill is journaled as
it arrives and committed with the next group commit (below). Fills are keyed by the venue's
trade id, so a fill reported twice (REST poll and stream) is stored once.

Durability: WAL with `synchronous=FULL`. In WAL mode NORMAL already survives a killed process,
but may lose the last commits on power loss or a kernel crash; an order we sent but forgot is
exactly the failure this journal exists to prevent, so each commit pays for an fsync (about
0.25 ms on the development machine).

Group commit. A commit costs far more than the rows it writes (an fsync live; with a replay's
synchronous=OFF still a WAL write of every page touched), so the OMS's rows (intents, state
changes, fills, order events) are written into one open transaction that commits once the
event loop gets round to it (`call_soon`), or earlier where it must: `make_durable` before an
order goes to the venue, and every other write (meta, counters, rejections, reconciliations)
commits at once, taking the batch with it. Each record stays atomic inside the batch (a
savepoint), and one connection writes in order, so a crash keeps a prefix of the writes: the
journal as it stood at its last commit, a state a crash could always leave. An order goes to
the venue only once its intent row, and so every row before it, is committed; a cancel only
once every row is. What a crash loses was learned from the venue after the last commit (an
answer, a fill) or changed nothing at the venue, and start-up reconciliation settles it with
the venue as after any crash. Without a running event loop every write commits at once. If
SQLite ever rolls a batch back (a failed commit, an I/O error), the process has acted on rows
the journal no longer holds: every later write and send raises JournalBatchLost.

Besides orders and fills it keeps what a restart needs to trust its own view: the account's
opening balances (positions are opening balances plus journaled fills, nothing else), the
reports of every reconciliation against the venue, and `meta` counters.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from daemon.events import Fill, OrderIntent, OrderType, RiskRejected, Side

log = structlog.get_logger("journal")

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
CREATE TABLE IF NOT EXISTS reconciliations (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    at              TEXT NOT NULL,
    kind            TEXT NOT NULL,
    ok              INTEGER NOT NULL,
    report          TEXT NOT NULL
);
"""

# Columns added after the first release: (table, column, declaration). Added in place on open,
# so a journal written by an older tradingd keeps working.
MIGRATIONS = (
    # the market time the order was decided at (the intent's bar): a lower bound for the time
    # of its trades in the venue's own clock, used to ask a venue for trades we may have missed
    ("orders", "decided_at", "TEXT"),
    # how a fill reached us: "stream" (the venue pushed it) or "query" (we found it by asking)
    ("fills", "source", "TEXT NOT NULL DEFAULT 'stream'"),
    # the asset the fee was charged in ('' = the quote currency, as every older row was);
    # `fee` is an amount in it. fee_quote: the venue's quote value of a third-asset fee
    ("fills", "fee_currency", "TEXT NOT NULL DEFAULT ''"),
    ("fills", "fee_quote", "REAL"),
)

TERMINAL_STATES = ("FILLED", "CANCELLED", "REJECTED", "EXPIRED")
OPENING_BALANCES = "opening_balances"


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
    decided_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: enums as their values, times as ISO 8601."""
        out = asdict(self)
        out.update(side=self.side.value, order_type=self.order_type.value,
                   created_at=self.created_at.isoformat(), updated_at=self.updated_at.isoformat(),
                   decided_at=self.decided_at.isoformat() if self.decided_at else None)
        return out


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """Columns to change on an order together with a fill, in the fill's transaction. `state`
    None keeps the state (a late fill on an order already terminal)."""

    state: str | None
    filled: float
    average_price: float | None
    venue_order_id: str | None = None


def fill_dict(fill: Fill) -> dict[str, Any]:
    return {"trade_id": fill.trade_id, "client_order_id": fill.client_order_id,
            "venue_order_id": fill.venue_order_id, "symbol": fill.symbol,
            "side": fill.side.value, "quantity": fill.quantity, "price": fill.price,
            "fee": fill.fee, "fee_currency": fill.fee_currency, "fee_quote": fill.fee_quote,
            "ts": fill.ts.isoformat()}


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


class JournalBatchLost(RuntimeError):
    """A batch of rows was rolled back by SQLite (a failed commit or statement): what the
    process holds in memory is ahead of the journal, so the journal takes no more writes."""


# an event's detail as JSON: one encoder, not one built per call for default=str
_encode_detail = json.JSONEncoder(default=str).encode


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
        self._migrate()
        self._batch_intents: set[str] = set()  # intents written since the last commit
        self._batch_rows = False  # records written since the last commit
        # the loop a `_commit_soon` is pending on; a journal outliving its loop (tests) would
        # otherwise wait for a callback that never runs
        self._commit_loop: asyncio.AbstractEventLoop | None = None
        self._lost: BaseException | None = None  # see JournalBatchLost
        self._closed = False
        self._last_ts: tuple[datetime | None, str] = (None, "")  # _ts of the last bar time

    def _migrate(self) -> None:
        for table, column, declaration in MIGRATIONS:
            columns = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        if not self._closed:
            try:
                self.commit()
            finally:
                self._closed = True
                self._db.close()

    # -- transactions ---------------------------------------------------------------------
    def commit(self) -> None:
        """Make every write so far durable."""
        db = self._db
        if not db.in_transaction:
            return
        try:
            db.execute("COMMIT")
        except BaseException as exc:
            self._check_batch(exc)
            raise
        self._batch_intents.clear()
        self._batch_rows = False

    def make_durable(self, client_order_id: str) -> None:
        """Commit now if this order's intent is still in the open batch: called before the
        order goes to the venue. Raises if the intent was never committed and never will be."""
        if client_order_id in self._batch_intents:
            self.commit()
        self._check_open()

    def _commit_soon(self) -> None:
        self._commit_loop = None
        if self._closed:
            return
        try:
            self.commit()
        except Exception as exc:  # nobody to raise to: the next write or send finds out
            log.error("journal_commit_failed", error=f"{type(exc).__name__}: {exc}")

    def _check_batch(self, exc: BaseException) -> None:
        """After an error: if SQLite rolled the whole transaction back (it may, on a full disk
        or an I/O error), the batch is gone, and with it rows the process has acted on."""
        if not self._db.in_transaction and self._batch_rows:
            self._lost = exc
            self._batch_intents.clear()
            self._batch_rows = False
            log.error("journal_batch_lost", error=f"{type(exc).__name__}: {exc}")

    def _check_open(self) -> None:
        """Raise JournalBatchLost if a batch was lost, now or before."""
        if self._batch_rows and not self._db.in_transaction:  # rolled back behind our back
            self._check_batch(sqlite3.OperationalError("the open transaction was rolled back"))
        if self._lost is not None:
            raise JournalBatchLost(f"journal writes were rolled back: {self._lost}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One record's writes, committed on return together with any open batch."""
        with self._batched() as db:
            yield db
        self.commit()

    @contextmanager
    def _batched(self) -> Iterator[sqlite3.Connection]:
        """One record's writes, atomic, left in the open batch for a later commit (module
        doc); committed at once when no event loop runs."""
        self._check_open()
        db = self._db
        if db.in_transaction:
            # the batch holds other records: undo only this one if it fails
            db.execute("SAVEPOINT record")
            try:
                yield db
            except BaseException as exc:
                try:
                    db.execute("ROLLBACK TO record")
                    db.execute("RELEASE record")
                except sqlite3.Error:
                    pass
                self._check_batch(exc)
                raise
            db.execute("RELEASE record")
            self._batch_rows = True
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back already
                db.execute("ROLLBACK")  # this record is all the transaction holds
            raise
        self._batch_rows = True
        if loop is None:
            self.commit()
        elif self._commit_loop is not loop:
            self._commit_loop = loop
            loop.call_soon(self._commit_soon)

    def _bar_ts(self, dt: datetime) -> str:
        # a bar's time (an intent's decision, a fill's bar) repeats across the rows of one
        # timestamp: format it once
        last, text = self._last_ts
        if dt is last or dt == last:
            return text
        text = _ts(dt)
        self._last_ts = (dt, text)
        return text

    # -- writes ---------------------------------------------------------------------------
    def record_intent(self, intent: OrderIntent, state: str, at: datetime) -> bool:
        """Write-ahead: store the order before it is sent. Returns False if this client order
        id is already journaled (a retry of the same decision), leaving the row untouched.
        The row joins the open batch: `make_durable` commits it before the order is sent."""
        cid, now = intent.client_order_id, _ts(at)
        with self._batched() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO orders (client_order_id, decision_id, symbol, side,"
                " order_type, quantity, limit_price, reference_price, state, reason, created_at,"
                " updated_at, decided_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (cid, intent.decision_id, intent.symbol, intent.side.value,
                 intent.order_type.value, intent.quantity, intent.limit_price,
                 intent.reference_price, state, intent.reason, now, now,
                 self._bar_ts(intent.ts)))
            if not cur.rowcount:
                return False
            db.execute("INSERT INTO order_events (client_order_id, at, kind, detail)"
                       " VALUES (?,?,?,?)", (cid, now, state,
                                             json.dumps({"reason": intent.reason})))
        if self._db.in_transaction:
            self._batch_intents.add(cid)
        return True

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
        event = {**(detail or {}), **({"reason": reason} if reason else {})}
        with self._batched() as db:
            db.execute(f"UPDATE orders SET {', '.join(sets)} WHERE client_order_id = ?",
                       (*args, client_order_id))
            db.execute("INSERT INTO order_events (client_order_id, at, kind, detail)"
                       " VALUES (?,?,?,?)", (client_order_id, args[1], state,
                                             _encode_detail(event)))

    def record_fill(self, fill: Fill, update: OrderUpdate | None = None, *, at: datetime,
                    source: str = "stream") -> bool:
        """Store one execution and, in the same transaction, the order's new fill state: a
        crash can never leave a fill without its order's quantity or the reverse. False (and
        nothing written) when the trade id is already stored: a duplicate report. Joins the
        open batch (module doc)."""
        with self._batched() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO fills (trade_id, client_order_id, venue_order_id, symbol,"
                " side, quantity, price, fee, at, source, fee_currency, fee_quote)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (fill.trade_id, fill.client_order_id, fill.venue_order_id, fill.symbol,
                 fill.side.value, fill.quantity, fill.price, fill.fee, self._bar_ts(fill.ts),
                 source, fill.fee_currency, fill.fee_quote))
            if not cur.rowcount:
                return False
            if update is not None:
                now = _ts(at)
                sets = ["filled = ?", "average_price = ?", "updated_at = ?"]
                args: list[Any] = [update.filled, update.average_price, now]
                if update.state is not None:
                    sets.append("state = ?")
                    args.append(update.state)
                if update.venue_order_id is not None:
                    sets.append("venue_order_id = ?")
                    args.append(update.venue_order_id)
                db.execute(f"UPDATE orders SET {', '.join(sets)} WHERE client_order_id = ?",
                           (*args, fill.client_order_id))
                db.execute("INSERT INTO order_events (client_order_id, at, kind, detail)"
                           " VALUES (?,?,?,?)",
                           (fill.client_order_id, now, update.state or "FILL",
                            json.dumps({"trade_id": fill.trade_id, "quantity": fill.quantity,
                                        "price": fill.price, "source": source})))
            return True

    def record_event(self, client_order_id: str, kind: str, at: datetime,
                     detail: dict[str, Any] | None = None) -> None:
        """An order event that is not a state change (e.g. RESOLVED: what asking the venue
        about an UNKNOWN order found). Joins the open batch."""
        with self._batched() as db:
            db.execute("INSERT INTO order_events (client_order_id, at, kind, detail)"
                       " VALUES (?,?,?,?)", (client_order_id, _ts(at), kind,
                                             _encode_detail(detail or {})))

    def record_reconciliation(self, kind: str, at: datetime, ok: bool,
                              report: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO reconciliations (at, kind, ok, report) VALUES (?,?,?,?)",
                       (_ts(at), kind, int(ok), json.dumps(report, default=str)))

    def set_opening_balances(self, balances: dict[str, float]) -> None:
        """The account as it stood before the daemon's first order. Written once: positions
        are these plus the journaled fills, so rewriting them would hide a lost fill."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                       (OPENING_BALANCES, json.dumps(balances, sort_keys=True)))

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
            rows = db.execute("INSERT INTO meta (key, value) VALUES (?, '1') ON CONFLICT(key)"
                              " DO UPDATE SET value = CAST(value AS INTEGER) + 1"
                              " RETURNING value", (key,)).fetchall()
            return int(rows[0][0])

    # -- reads ----------------------------------------------------------------------------
    def opening_balances(self) -> dict[str, float] | None:
        text = self.get_meta(OPENING_BALANCES)
        return {k: float(v) for k, v in json.loads(text).items()} if text else None

    def fill_totals(self) -> tuple[float, dict[str, float]]:
        """(quote cash change, signed base quantity per symbol) over every journaled fill, each
        fee taken from the balance it was charged in: quote fees from cash, base fees from the
        symbol's quantity. Fees in a third asset are in `fee_asset_totals`."""
        cash, quantities, _ = self._totals()
        return cash, quantities

    def fee_asset_totals(self) -> dict[str, float]:
        """Fees charged in an asset that is neither the fill's quote nor its base (e.g. BNB),
        summed per asset: what the fills took from that asset's balance."""
        return self._totals()[2]

    def _totals(self) -> tuple[float, dict[str, float], dict[str, float]]:
        rows = self._db.execute(
            "SELECT symbol, fee_currency, SUM(CASE side WHEN 'buy' THEN quantity"
            " ELSE -quantity END), SUM(CASE side WHEN 'buy' THEN -(quantity * price)"
            " ELSE quantity * price END), SUM(fee) FROM fills GROUP BY symbol, fee_currency"
        ).fetchall()
        cash, quantities, other = 0.0, {}, {}
        for symbol, currency, signed, proceeds, fee in rows:
            base, _, quote = symbol.partition("/")
            cash += proceeds
            quantities[symbol] = quantities.get(symbol, 0.0) + signed
            if currency in ("", quote):
                cash -= fee
            elif currency == base:
                quantities[symbol] -= fee
            else:
                other[currency] = other.get(currency, 0.0) + fee
        return cash, quantities, other

    def last_fill_at(self) -> datetime | None:
        row = self._db.execute("SELECT MAX(at) FROM fills").fetchone()
        return _dt(row[0]) if row and row[0] else None

    def working_orders(self) -> list[OrderRow]:
        """Orders not in a terminal state, oldest first: what a restart must pick up."""
        sql = (f"SELECT * FROM orders WHERE state NOT IN ({','.join('?' * len(TERMINAL_STATES))})"
               " ORDER BY created_at, client_order_id")
        return [_order_row(r) for r in self._db.execute(sql, TERMINAL_STATES)]

    def reconciliations(self, limit: int = 20) -> list[tuple[datetime, str, bool, dict[str, Any]]]:
        rows = self._db.execute("SELECT at, kind, ok, report FROM reconciliations"
                                " ORDER BY id DESC LIMIT ?", (limit,))
        return [(_dt(a), k, bool(ok), json.loads(r)) for a, k, ok, r in rows]

    def recent(self, limit: int) -> dict[str, Any]:
        """JSON-ready: the latest `limit` orders and fills and the last reconciliation."""
        last = self.reconciliations(limit=1)
        return {"orders": [o.as_dict() for o in self.orders(limit=limit)],
                "fills": [fill_dict(f) for f in self.fills(limit=limit)],
                "last_reconciliation": {"at": last[0][0].isoformat(), "kind": last[0][1],
                                        "ok": last[0][2], "report": last[0][3]}
                if last else None}

    def event_counts(self) -> dict[str, int]:
        """Order events by kind, e.g. how many UNKNOWN orders were RESOLVED."""
        rows = self._db.execute("SELECT kind, COUNT(*) FROM order_events GROUP BY kind")
        return {k: n for k, n in rows}

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

    def fills(self, client_order_id: str | None = None, limit: int | None = None,
              oldest_first: bool = False) -> list[Fill]:
        # columns by name: later ones were added by migrations
        sql, args = ("SELECT trade_id, client_order_id, venue_order_id, symbol, side, quantity,"
                     " price, fee, at, fee_currency, fee_quote FROM fills"), []
        if client_order_id:
            sql += " WHERE client_order_id = ?"
            args.append(client_order_id)
        sql += " ORDER BY at, rowid" if oldest_first else " ORDER BY at DESC, rowid DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [Fill(client_order_id=r[1], venue_order_id=r[2], trade_id=r[0], symbol=r[3],
                     side=Side(r[4]), quantity=r[5], price=r[6], fee=r[7], ts=_dt(r[8]),
                     fee_currency=r[9], fee_quote=r[10])
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
                "fills_found_by_query": q("SELECT COUNT(*) FROM fills WHERE source != 'stream'"
                                          ).fetchone()[0],
                "risk_rejections": q("SELECT COUNT(*) FROM risk_rejections").fetchone()[0]}


def _order_row(r: tuple[Any, ...]) -> OrderRow:
    return OrderRow(client_order_id=r[0], decision_id=r[1], symbol=r[2], side=Side(r[3]),
                    order_type=OrderType(r[4]), quantity=r[5], limit_price=r[6],
                    reference_price=r[7], state=r[8], venue_order_id=r[9], filled=r[10],
                    average_price=r[11], reason=r[12], created_at=_dt(r[13]),
                    updated_at=_dt(r[14]), decided_at=_dt(r[15]) if r[15] else None)
