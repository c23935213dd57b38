"""The paper venue: an in-process exchange for offline runs.

It sees market data before the daemon does (`on_bars` is called by the feed pump ahead of the
bus), as a real exchange would: an order the daemon sends after seeing bar t fills at bar t+1's
open, never at a price it already knew. Market orders fill at that open plus `slippage_bps`
against the taker; limit orders fill when a bar trades through them. Fees are charged in the
quote currency. Orders the account cannot afford are rejected, as an exchange would.

Its books (balances, orders, trades, market filters, the last bar it saw, and a log of every
order request it received) live in a SQLite file when given a path, so the offline mode survives
a restart the way an exchange account does. Every operation commits in one transaction before
anything is reported: a daemon killed after the venue committed but before it heard the answer
is exactly the "response lost" case reconciliation must handle. Memory is a cache of the file;
if a commit fails the cache is reloaded from it.

Durability: WAL with `synchronous=NORMAL`. That survives a killed daemon (the case this file
exists for); a power cut may lose the last commits of this simulated exchange, which the next
start-up reconciliation then reports as a mismatch with the journal (kept at FULL) rather than
hiding it. NORMAL keeps the per-bar commit cheap.

`latency_ms` simulates the network: an order request reaches the venue, and its answer and the
pushed trade and order reports reach the daemon, that long after they leave. Queries (balances,
open orders, trades, an order by id) answer at once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import sqlite3
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from adapters.venue import (
    OrderListener,
    OrderNotFound,
    OrderRequest,
    PermanentVenueError,
    TradeListener,
    VenueOrder,
    VenueTrade,
)
from daemon.events import Bar, OrderType, Side, utcnow
from daemon.settings import ConfigError
from risk.market_rules import MarketRules


@dataclass(frozen=True)
class PaperVenueConfig:
    initial_cash: float = field(default=100_000.0, metadata={
        "doc": "starting balance of a new paper account, quote currency (an account already "
               "in the state directory keeps its own balances)",
        "min": 0.0, "exclusive_min": True})
    fee_bps: float = field(default=10.0, metadata={
        "doc": "fee charged on each fill's notional, basis points", "min": 0.0, "max": 1000.0})
    slippage_bps: float = field(default=5.0, metadata={
        "doc": "market orders fill this far through the next bar's open, basis points",
        "min": 0.0, "max": 1000.0})
    min_notional: float = field(default=10.0, metadata={
        "doc": "smallest order notional the venue accepts (Binance's NOTIONAL filter)",
        "min": 0.0})
    latency_ms: float = field(default=0.0, metadata={
        "doc": "simulated one-way network latency of order requests, their answers and pushed "
               "reports; 0 = answers at once", "unit": "ms", "min": 0.0, "max": 10_000.0})


SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS account (key TEXT PRIMARY KEY, amount REAL NOT NULL);
CREATE TABLE IF NOT EXISTS markets (symbol TEXT PRIMARY KEY, rules TEXT NOT NULL,
                                    last_close REAL NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    client_order_id TEXT PRIMARY KEY, venue_order_id TEXT NOT NULL UNIQUE, symbol TEXT NOT NULL,
    side TEXT NOT NULL, order_type TEXT NOT NULL, quantity REAL NOT NULL, filled REAL NOT NULL,
    average_price REAL, status TEXT NOT NULL, ts TEXT NOT NULL, limit_price REAL,
    reserved_cash REAL NOT NULL);
CREATE TABLE IF NOT EXISTS trades (
    seq INTEGER PRIMARY KEY, trade_id TEXT NOT NULL UNIQUE, client_order_id TEXT NOT NULL,
    venue_order_id TEXT NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL,
    quantity REAL NOT NULL, price REAL NOT NULL, fee REAL NOT NULL, ts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, client_order_id TEXT NOT NULL, symbol TEXT NOT NULL,
    side TEXT NOT NULL, order_type TEXT NOT NULL, quantity REAL NOT NULL, limit_price REAL,
    outcome TEXT NOT NULL, at TEXT NOT NULL);
"""

CASH = "cash"  # the account table's key for free quote cash; other keys are symbols


@dataclass
class _Order:
    view: VenueOrder
    reserved_cash: float = 0.0


