"""The paper venue: matching, refusals, and books that survive a restart in their SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.paper import PaperVenue, PaperVenueConfig
from adapters.venue import OrderNotFound, OrderRequest, PermanentVenueError, VenueTrade
from daemon.events import Bar, OrderType, Side
from daemon.settings import ConfigError

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SYMBOLS = ["BTC/USDT", "ETH/USDT"]
CFG = PaperVenueConfig(initial_cash=10_000.0, fee_bps=10.0, slippage_bps=0.0)


def bars(i: int, btc: float = 100.0, eth: float = 10.0) -> list[Bar]:
    ts = T0 + timedelta(hours=i)
    return [Bar("BTC/USDT", ts, btc, btc * 1.01, btc * 0.99, btc, 1000.0),
            Bar("ETH/USDT", ts, eth, eth * 1.01, eth * 0.99, eth, 1000.0)]


def buy(cid: str, qty: float = 10.0, symbol: str = "BTC/USDT") -> OrderRequest:
    return OrderRequest(cid, symbol, Side.BUY, OrderType.MARKET, qty)


def venue(path: Path | None = None, cfg: PaperVenueConfig = CFG) -> PaperVenue:
    return PaperVenue(cfg, SYMBOLS, "USDT", state_path=path)


async def test_market_order_fills_at_the_next_bars_open_with_fee() -> None:
    v = venue()
    trades: list[VenueTrade] = []
    v.on_trade(trades.append)
    v.on_bars(bars(0))
    view = await v.submit(buy("a"))
    assert view.status == "open" and not trades  # nothing fills at a price already seen
    v.on_bars(bars(1, btc=110.0))
    assert [(t.quantity, t.price, t.ts) for t in trades] == [(10.0, 110.0, T0 + timedelta(hours=1))]
    assert trades[0].fee == pytest.approx(10 * 110 * 0.001)
    balances = await v.balances()
    assert balances["BTC"] == 10.0
    assert balances["USDT"] == pytest.approx(10_000 - 1100 - 1.1)
    assert (await v.fetch_order("a", "BTC/USDT")).status == "closed"


async def test_refusals_say_why_and_are_logged() -> None:
    v = venue()
    with pytest.raises(PermanentVenueError, match="no market yet: BTC/USDT"):
        await v.submit(buy("early"))
    v.on_bars(bars(0))
    with pytest.raises(PermanentVenueError, match="insufficient funds: need="):
        await v.submit(buy("rich", qty=200.0))
    with pytest.raises(PermanentVenueError, match=r"FILTER_LOT_STEP quantity=1\.05"):
        await v.submit(buy("odd", qty=1.05, symbol="ETH/USDT"))  # ETH lot is 0.1 at 10
    with pytest.raises(PermanentVenueError, match="FILTER_MIN_NOTIONAL"):
        await v.submit(buy("tiny", qty=0.01))
    with pytest.raises(PermanentVenueError, match="insufficient balance: sell=1"):
        await v.submit(OrderRequest("short", "BTC/USDT", Side.SELL, OrderType.MARKET, 1.0))
    with pytest.raises(PermanentVenueError, match="invalid order: quantity=-1"):
        await v.submit(buy("neg", qty=-1.0))
    outcomes = {s.client_order_id: s.outcome for s in v.submissions()}
    assert set(outcomes) == {"early", "rich", "odd", "tiny", "short", "neg"}
    assert all(o.startswith("rejected: ") for o in outcomes.values())
    with pytest.raises(OrderNotFound):
        await v.fetch_order("rich", "BTC/USDT")  # a refused order is not an order


async def test_a_repeated_client_order_id_returns_the_same_order_and_is_logged() -> None:
    v = venue()
    v.on_bars(bars(0))
    first = await v.submit(buy("a"))
    again = await v.submit(buy("a"))
    assert again == first
    assert len(await v.open_orders()) == 1
    assert [s.outcome for s in v.submissions()] == ["accepted", "duplicate"]
    assert (await v.balances())["USDT"] == pytest.approx(10_000.0)  # one hold, not two


async def test_books_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "paper_venue.sqlite"
    v = venue(path)
    v.on_bars(bars(0))
    await v.submit(buy("filled", qty=5.0))
    v.on_bars(bars(1, btc=120.0))
    resting = await v.submit(OrderRequest("resting", "ETH/USDT", Side.BUY, OrderType.LIMIT,
                                          10.0, limit_price=5.0))
    before = (await v.balances(), await v.open_orders(), await v.trades_since(T0),
              v.markets(), v.last_bar_ts, v.submissions())
    await v.close()

    again = venue(path)
    after = (await again.balances(), await again.open_orders(), await again.trades_since(T0),
             again.markets(), again.last_bar_ts, again.submissions())
    assert after == before
    assert after[1] == [resting]
    assert again.last_bar_ts == T0 + timedelta(hours=1)
    # the buy's cash hold survived too: the resting order fills from it after the restart
    again.on_bars(bars(2, eth=4.9))
    assert (await again.fetch_order("resting", "ETH/USDT")).status == "closed"
    # trade ids keep counting from where they were
    ids = [t.trade_id for t in await again.trades_since(T0)]
    assert len(ids) == len(set(ids)) == 2


async def test_bars_at_or_before_the_last_one_seen_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "paper_venue.sqlite"
    v = venue(path)
    v.on_bars(bars(0))
    await v.submit(buy("a"))
    v.on_bars(bars(1, btc=110.0))
    await v.close()
    again = venue(path)
    again.on_bars(bars(0, btc=50.0))  # a restarted feed replaying old prices
    again.on_bars(bars(1, btc=50.0))
    assert again.stale_bars == 4
    assert again.last_bar_ts == T0 + timedelta(hours=1)
    assert [t.price for t in await again.trades_since(T0)] == [110.0]


def test_a_different_market_in_the_same_state_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "paper_venue.sqlite"
    venue(path).on_bars(bars(0))
    with pytest.raises(ConfigError, match=r"market\.symbols.*trades \['BTC/USDT', 'ETH/USDT'\]"):
        PaperVenue(CFG, ["BTC/USDT"], "USDT", state_path=path)


async def test_a_failed_commit_changes_neither_the_file_nor_memory(tmp_path: Path) -> None:
    path = tmp_path / "paper_venue.sqlite"
    v = venue(path)
    v.on_bars(bars(0))
    await v.submit(buy("a"))
    before = (await v.balances(), await v.open_orders(), v.last_bar_ts)
    # make the next trade insert fail inside the bar's transaction (a full disk, say)
    db = sqlite3.connect(path)
    db.execute("CREATE TRIGGER boom BEFORE INSERT ON trades BEGIN"
               " SELECT RAISE(ABORT, 'disk full'); END")
    db.commit()
    db.close()
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        v.on_bars(bars(1, btc=110.0))
    assert (await v.balances(), await v.open_orders(), v.last_bar_ts) == before
    assert await v.trades_since(T0) == []
    reopened = venue(path)
    assert (await reopened.balances(), await reopened.open_orders(),
            reopened.last_bar_ts) == before


async def test_with_latency_the_venue_commits_before_the_answer_arrives(tmp_path: Path) -> None:
    """The 'response lost' case: the daemon dies while the answer is on the wire."""
    path = tmp_path / "paper_venue.sqlite"
    v = venue(path, PaperVenueConfig(initial_cash=10_000.0, latency_ms=50.0))
    v.on_bars(bars(0))
    reports: list[VenueTrade] = []
    v.on_trade(reports.append)
    send = asyncio.ensure_future(v.submit(buy("a")))
    await asyncio.sleep(0.075)  # request delivered (50 ms), answer still travelling
    send.cancel()
    assert (await v.fetch_order("a", "BTC/USDT")).status == "open"
    assert venue(path).orders()[0].client_order_id == "a"  # committed to the file
    v.on_bars(bars(1))
    assert reports == []  # the fill report is on the wire
    assert len(await v.trades_since(T0)) == 1  # but the venue has the trade
    await asyncio.sleep(0.1)
    assert len(reports) == 1


async def test_in_memory_store_defers_quiet_bars_to_the_next_transaction(
        tmp_path: Path) -> None:
    def stored(v: PaperVenue) -> tuple[str | None, list[tuple[str, float]]]:
        return v._meta("last_bar_ts"), v._db.execute(
            "SELECT symbol, last_close FROM markets ORDER BY symbol").fetchall()

    mem, disk = venue(), venue(tmp_path / "paper.sqlite")
    for v in (mem, disk):
        v.on_bars(bars(0))
        v.on_bars(bars(1, btc=101.0, eth=11.0))
        v.on_bars(bars(2, btc=102.0, eth=12.0))
    # a file is written every bar (crash recovery); memory waits for a bar that changes orders
    assert stored(disk)[1] == [("BTC/USDT", 102.0), ("ETH/USDT", 12.0)]
    assert stored(mem)[1] == [("BTC/USDT", 100.0), ("ETH/USDT", 10.0)]
    # the next transaction first writes what a commit per bar would have left
    await mem.submit(buy("c1", qty=1.0))
    await disk.submit(buy("c1", qty=1.0))
    assert stored(mem) == stored(disk)
    await mem.close()
    await disk.close()
