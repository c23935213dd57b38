"""The OMS's and the journal's hot path: the working-order shortlist after many orders, and
the journal's group commit (an order committed before it is sent, fewer commits than rows, a
record atomic inside a batch, a lost batch stopping every send)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.paper import PaperVenue, PaperVenueConfig
from adapters.venue import OrderRequest
from daemon.bus import EventBus
from daemon.events import Bar, Event, Fill, OrderApproved, OrderIntent, OrderType, Side
from daemon.journal import Journal, JournalBatchLost, OrderUpdate
from daemon.oms import OMS, WorkingOrder
from daemon.order_state import OrderState
from tests.venue_faults import FaultyNetwork

S = OrderState
T0 = datetime(2024, 1, 1, tzinfo=UTC)
SYMBOLS = ["BTC/USDT", "ETH/USDT"]


def bars(i: int) -> list[Bar]:
    ts = T0 + timedelta(hours=i)
    return [Bar("BTC/USDT", ts, 100.0, 101.0, 99.0, 100.0, 1000.0),
            Bar("ETH/USDT", ts, 10.0, 10.1, 9.9, 10.0, 1000.0)]


def intent(cid: str, qty: float | None = None, symbol: str = "BTC/USDT",
           limit: float | None = None) -> OrderIntent:
    """A market order of 0.1 (notional 10, the paper venue's minimum) or a limit order of 1.0
    far below the market, which rests."""
    qty = qty if qty is not None else 1.0 if limit else 0.1
    return OrderIntent(cid, symbol, Side.BUY, qty, OrderType.LIMIT if limit else OrderType.MARKET,
                       reference_price=100.0, ts=T0, limit_price=limit, decision_id="000001")


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "journal.sqlite"
        self.paper = PaperVenue(PaperVenueConfig(initial_cash=1e9, slippage_bps=0.0), SYMBOLS,
                                "USDT")
        self.venue = FaultyNetwork(self.paper)
        self.bus = EventBus()
        self.journal = Journal(self.path)
        self.events: list[Event] = []
        self.bus.subscribe("recorder", {Event: self.events.append})
        self.oms = OMS(self.bus, self.journal, self.venue, seed=7)
        self.venue.on_bars(bars(0))
        self.statements: list[str] = []
        self.journal._db.set_trace_callback(self.statements.append)

    async def send(self, *intents: OrderIntent) -> None:
        for i in intents:
            await self.oms.on_approved(OrderApproved(i, T0))
        await self.bus.settle()

    def committed(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """What another connection (a restart, the CLI) sees: committed rows only."""
        other = sqlite3.connect(self.path)
        try:
            return other.execute(sql, args).fetchall()
        finally:
            other.close()

    def commits(self) -> int:
        return sum(s == "COMMIT" for s in self.statements)

    def full_scan(self) -> list[WorkingOrder]:
        return [o for o in self.oms.orders.values() if o.state.working]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    await r.bus.start()
    yield r
    await r.bus.stop()
    r.journal.close()


# -- working() ----------------------------------------------------------------------------
async def test_working_matches_a_full_scan_through_many_orders(rig: Rig) -> None:
    for k in range(12):
        # two market orders fill on the next bar; a limit order far below rests; every third
        # round cancels the oldest resting one
        await rig.send(intent(f"m{k}a"), intent(f"m{k}b", symbol="ETH/USDT", qty=1.0),
                       intent(f"l{k}", limit=50.0))
        assert rig.oms.working() == rig.full_scan()
        rig.venue.on_bars(bars(k + 1))
        await rig.bus.settle()
        if k % 3 == 2:
            oldest = rig.oms.working()[0].client_order_id
            await rig.oms.cancel(oldest, "test")
        assert rig.oms.working() == rig.full_scan()
        assert rig.oms.working_quantity() == {"BTC/USDT": len(rig.full_scan()) * 1.0}
    assert len(rig.oms.orders) == 36
    assert len(rig.oms.working()) == 12 - 4


async def test_working_does_not_walk_every_order_ever_sent(rig: Rig) -> None:
    await rig.send(*(intent(f"a{k}") for k in range(20)), intent("rest", limit=50.0))
    rig.venue.on_bars(bars(1))
    await rig.bus.settle()

    class NoWalk(dict[str, WorkingOrder]):
        def items(self) -> Any:
            raise AssertionError("working() walked every order")

        def values(self) -> Any:
            raise AssertionError("working() walked every order")

        def __iter__(self) -> Any:
            raise AssertionError("working() walked every order")

    rig.oms.orders = NoWalk(rig.oms.orders)
    assert [o.client_order_id for o in rig.oms.working()] == ["rest"]
    await rig.oms.on_approved(OrderApproved(intent("new", limit=50.0), T0))
    await rig.bus.settle()
    assert [o.client_order_id for o in rig.oms.working()] == ["rest", "new"]


async def test_working_follows_orders_changed_behind_its_back(rig: Rig) -> None:
    await rig.send(intent("a", limit=50.0), intent("b", limit=50.0), intent("c", limit=50.0))
    assert [o.client_order_id for o in rig.oms.working()] == ["a", "b", "c"]
    del rig.oms.orders["b"]
    assert [o.client_order_id for o in rig.oms.working()] == ["a", "c"]
    rig.oms.orders = {"c": rig.oms.orders["c"]}  # rebuilt
    assert [o.client_order_id for o in rig.oms.working()] == ["c"]
    rig.oms.orders["z"] = WorkingOrder(intent=intent("z"), state=S.ACCEPTED, created_at=T0)
    assert [o.client_order_id for o in rig.oms.working()] == ["c", "z"]


# -- group commit -------------------------------------------------------------------------
async def test_each_order_is_committed_before_the_venue_sees_it(rig: Rig) -> None:
    seen: list[tuple[str, list[tuple[Any, ...]]]] = []

    def check(order: OrderRequest) -> None:
        seen.append((order.client_order_id, rig.committed(
            "SELECT state FROM orders WHERE client_order_id = ?", order.client_order_id)))

    rig.venue.before_submit = check
    # no commit at the loop's turn (it looks pending already): only make_durable's
    rig.journal._commit_loop = asyncio.get_running_loop()
    await rig.send(*(intent(f"a{k}") for k in range(8)))
    assert seen == [(f"a{k}", [("PENDING_NEW",)]) for k in range(8)]


async def test_a_rebalance_commits_a_few_times_not_per_row(rig: Rig) -> None:
    before = rig.commits()
    await rig.send(*(intent(f"a{k}") for k in range(8)))
    rig.venue.on_bars(bars(1))
    await rig.bus.settle()
    await asyncio.sleep(0)  # the loop's turn: the batch commits
    assert len(rig.journal.fills()) == 8
    # before group commit: 3 per order (intent, ACCEPTED, fill)
    assert rig.commits() - before <= 4, rig.statements
    assert rig.committed("SELECT state, COUNT(*) FROM orders GROUP BY state") == [("FILLED", 8)]
    assert rig.committed("SELECT COUNT(*) FROM fills") == [(8,)]
    assert rig.committed("SELECT COUNT(*) FROM order_events") == [(24,)]


async def test_rows_commit_once_the_loop_turns(rig: Rig) -> None:
    await rig.send(intent("a"))
    rig.venue.on_bars(bars(1))  # the fill is journaled, not committed yet
    assert rig.journal.order("a").state == "FILLED"  # this connection sees its own batch
    await asyncio.sleep(0)
    assert rig.committed("SELECT state, filled FROM orders") == [("FILLED", 0.1)]


async def test_a_cancel_is_committed_before_the_venue_is_asked(rig: Rig) -> None:
    await rig.send(intent("a", limit=50.0))
    states: list[list[tuple[Any, ...]]] = []
    cancel = rig.paper.cancel

    async def spy(client_order_id: str, symbol: str) -> Any:
        states.append(rig.committed("SELECT state FROM orders"))
        return await cancel(client_order_id, symbol)

    rig.paper.cancel = spy  # type: ignore[method-assign]
    await rig.oms.cancel("a", "test")
    assert states == [[("PENDING_CANCEL",)]]


async def test_a_failed_record_in_a_batch_rolls_back_only_itself(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    assert journal.record_intent(intent("a"), "PENDING_NEW", T0)  # opens the batch
    journal._db.execute("CREATE TEMP TRIGGER boom BEFORE UPDATE ON orders BEGIN"
                        " SELECT RAISE(ABORT, 'disk full'); END")
    fill = Fill("a", "P1", "t1", "BTC/USDT", Side.BUY, 0.1, 100.0, 0.1, T0)
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        journal.record_fill(fill, OrderUpdate("FILLED", 0.1, 100.0), at=T0)
    journal._db.execute("DROP TRIGGER boom")
    journal.make_durable("a")
    assert journal.fills() == []  # never a fill without its order's quantity
    assert journal.order("a").state == "PENDING_NEW"
    journal.close()
    again = Journal(tmp_path / "j.sqlite")
    assert [k for _, k, _ in again.order_events("a")] == ["PENDING_NEW"]
    again.close()


async def test_close_commits_the_open_batch(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    journal.record_intent(intent("a"), "PENDING_NEW", T0)
    journal.record_state("a", "ACCEPTED", T0, venue_order_id="P1")
    journal.close()
    again = Journal(tmp_path / "j.sqlite")
    assert again.order("a").state == "ACCEPTED"
    again.close()


def test_without_an_event_loop_every_write_commits_at_once(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    journal.record_intent(intent("a"), "PENDING_NEW", T0)
    assert not journal._db.in_transaction
    journal.close()


class _RollsBackOnCommit:
    """A connection whose COMMIT fails after SQLite rolled the transaction back (as it may on
    a full disk or an I/O error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            self.db.execute("ROLLBACK")
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


async def test_a_lost_batch_stops_every_send(rig: Rig) -> None:
    real = rig.journal._db
    rig.journal._db = _RollsBackOnCommit(real)  # type: ignore[assignment]
    submitted: list[str] = []
    rig.venue.before_submit = lambda o: submitted.append(o.client_order_id)
    await rig.oms.on_approved(OrderApproved(intent("a"), T0))
    await rig.bus.settle()
    assert submitted == []  # its intent never reached the disk: never sent
    assert rig.oms.halted_reason is not None and "JOURNAL_WRITES_LOST" in rig.oms.halted_reason
    rig.journal._db = real  # type: ignore[assignment]
    with pytest.raises(JournalBatchLost):
        rig.journal.record_intent(intent("b"), "PENDING_NEW", T0)
    assert rig.committed("SELECT COUNT(*) FROM orders") == [(0,)]
    assert rig.paper.orders() == []


async def test_a_batch_of_fills_lost_stops_the_journal(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    journal.record_intent(intent("a"), "PENDING_NEW", T0)
    journal.make_durable("a")
    fill = Fill("a", "P1", "t1", "BTC/USDT", Side.BUY, 0.1, 100.0, 0.1, T0)
    assert journal.record_fill(fill, OrderUpdate("FILLED", 0.1, 100.0), at=T0)
    journal._db.execute("ROLLBACK")  # as SQLite does on some I/O errors
    # the fill was published; booking it again when a query finds it would count it twice
    with pytest.raises(JournalBatchLost):
        journal.record_fill(fill, OrderUpdate("FILLED", 0.1, 100.0), at=T0, source="query")
    with pytest.raises(JournalBatchLost):
        journal.make_durable("b")
    journal.close()


def test_a_journal_outliving_its_event_loop_still_commits_in_the_next(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    # as if a loop had closed with this journal's commit still pending on it
    stale = asyncio.new_event_loop()
    stale.close()
    journal._commit_loop = stale

    async def write_and_turn() -> None:
        journal.record_intent(intent("b"), "PENDING_NEW", T0)
        await asyncio.sleep(0)

    asyncio.run(write_and_turn())
    other = sqlite3.connect(tmp_path / "j.sqlite")
    assert other.execute("SELECT client_order_id FROM orders").fetchall() == [("b",)]
    other.close()
    journal.close()
