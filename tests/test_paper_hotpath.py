"""The paper venue's fast paths (open-order shortlist, quiet bars, fewer SQLite writes in memory)
give the answers, reports and stored rows the plain paths give, also after failures."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from adapters.paper import PaperVenue, PaperVenueConfig
from adapters.venue import OrderRequest, PermanentVenueError, VenueOrder, VenueTrade
from daemon.events import OrderType, Side
from tests.test_paper_venue import SYMBOLS, T0, bars, buy

RICH = PaperVenueConfig(initial_cash=1_000_000.0, fee_bps=10.0, slippage_bps=0.0)


def limit(cid: str, side: Side, qty: float, price: float,
          symbol: str = "BTC/USDT") -> OrderRequest:
    return OrderRequest(cid, symbol, side, OrderType.LIMIT, qty, limit_price=price)


def add_trigger(path: Path, table: str) -> None:
    db = sqlite3.connect(path)
    db.execute(f"CREATE TRIGGER boom_{table} BEFORE INSERT ON {table} BEGIN"
               " SELECT RAISE(ABORT, 'disk full'); END")
    db.commit()
    db.close()


def drop_trigger(path: Path, table: str) -> None:
    db = sqlite3.connect(path)
    db.execute(f"DROP TRIGGER boom_{table}")
    db.commit()
    db.close()


async def test_orders_resting_after_hundreds_of_filled_ones_match_oldest_first() -> None:
    v = PaperVenue(RICH, SYMBOLS, "USDT")
    reports: list[VenueTrade | VenueOrder] = []
    v.on_trade(reports.append)
    v.on_order(reports.append)
    v.on_bars(bars(0))
    for i in range(1, 301):
        await v.submit(buy(f"m{i}", qty=1.0))
        v.on_bars(bars(i))
    assert len(await v.trades_since(T0)) == 300 and await v.open_orders() == []
    await v.submit(limit("l1", Side.BUY, 10.0, 9.5, symbol="ETH/USDT"))
    await v.submit(limit("l2", Side.BUY, 10.0, 9.0, symbol="ETH/USDT"))
    await v.submit(limit("s1", Side.SELL, 150.0, 200.0))
    # the resting sell holds 150 of the 300 BTC: the free balance counts it
    with pytest.raises(PermanentVenueError, match=r"insufficient balance: sell=160\.0 free=150\.0"):
        await v.submit(limit("s2", Side.SELL, 160.0, 200.0))
    await v.submit(limit("s3", Side.SELL, 150.0, 201.0))
    assert [o.client_order_id for o in await v.open_orders()] == ["l1", "l2", "s1", "s3"]
    reports.clear()
    v.on_bars(bars(301, btc=200.0, eth=9.5))  # BTC high 202, ETH low 9.405
    assert [(type(r).__name__, r.client_order_id) for r in reports] == [
        ("VenueTrade", "s1"), ("VenueOrder", "s1"), ("VenueTrade", "s3"), ("VenueOrder", "s3"),
        ("VenueTrade", "l1"), ("VenueOrder", "l1")]
    assert [o.client_order_id for o in await v.open_orders()] == ["l2"]
    assert (await v.balances())["BTC"] == pytest.approx(0.0)
    # a quiet bar leaves l2 resting; one through its price fills it
    v.on_bars(bars(302, eth=9.5))
    assert [o.client_order_id for o in await v.open_orders()] == ["l2"]
    v.on_bars(bars(303, eth=8.9))
    assert await v.open_orders() == []
    assert (await v.fetch_order("l2", "ETH/USDT")).status == "closed"


async def test_a_failed_bar_leaves_its_orders_resting_for_the_next(tmp_path: Path) -> None:
    path = tmp_path / "paper.sqlite"
    v = PaperVenue(RICH, SYMBOLS, "USDT", state_path=path)
    v.on_bars(bars(0))
    for i in range(1, 21):
        await v.submit(buy(f"m{i}", qty=1.0))
        v.on_bars(bars(i))
    await v.submit(limit("rest", Side.BUY, 10.0, 9.5, symbol="ETH/USDT"))
    await v.submit(buy("mkt", qty=1.0))
    add_trigger(path, "trades")
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        v.on_bars(bars(21, eth=9.0))
    assert [o.client_order_id for o in await v.open_orders()] == ["rest", "mkt"]
    drop_trigger(path, "trades")
    v.on_bars(bars(22, eth=9.0))
    assert await v.open_orders() == []
    # bar order, then age: BTC's bar comes first
    assert [t.client_order_id for t in await v.trades_since(T0 + timedelta(hours=22))] == [
        "mkt", "rest"]


async def test_a_failed_accept_leaves_nothing_resting(tmp_path: Path) -> None:
    path = tmp_path / "paper.sqlite"
    v = PaperVenue(RICH, SYMBOLS, "USDT", state_path=path)
    v.on_bars(bars(0))
    await v.submit(buy("kept", qty=1.0))
    add_trigger(path, "submissions")
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        await v.submit(buy("lost", qty=1.0))
    drop_trigger(path, "submissions")
    assert [o.client_order_id for o in await v.open_orders()] == ["kept"]
    v.on_bars(bars(1))
    assert [t.client_order_id for t in await v.trades_since(T0)] == ["kept"]
    assert (await v.balances())["BTC"] == 1.0


async def stored_state(path: Path) -> tuple[object, ...]:
    """What a venue restarted from `path` would know."""
    again = PaperVenue(RICH, SYMBOLS, "USDT", state_path=path)
    try:
        return (await again.balances(), again.orders(), await again.trades_since(T0),
                again.markets(), again.last_bar_ts, again.submissions(), again._seq)
    finally:
        await again.close()


async def live_state(v: PaperVenue) -> tuple[object, ...]:
    return (await v.balances(), v.orders(), await v.trades_since(T0), v.markets(),
            v.last_bar_ts, v.submissions(), v._seq)


async def test_the_file_matches_memory_after_every_operation_and_failure(
        tmp_path: Path) -> None:
    """Rows are written only where they changed: a failed transaction must not leave the
    venue believing the store holds what it rolled back (the same position again after a
    failed fill would then never be written)."""
    path = tmp_path / "paper.sqlite"
    v = PaperVenue(RICH, SYMBOLS, "USDT", state_path=path)
    v.on_bars(bars(0))
    assert await stored_state(path) == await live_state(v)
    await v.submit(buy("a", qty=2.0))
    await v.submit(OrderRequest("e", "ETH/USDT", Side.BUY, OrderType.MARKET, 5.0))
    assert await stored_state(path) == await live_state(v)
    add_trigger(path, "trades")
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        v.on_bars(bars(1))  # the fills' account rows and seq were written, then rolled back
    drop_trigger(path, "trades")
    assert await stored_state(path) == await live_state(v)
    v.on_bars(bars(2))  # the same fills again: BTC 2, ETH 5, the same trade ids
    assert (await v.balances())["BTC"] == 2.0
    assert await stored_state(path) == await live_state(v)
    await v.submit(OrderRequest("s", "BTC/USDT", Side.SELL, OrderType.MARKET, 2.0))
    await v.submit(limit("rest", Side.BUY, 1.0, 50.0))
    v.on_bars(bars(3))
    assert await stored_state(path) == await live_state(v)
    await v.cancel("rest", "BTC/USDT")
    v.on_bars(bars(4))
    assert await stored_state(path) == await live_state(v)
    assert [o.status for o in v.orders()] == ["closed", "closed", "closed", "canceled"]


async def test_a_new_market_is_stored_at_once_while_nothing_rests() -> None:
    v = PaperVenue(RICH, SYMBOLS, "USDT")
    v.on_bars(bars(0)[:1])  # BTC only
    v.on_bars(bars(1))  # ETH's first bar: a new market, not a quiet bar
    assert sorted(v.markets()) == ["BTC/USDT", "ETH/USDT"]
    assert v._db.execute("SELECT symbol, last_close FROM markets ORDER BY symbol").fetchall() \
        == [("BTC/USDT", 100.0), ("ETH/USDT", 10.0)]
    await v.submit(OrderRequest("e", "ETH/USDT", Side.BUY, OrderType.MARKET, 5.0))
    v.on_bars(bars(2, eth=11.0))
    assert [(t.client_order_id, t.price) for t in await v.trades_since(T0)] == [("e", 11.0)]


async def test_a_fill_of_an_order_missing_from_the_file_writes_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "paper.sqlite"
    v = PaperVenue(RICH, SYMBOLS, "USDT", state_path=path)
    v.on_bars(bars(0))
    await v.submit(buy("a", qty=1.0))
    db = sqlite3.connect(path)
    db.execute("DELETE FROM orders WHERE client_order_id = 'a'")  # a hand edit, say
    db.commit()
    db.close()
    v.on_bars(bars(1))
    assert await stored_state(path) == await live_state(v)