@dataclass(frozen=True, slots=True)
class Submission:
    """One order request as the venue received it, duplicates and rejections included."""

    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: float
    limit_price: float | None
    outcome: str  # "accepted", "duplicate", or "rejected: <reason>"


Report = VenueTrade | VenueOrder


def _moved(v: VenueOrder, filled: float, average_price: float | None, status: str,
           ts: datetime) -> VenueOrder:
    """`dataclasses.replace(v, filled=..., average_price=..., status=..., ts=...)` at a
    fraction of its cost (it is paid for every fill)."""
    return VenueOrder(v.client_order_id, v.venue_order_id, v.symbol, v.side, v.order_type,
                      v.quantity, filled, average_price, status, ts, v.limit_price)


@functools.lru_cache(maxsize=256)
def _ts(dt: datetime) -> str:
    # memoised: one timestamp is written for every order and trade of its bar; equal instants
    # in any zone give the same UTC text, so a hit is always the right answer
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def _now() -> str:
    return utcnow().isoformat(timespec="microseconds")  # already UTC; never repeats, so uncached


class PaperVenue:
    name = "paper"

    def __init__(self, cfg: PaperVenueConfig, symbols: list[str], quote: str,
                 state_path: Path | None = None) -> None:
        """`state_path`: the SQLite file holding the account; None keeps it in memory."""
        self.cfg = cfg
        self.quote = quote
        self.symbols = list(symbols)
        self.state_path = state_path
        self.cash = cfg.initial_cash
        self.positions: dict[str, float] = {s: 0.0 for s in symbols}
        self.last_bar_ts: datetime | None = None
        self.stale_bars = 0  # bars at or before last_bar_ts that were offered again: ignored
        self._rules: dict[str, MarketRules] = {}
        self._last: dict[str, float] = {}
        self._orders: dict[str, _Order] = {}
        self._live: dict[str, _Order] = {}  # `_resting()`'s shortlist, see there
        self._trades: list[VenueTrade] = []
        self._trade_listeners: list[TradeListener] = []
        self._order_listeners: list[OrderListener] = []
        self._in_flight: deque[list[Report]] = deque()
        self._seq = 0
        # in memory (a replay), nothing outlives the process: a bar that changed no order only
        # moves the last closes and `last_bar_ts`, and those rows wait here until the next
        # transaction instead of a commit per bar (see `_flush_marks`)
        self._defer_marks = state_path is None
        self._dirty_closes: set[str] = set()
        self._dirty_bar_ts = False
        # the account rows and seq as the store holds them (`_load` reads them back): a
        # transaction writes only what differs, the store ends up the same
        self._stored_account: dict[str, float] = {}
        self._stored_seq: int | None = None
        if state_path is not None:
            state_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(state_path or ":memory:", isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._open()

    # -- persistence ----------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self._dirty_bar_ts or self._dirty_closes:
            self._flush_marks()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            self._load()  # the file is the truth: drop whatever the failed operation changed
            raise
        self._db.execute("COMMIT")

    def _flush_marks(self) -> None:
        """Write the deferred per-bar rows in a commit of their own, ahead of the transaction
        that needs the store current: the store then holds exactly what a commit per bar
        would have left, also if that transaction fails and `_load` reads it back."""
        closes = [(self._last[s], s) for s in self._dirty_closes]
        bar_ts = self.last_bar_ts if self._dirty_bar_ts else None
        self._dirty_closes = set()
        self._dirty_bar_ts = False
        with self._tx() as db:
            db.executemany("UPDATE markets SET last_close = ? WHERE symbol = ?", closes)
            if bar_ts is not None:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_bar_ts', ?)",
                           (_ts(bar_ts),))

    def _open(self) -> None:
        stored = self._meta("symbols")
        if stored is None:
            with self._tx() as db:
                db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
                    ("symbols", json.dumps(self.symbols)), ("quote", self.quote),
                    ("seq", "0"), ("created_at", _now())])
                self._write_account(db)
            return
        if sorted(json.loads(stored)) != sorted(self.symbols) or self._meta("quote") != self.quote:
            raise ConfigError("market.symbols", self.symbols,
                              f"the paper account in {self.state_path} trades "
                              f"{json.loads(stored)} in {self._meta('quote')}: restore those "
                              f"settings or move the state directory away")
        self._load()

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _load(self) -> None:
        db = self._db
        seq = self._meta("seq")
        self._seq = int(seq or 0)
        self._stored_seq = None if seq is None else int(seq)
        last = self._meta("last_bar_ts")
        self.last_bar_ts = datetime.fromisoformat(last) if last else None
        account = dict(db.execute("SELECT key, amount FROM account").fetchall())
        self._stored_account = dict(account)
        self.cash = account.pop(CASH, self.cfg.initial_cash)
        self.positions = {s: account.get(s, 0.0) for s in self.symbols}
        self._rules, self._last = {}, {}
        for symbol, rules, last_close in db.execute("SELECT * FROM markets"):
            self._rules[symbol] = MarketRules(**json.loads(rules))
            self._last[symbol] = last_close
        self._orders = {}
        for r in db.execute("SELECT * FROM orders ORDER BY CAST(substr(venue_order_id, 2)"
                             " AS INTEGER)"):
            view = VenueOrder(client_order_id=r[0], venue_order_id=r[1], symbol=r[2],
                              side=Side(r[3]), order_type=OrderType(r[4]), quantity=r[5],
                              filled=r[6], average_price=r[7], status=r[8],
                              ts=datetime.fromisoformat(r[9]), limit_price=r[10])
            self._orders[view.client_order_id] = _Order(view=view, reserved_cash=r[11])
        self._live = {cid: o for cid, o in self._orders.items() if o.view.status == "open"}
        self._trades = [
            VenueTrade(trade_id=r[1], client_order_id=r[2], venue_order_id=r[3], symbol=r[4],
                       side=Side(r[5]), quantity=r[6], price=r[7], fee=r[8],
                       ts=datetime.fromisoformat(r[9]))
            for r in db.execute("SELECT * FROM trades ORDER BY seq")]

    def _resting(self) -> list[_Order]:
        """Open orders, oldest first. An order that left "open" never returns to it, so a
        shortlist replaces a walk over every order ever accepted (per bar, in a long replay:
        tens of thousands). `_accept` adds each new order to it as it adds it to `_orders`
        (the only place orders are added), `_load` rebuilds both. A fill or a cancel drops
        the order at once (an empty shortlist is `on_bars`'s quiet path); anything that left
        "open" otherwise is dropped here."""
        live = self._live
        for cid in [cid for cid, o in live.items() if o.view.status != "open"]:
            del live[cid]
        return list(live.values())

    def _write_account(self, db: sqlite3.Connection) -> None:
        stored = self._stored_account
        rows = [(k, v) for k, v in ((CASH, self.cash), *self.positions.items())
                if stored.get(k) != v]
        if rows:
            db.executemany("INSERT INTO account (key, amount) VALUES (?, ?) ON CONFLICT(key)"
                           " DO UPDATE SET amount = excluded.amount", rows)
            stored.update(rows)  # a rollback reloads it from the store (`_load`)
        if self._stored_seq != self._seq:
            db.execute("INSERT INTO meta (key, value) VALUES ('seq', ?) ON CONFLICT(key)"
                       " DO UPDATE SET value = excluded.value", (str(self._seq),))
            self._stored_seq = self._seq

    def _write_orders(self, db: sqlite3.Connection, orders: Iterable[_Order]) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO orders VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [(v.client_order_id, v.venue_order_id, v.symbol, v.side.value, v.order_type.value,
              v.quantity, v.filled, v.average_price, v.status, _ts(v.ts), v.limit_price,
              o.reserved_cash) for o in orders for v in (o.view,)])

    def _insert_order(self, db: sqlite3.Connection, o: _Order) -> None:
        v = o.view  # `_write_orders` for one order, without executemany's overhead
        db.execute("INSERT OR REPLACE INTO orders VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                   (v.client_order_id, v.venue_order_id, v.symbol, v.side.value,
                    v.order_type.value, v.quantity, v.filled, v.average_price, v.status,
                    _ts(v.ts), v.limit_price, o.reserved_cash))

    def _update_orders(self, db: sqlite3.Connection, orders: list[_Order]) -> None:
        """Store what a fill or a cancel changes of orders already stored. Every order in
        memory is in the store (`_accept` writes it, `_load` reads it), and an UPDATE costs
        half a REPLACE of the whole row; should a row be missing all the same, it is written
        whole as before."""
        cur = db.executemany(
            "UPDATE orders SET filled = ?, average_price = ?, status = ?, ts = ?,"
            " reserved_cash = ? WHERE client_order_id = ?",
            [(v.filled, v.average_price, v.status, _ts(v.ts), o.reserved_cash,
              v.client_order_id) for o in orders for v in (o.view,)])
        if cur.rowcount != len(orders):
            self._write_orders(db, orders)

    def _write_submission(self, db: sqlite3.Connection, order: OrderRequest,
                          outcome: str) -> None:
        db.execute("INSERT INTO submissions (client_order_id, symbol, side, order_type,"
                   " quantity, limit_price, outcome, at) VALUES (?,?,?,?,?,?,?,?)",
                   (order.client_order_id, order.symbol, order.side.value,
                    order.order_type.value, order.quantity, order.limit_price, outcome,
                    _now()))

    def submissions(self) -> list[Submission]:
        """Every order request received, oldest first (the venue's audit log)."""
        return [Submission(r[0], r[1], Side(r[2]), OrderType(r[3]), r[4], r[5], r[6])
                for r in self._db.execute(
                    "SELECT client_order_id, symbol, side, order_type, quantity, limit_price,"
                    " outcome FROM submissions ORDER BY id")]

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        # reports still "on the wire" arrive before the connection closes, so a clean stop
        # leaves nothing for the next start-up to find by query (their timers then find an
        # empty queue)
        while self._in_flight:
            self._deliver(self._in_flight.popleft())
        self._db.close()

    def markets(self) -> dict[str, MarketRules]:
        return dict(self._rules)

    def on_trade(self, listener: TradeListener) -> None:
        self._trade_listeners.append(listener)

    def on_order(self, listener: OrderListener) -> None:
        self._order_listeners.append(listener)

    # -- reporting ------------------------------------------------------------------------
    def _report(self, reports: list[Report]) -> None:
        if not reports:
            return
        delay = self.cfg.latency_ms / 1000.0
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if delay <= 0 or loop is None:
            self._deliver(reports)
            return
        # one FIFO for every batch, so reports arrive in the order the venue made them
        self._in_flight.append(reports)
        loop.call_later(delay, self._deliver_next)

    def _deliver_next(self) -> None:
        if self._in_flight:
            self._deliver(self._in_flight.popleft())

    def _deliver(self, reports: list[Report]) -> None:
        for report in reports:
            if isinstance(report, VenueTrade):
                for listener in self._trade_listeners:
                    listener(report)
            else:
                for olistener in self._order_listeners:
                    olistener(report)

    async def _wire(self) -> None:
        if self.cfg.latency_ms > 0:
            await asyncio.sleep(self.cfg.latency_ms / 1000.0)

    # -- market data (called by the feed pump before the daemon sees the bars) -------------
    def on_bars(self, bars: list[Bar]) -> None:
        """Match resting orders against one timestamp's bars. A timestamp at or before the
        last one seen is ignored: an exchange's market never runs backwards."""
        if not bars:
            return
        ts = max(b.ts for b in bars)
        if self.last_bar_ts is not None and ts <= self.last_bar_ts:
            self.stale_bars += len(bars)
            return
        if self._defer_marks and not self._live and all(b.symbol in self._rules for b in bars):
            # most bars of a replay: nothing rests, no market is new, so only the marks move
            # (exactly what the general path below does with no order and no new market)
            last = self._last
            for bar in bars:
                last[bar.symbol] = bar.close
            self._dirty_closes.update(b.symbol for b in bars)
            self.last_bar_ts = ts
            self._dirty_bar_ts = True
            return
        changed: dict[str, _Order] = {}
        resting = self._resting()
        reports: list[Report] = []
        new_trades: list[VenueTrade] = []
        new_markets: list[str] = []
        for bar in bars:
            if bar.symbol not in self._rules:
                self._rules[bar.symbol] = MarketRules.synthetic(
                    bar.symbol, bar.open, min_notional=self.cfg.min_notional)
                new_markets.append(bar.symbol)
            for order in [o for o in resting
                          if o.view.status == "open" and o.view.symbol == bar.symbol]:
                trade = self._match(order, bar)
                if order.view.status != "open" or trade is not None:
                    changed[order.view.client_order_id] = order
                if trade is not None:
                    new_trades.append(trade)
                    reports.append(trade)
                if order.view.status != "open":
                    reports.append(order.view)
                    self._live.pop(order.view.client_order_id, None)
            self._last[bar.symbol] = bar.close
        self.last_bar_ts = ts
        if self._defer_marks and not changed and not new_markets:
            self._dirty_closes.update(b.symbol for b in bars)
            self._dirty_bar_ts = True
            self._report(reports)
            return
        with self._tx() as db:
            if changed:
                self._update_orders(db, list(changed.values()))
                self._write_account(db)
            db.executemany("INSERT INTO trades VALUES (?,?,?,?,?,?,?,?,?,?)",
                           [(int(t.trade_id.rsplit("-", 1)[1]), t.trade_id, t.client_order_id,
                             t.venue_order_id, t.symbol, t.side.value, t.quantity, t.price,
                             t.fee, _ts(t.ts)) for t in new_trades])
            db.executemany("INSERT INTO markets VALUES (?,?,?)",
                           [(s, json.dumps(asdict(self._rules[s])), self._last[s])
                            for s in new_markets])
            db.executemany("UPDATE markets SET last_close = ? WHERE symbol = ?",
                           [(b.close, b.symbol) for b in bars])
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_bar_ts', ?)",
                       (_ts(ts),))
        self._report(reports)

    def _match(self, order: _Order, bar: Bar) -> VenueTrade | None:
        v = order.view
        slip = self.cfg.slippage_bps / 10_000.0
        if v.order_type is OrderType.MARKET:
            price = bar.open * (1 + slip if v.side is Side.BUY else 1 - slip)
        elif v.side is Side.BUY and v.limit_price is not None and bar.low <= v.limit_price:
            price = min(bar.open, v.limit_price)
        elif v.side is Side.SELL and v.limit_price is not None and bar.high >= v.limit_price:
            price = max(bar.open, v.limit_price)
        else:
            return None
        rules = self._rules[v.symbol]
        price = rules.round_price(price)
        qty = v.quantity - v.filled
        fee_rate = self.cfg.fee_bps / 10_000.0
        self.cash += order.reserved_cash  # release the hold; the fill pays the real amount
        order.reserved_cash = 0.0
        if v.side is Side.BUY:
            affordable = rules.floor_qty(self.cash / (price * (1 + fee_rate)))
            qty = min(qty, affordable)
        else:
            qty = min(qty, self.positions.get(v.symbol, 0.0))
        if qty <= 0:
            order.view = _moved(v, v.filled, v.average_price, "canceled", bar.ts)
            return None
        fee = qty * price * fee_rate
        signed = qty if v.side is Side.BUY else -qty
        self.positions[v.symbol] = self.positions.get(v.symbol, 0.0) + signed
        self.cash -= signed * price + fee
        self._seq += 1
        trade = VenueTrade(trade_id=f"paper-{self._seq}", client_order_id=v.client_order_id,
                           venue_order_id=v.venue_order_id, symbol=v.symbol, side=v.side,
                           quantity=qty, price=price, fee=fee, ts=bar.ts)
        self._trades.append(trade)
        filled = v.filled + qty
        avg = ((v.average_price or 0.0) * v.filled + price * qty) / filled
        done = math.isclose(filled, v.quantity, rel_tol=1e-12) or filled >= v.quantity
        order.view = _moved(v, filled, avg, "closed" if done else "canceled", bar.ts)
        return trade

    # -- trading --------------------------------------------------------------------------
    async def submit(self, order: OrderRequest) -> VenueOrder:
        await self._wire()
        view = self._accept(order)
        await self._wire()
        return view

    def _accept(self, order: OrderRequest) -> VenueOrder:
        existing = self._orders.get(order.client_order_id)
        if existing is not None:
            # idempotent on client order id, like Binance's duplicate check; logged, so a
            # blind resend is visible in the venue's audit log
            with self._tx() as db:
                self._write_submission(db, order, "duplicate")
            return existing.view
        try:
            reserve = self._check(order)
        except PermanentVenueError as exc:
            with self._tx() as db:
                self._write_submission(db, order, f"rejected: {exc}")
            raise
        self.cash -= reserve
        self._seq += 1
        view = VenueOrder(client_order_id=order.client_order_id, venue_order_id=f"P{self._seq}",
                          symbol=order.symbol, side=order.side, order_type=order.order_type,
                          quantity=order.quantity, filled=0.0, average_price=None,
                          status="open", ts=self.last_bar_ts or utcnow(),
                          limit_price=order.limit_price)
        placed = _Order(view=view, reserved_cash=reserve)
        self._orders[order.client_order_id] = placed
        self._live[order.client_order_id] = placed
        with self._tx() as db:
            self._insert_order(db, placed)
            self._write_submission(db, order, "accepted")
            self._write_account(db)
        return view

    def _check(self, order: OrderRequest) -> float:
        """The quote cash to hold for the order; PermanentVenueError saying why it is refused."""
        rules = self._rules.get(order.symbol)
        if rules is None or order.symbol not in self._last:
            raise PermanentVenueError(f"unknown symbol or no market yet: {order.symbol}")
        price = order.limit_price if order.order_type is OrderType.LIMIT else \
            self._last[order.symbol]
        if price is None or not (order.quantity > 0 and price > 0):
            raise PermanentVenueError(f"invalid order: quantity={order.quantity} price={price}")
        broken = rules.violation(order.quantity, price)
        if broken is not None:
            code, ctx = broken
            raise PermanentVenueError(f"{code} " + " ".join(f"{k}={v}" for k, v in ctx.items()))
        if order.side is Side.BUY:
            # hold the order's value and fee at today's price, as an exchange holds the quote
            # for a buy; the fill pays the real amount and is cut to what the cash covers
            reserve = order.quantity * price * (1 + self.cfg.fee_bps / 10_000.0)
            if reserve > self.cash + 1e-9:
                raise PermanentVenueError(
                    f"insufficient funds: need={reserve:.2f} {self.quote} free={self.cash:.2f}")
            return reserve
        free = self.positions.get(order.symbol, 0.0) - sum(
            o.view.quantity - o.view.filled for o in self._resting()
            if o.view.status == "open" and o.view.symbol == order.symbol
            and o.view.side is Side.SELL)
        if order.quantity > free + rules.amount_step * 1e-6:
            raise PermanentVenueError(
                f"insufficient balance: sell={order.quantity} free={free} {order.symbol}")
        return 0.0

    async def cancel(self, client_order_id: str, symbol: str) -> VenueOrder:
        await self._wire()
        order = self._orders.get(client_order_id)
        if order is None:
            raise OrderNotFound(f"unknown order {client_order_id}")
        if order.view.status == "open":
            self.cash += order.reserved_cash
            order.reserved_cash = 0.0
            order.view = replace(order.view, status="canceled", ts=self.last_bar_ts or utcnow())
            self._live.pop(client_order_id, None)
            with self._tx() as db:
                self._update_orders(db, [order])
                self._write_account(db)
            self._report([order.view])
        view = order.view
        await self._wire()
        return view

    async def fetch_order(self, client_order_id: str, symbol: str) -> VenueOrder:
        order = self._orders.get(client_order_id)
        if order is None:
            raise OrderNotFound(f"unknown order {client_order_id}")
        return order.view

    async def open_orders(self) -> list[VenueOrder]:
        return [o.view for o in self._orders.values() if o.view.status == "open"]

    def orders(self) -> list[VenueOrder]:
        """Every order the venue accepted, in any status, oldest first."""
        return [o.view for o in self._orders.values()]

    async def balances(self) -> dict[str, float]:
        reserved = sum(o.reserved_cash for o in self._orders.values())
        out = {self.quote: self.cash + reserved}
        for symbol, qty in self.positions.items():
            out[symbol.split("/")[0]] = qty
        return out

    async def trades_since(self, since: datetime) -> list[VenueTrade]:
        return [t for t in self._trades if t.ts >= since]
