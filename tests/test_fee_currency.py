"""Fees booked in the asset the venue charged them in: quote (paper venue, emulator default),
base (Binance's default: a buy pays in the asset received) or a third asset (BNB with Binance's
fee discount). Events, portfolio, journal (and its migration), reconciliation and the ccxt
venue's parsing; the daemon against the emulator is in test_fee_currency_e2e.py."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from adapters.binance_user_stream import parse_execution_report
from adapters.ccxt_exchange import ExchangeConfig
from adapters.ccxt_venue import CcxtVenue
from adapters.venue import OrderNotFound, VenueOrder, VenueTrade
from daemon.bus import EventBus
from daemon.events import Fill, Side
from daemon.journal import Journal
from daemon.oms import OMS, OmsConfig
from daemon.portfolio import Portfolio
from daemon.reconcile import Reconciler
from risk.market_rules import MarketRules

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SYMBOLS = ["BTC/USDT", "ETH/USDT"]
RULES = {"BTC/USDT": MarketRules("BTC/USDT", "BTC", "USDT", 1e-5, 0.01),
         "ETH/USDT": MarketRules("ETH/USDT", "ETH", "USDT", 1e-4, 0.01)}


def fill(tid: str, side: Side, qty: float, price: float, fee: float, currency: str = "",
         symbol: str = "BTC/USDT", fee_quote: float | None = None, i: int = 0) -> Fill:
    return Fill(f"c-{tid}", f"v-{tid}", tid, symbol, side, qty, price, fee,
                T0 + timedelta(minutes=i), fee_currency=currency, fee_quote=fee_quote)


# ---- events ---------------------------------------------------------------------------------

def test_fee_currency_defaults_to_quote_and_quote_value_is_derived() -> None:
    quote = fill("1", Side.SELL, 1.0, 100.0, 0.1)
    assert (quote.fee_currency, quote.fee, quote.fee_quote) == ("USDT", 0.1, 0.1)
    base = fill("2", Side.BUY, 1.0, 100.0, 0.001, "BTC")
    assert (base.fee_currency, base.fee) == ("BTC", 0.001)  # the amount stays in BTC
    assert base.fee_quote == pytest.approx(0.1)
    bnb = fill("3", Side.BUY, 1.0, 100.0, 0.0002, "BNB")
    assert (bnb.fee_currency, bnb.fee_quote) == ("BNB", None)  # nothing to value it with
    valued = fill("4", Side.BUY, 1.0, 100.0, 0.0002, "BNB", fee_quote=0.075)
    assert valued.fee_quote == 0.075
    trade = VenueTrade("5", "c", "v", "ETH/USDT", Side.BUY, 2.0, 10.0, 0.002, T0,
                       fee_currency="ETH")
    assert (trade.fee_currency, trade.fee_quote) == ("ETH", pytest.approx(0.02))
    assert VenueTrade("6", "c", "v", "ETH/USDT", Side.BUY, 2.0, 10.0, 0.02, T0).fee_currency \
        == "USDT"


# ---- portfolio ------------------------------------------------------------------------------

def test_portfolio_books_each_fee_against_the_balance_it_was_charged_in() -> None:
    p = Portfolio(quote="USDT", cash=1000.0)
    p.apply_fill(fill("1", Side.BUY, 1.0, 100.0, 0.001, "BTC"))  # Binance default on a buy
    assert p.cash == 900.0 and p.positions["BTC/USDT"] == pytest.approx(0.999)
    p.apply_fill(fill("2", Side.SELL, 0.5, 120.0, 0.06, "USDT"))  # ... and on a sell
    assert p.cash == pytest.approx(959.94) and p.positions["BTC/USDT"] == pytest.approx(0.499)
    assert p.fees_paid == pytest.approx(0.1 + 0.06)
    assert p.nav == pytest.approx(959.94 + 0.499 * 100.0)  # BTC marked at its first fill price
    assert p.fee_balances == {}


def test_third_asset_fee_is_a_separate_balance_valued_when_the_venue_valued_it() -> None:
    p = Portfolio(quote="USDT", cash=1000.0)
    p.apply_fill(fill("1", Side.BUY, 1.0, 100.0, 0.0002, "BNB", fee_quote=0.075))
    # cash and BTC move exactly as the venue's balances do: the fee came out of BNB
    assert p.cash == 900.0 and p.positions["BTC/USDT"] == 1.0
    assert p.fee_balances == {"BNB": -0.0002}
    assert p.fee_prices["BNB"] == pytest.approx(375.0)
    assert p.fees_paid == pytest.approx(0.075)
    assert p.nav == pytest.approx(900.0 + 100.0 - 0.075)


def test_third_asset_fee_without_a_price_stays_out_of_nav_and_is_logged_once() -> None:
    p = Portfolio(quote="USDT", cash=1000.0)
    with structlog.testing.capture_logs() as logs:
        p.apply_fill(fill("1", Side.BUY, 1.0, 100.0, 0.0002, "BNB"))
        p.apply_fill(fill("2", Side.BUY, 1.0, 100.0, 0.0003, "BNB", i=1))
    assert p.fee_balances == {"BNB": pytest.approx(-0.0005)}
    assert p.fees_paid == 0.0 and p.nav == pytest.approx(800.0 + 200.0)
    assert [e["event"] for e in logs].count("fee_asset_unvalued") == 1


def test_third_asset_fee_in_a_traded_base_shrinks_that_position() -> None:
    p = Portfolio(quote="USDT", cash=1000.0, symbols={"BTC/USDT", "BNB/USDT"})
    p.positions["BNB/USDT"] = 2.0
    p.apply_fill(fill("1", Side.BUY, 1.0, 100.0, 0.0002, "BNB"))
    assert p.positions["BNB/USDT"] == pytest.approx(1.9998) and p.fee_balances == {}
    p.prices["BNB/USDT"] = 300.0
    p.apply_fill(fill("2", Side.BUY, 1.0, 100.0, 0.0001, "BNB", i=1))
    assert p.positions["BNB/USDT"] == pytest.approx(1.9997)
    assert p.fees_paid == pytest.approx(0.03)  # the second one valued at BNB's own price


# ---- journal --------------------------------------------------------------------------------

def test_journal_stores_fee_currency_and_totals_per_charged_asset(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite", synchronous="OFF")
    fills = [fill("1", Side.BUY, 1.0, 100.0, 0.001, "BTC", i=0),
             fill("2", Side.SELL, 0.5, 120.0, 0.06, "USDT", i=1),
             fill("3", Side.BUY, 2.0, 10.0, 0.0001, "BNB", "ETH/USDT", fee_quote=0.03, i=2),
             fill("4", Side.BUY, 1.0, 10.0, 0.01, "", "ETH/USDT", i=3)]
    for f in fills:
        assert j.record_fill(f, at=f.ts)
    back = j.fills(oldest_first=True)
    assert back == fills
    assert [(f.fee_currency, f.fee_quote) for f in back] == [
        ("BTC", pytest.approx(0.1)), ("USDT", 0.06), ("BNB", 0.03), ("USDT", 0.01)]
    cash, quantities = j.fill_totals()
    assert cash == pytest.approx(-100.0 + 60.0 - 0.06 - 20.0 - 10.0 - 0.01)
    assert quantities == {"BTC/USDT": pytest.approx(0.499), "ETH/USDT": pytest.approx(3.0)}
    assert j.fee_asset_totals() == {"BNB": pytest.approx(0.0001)}
    j.close()


def test_an_existing_journal_gains_the_fee_currency_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    # the fills table as the previous release wrote it (source already migrated in)
    db.executescript("""
        CREATE TABLE fills (trade_id TEXT PRIMARY KEY, client_order_id TEXT NOT NULL,
            venue_order_id TEXT NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL,
            quantity REAL NOT NULL, price REAL NOT NULL, fee REAL NOT NULL, at TEXT NOT NULL,
            source TEXT NOT NULL DEFAULT 'stream');
        INSERT INTO fills VALUES ('t1', 'c1', 'v1', 'BTC/USDT', 'buy', 1.0, 100.0, 0.1,
                                  '2024-01-01T00:00:00.000000+00:00', 'stream');
    """)
    db.commit()
    db.close()
    j = Journal(path, synchronous="OFF")
    columns = {r[1]: r for r in j._db.execute("PRAGMA table_info(fills)")}
    assert columns["fee_currency"][2:5] == ("TEXT", 1, "''")
    (old,) = j.fills()
    assert (old.fee, old.fee_currency, old.fee_quote) == (0.1, "USDT", 0.1)  # '' = quote
    assert j.fill_totals() == (pytest.approx(-100.1), {"BTC/USDT": 1.0})
    j.record_fill(fill("t2", Side.SELL, 0.5, 100.0, 0.05, "USDT", i=1), at=T0)
    assert [f.fee_currency for f in j.fills(oldest_first=True)] == ["USDT", "USDT"]
    j.close()
    Journal(path, synchronous="OFF").close()  # a second open finds nothing to migrate


# ---- reconciliation -------------------------------------------------------------------------

class LedgerVenue:
    """An exchange account reduced to what reconciliation reads: balances and trades. Each
    trade moves the balances exactly as Binance would, fee from the asset it names."""

    name = "ledger"

    def __init__(self, balances: dict[str, float]) -> None:
        self.bal = dict(balances)
        self.trades: list[VenueTrade] = []

    def trade(self, t: VenueTrade) -> VenueTrade:
        base, quote = t.symbol.split("/")
        signed = t.quantity if t.side is Side.BUY else -t.quantity
        self.bal[base] = self.bal.get(base, 0.0) + signed
        self.bal[quote] = self.bal.get(quote, 0.0) - signed * t.price
        self.bal[t.fee_currency] = self.bal.get(t.fee_currency, 0.0) - t.fee
        self.trades.append(t)
        return t

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def markets(self) -> dict[str, MarketRules]: return dict(RULES)
    def on_trade(self, listener: Any) -> None: ...
    def on_order(self, listener: Any) -> None: ...
    async def balances(self) -> dict[str, float]: return dict(self.bal)
    async def open_orders(self) -> list[VenueOrder]: return []
    async def trades_since(self, since: datetime) -> list[VenueTrade]: return list(self.trades)

    async def fetch_order(self, client_order_id: str, symbol: str) -> VenueOrder:
        raise OrderNotFound(client_order_id)


class Core:
    def __init__(self, state: Path, venue: LedgerVenue) -> None:
        self.venue = venue
        self.journal = Journal(state / "journal.sqlite", synchronous="OFF")
        self.bus = EventBus()
        self.portfolio = Portfolio(quote="USDT", cash=0.0)
        self.bus.subscribe("portfolio", {Fill: self.portfolio.apply_fill})
        self.config = OmsConfig(reconcile_interval_s=0)
        self.oms = OMS(self.bus, self.journal, venue, config=self.config,  # type: ignore[arg-type]
                       seed=1)
        self.reconciler = Reconciler(self.oms, self.journal, venue,  # type: ignore[arg-type]
                                     self.portfolio, self.bus, self.config, "USDT", SYMBOLS,
                                     confirm_delay_s=0.0)

    async def start(self) -> None:
        await self.bus.start()
        await self.reconciler.start()

    async def book(self, *trades: VenueTrade) -> None:
        for t in trades:
            self.oms.apply_trade(self.venue.trade(t))
        await self.bus.settle()

    async def stop(self) -> None:
        await self.bus.stop()
        self.journal.close()


def trade(tid: str, symbol: str, side: Side, qty: float, price: float, fee: float,
          currency: str, i: int) -> VenueTrade:
    return VenueTrade(tid, f"c-{tid}", f"v-{tid}", symbol, side, qty, price, fee,
                      T0 + timedelta(minutes=i), fee_currency=currency)


TRADES = [trade("1", "BTC/USDT", Side.BUY, 0.5, 40_000.0, 0.0005, "BTC", 0),
          trade("2", "ETH/USDT", Side.BUY, 3.0, 2_000.0, 0.003, "ETH", 1),
          trade("3", "BTC/USDT", Side.SELL, 0.2, 41_000.0, 8.2, "USDT", 2),
          trade("4", "ETH/USDT", Side.SELL, 1.0, 2_100.0, 0.0021, "BNB", 3)]


async def test_reconciliation_agrees_with_base_and_third_asset_fees(tmp_path: Path) -> None:
    venue = LedgerVenue({"USDT": 50_000.0, "BNB": 1.0})
    core = Core(tmp_path, venue)
    await core.start()
    assert core.journal.opening_balances() == {"USDT": 50_000.0, "BTC": 0.0, "ETH": 0.0,
                                               "BNB": 1.0}
    await core.book(*TRADES)
    report = await core.reconciler.reconcile("periodic")
    assert report.ok, report.describe()
    p = core.portfolio
    assert p.positions == {"BTC/USDT": pytest.approx(0.2995, abs=1e-12),
                           "ETH/USDT": pytest.approx(1.997, abs=1e-12)}
    assert p.cash == pytest.approx(venue.bal["USDT"], abs=1e-9)
    assert p.fee_balances == {"BNB": pytest.approx(-0.0021, abs=1e-15)}
    await core.stop()

    # a restart rebuilds the same book from the journal and finds it square with the venue
    again = Core(tmp_path, venue)
    await again.start()
    assert again.reconciler.reports[-1].ok, again.reconciler.reports[-1].describe()
    assert again.portfolio.positions == p.positions and again.portfolio.cash == p.cash
    assert again.portfolio.fee_balances == p.fee_balances
    await again.stop()


async def test_a_base_fee_booked_in_quote_is_a_mismatch(tmp_path: Path) -> None:
    """What the ccxt venue used to do (BTC fee converted to USDT at the fill price) leaves the
    cash/position split off by the fee: a lot of BTC here, beyond half a lot."""
    venue = LedgerVenue({"USDT": 50_000.0})
    core = Core(tmp_path, venue)
    await core.start()
    real = trade("1", "BTC/USDT", Side.BUY, 0.5, 40_000.0, 0.0005, "BTC", 0)
    venue.trade(real)
    core.oms.apply_trade(VenueTrade(real.trade_id, real.client_order_id, real.venue_order_id,
                                    real.symbol, real.side, real.quantity, real.price,
                                    real.fee * real.price, real.ts))  # converted, as before
    await core.bus.settle()
    report = await core.reconciler.reconcile("periodic")
    assert {m.asset for m in report.mismatches} == {"USDT", "BTC"}
    assert core.oms.halted_reason is not None and "RECONCILE_MISMATCH" in core.oms.halted_reason
    await core.stop()


async def test_a_third_asset_fee_the_journal_lacks_is_a_mismatch(tmp_path: Path) -> None:
    venue = LedgerVenue({"USDT": 50_000.0, "BNB": 1.0})
    core = Core(tmp_path, venue)
    await core.start()
    await core.book(TRADES[1], TRADES[3])
    venue.bal["BNB"] -= 0.0001  # a fee the journal never saw
    report = await core.reconciler.reconcile("periodic")
    (m,) = report.mismatches
    assert (m.asset, m.journal, m.venue) == ("BNB", pytest.approx(0.9979),
                                             pytest.approx(0.9978))
    assert core.oms.halted_reason is not None
    await core.stop()


# ---- ccxt venue and user stream: passed through exactly -------------------------------------

def ccxt_venue() -> CcxtVenue:
    venue = CcxtVenue(ExchangeConfig(), SYMBOLS, "USDT", environ={})
    venue._rules = dict(RULES)
    return venue


def ccxt_trade(**fields: Any) -> dict[str, Any]:
    return {"id": "9", "order": "42", "symbol": "BTC/USDT", "side": "buy", "amount": 0.01,
            "price": 30_000.0, "timestamp": 1_700_000_000_000, **fields}


def test_ccxt_trade_fee_is_passed_through_in_its_currency() -> None:
    venue = ccxt_venue()
    base = venue._venue_trade(ccxt_trade(fee={"cost": 0.00001, "currency": "BTC"}), "c")
    assert (base.fee, base.fee_currency, base.fee_quote) == (0.00001, "BTC", pytest.approx(0.3))
    listed = venue._venue_trade(ccxt_trade(
        fee={"cost": 0.3, "currency": "USDT"}, fees=[{"cost": 0.3, "currency": "USDT"}]), "c")
    assert (listed.fee, listed.fee_currency, listed.fee_quote) == (0.3, "USDT", 0.3)
    bnb = venue._venue_trade(ccxt_trade(fee={"cost": 0.0008, "currency": "BNB"}), "c")
    assert (bnb.fee, bnb.fee_currency, bnb.fee_quote) == (0.0008, "BNB", None)
    rated = venue._venue_trade(ccxt_trade(
        fees=[{"cost": 0.0008, "currency": "BNB", "rate": 0.00075}]), "c")
    assert rated.fee_quote == pytest.approx(300.0 * 0.00075)  # notional x the reported rate
    free = venue._venue_trade(ccxt_trade(fee={"cost": 0.0, "currency": "BNB"}), "c")
    assert (free.fee, free.fee_currency) == (0.0, "USDT")
    assert venue.counters["fees_in_base"] == 1 and venue.counters["fees_in_other_asset"] == 2


def test_execution_report_commission_is_passed_through_in_its_asset() -> None:
    base = {"e": "executionReport", "E": 1_700_000_000_000, "s": "BTCUSDT", "c": "td-1",
            "C": "", "S": "BUY", "o": "MARKET", "q": "0.01", "p": "0", "X": "FILLED",
            "x": "TRADE", "i": 42, "l": "0.01", "L": "30000.00", "z": "0.01", "Z": "300.00",
            "T": 1_700_000_000_000, "t": 7}

    def symbol_of(market_id: str) -> str | None:
        return {"BTCUSDT": "BTC/USDT"}.get(market_id)

    bnb = parse_execution_report({**base, "n": "0.00075000", "N": "BNB"}, symbol_of).trade
    assert bnb is not None and (bnb.fee, bnb.fee_currency, bnb.fee_quote) == (0.00075, "BNB",
                                                                              None)
    none = parse_execution_report({**base, "n": "0", "N": None}, symbol_of).trade
    assert none is not None and (none.fee, none.fee_currency) == (0.0, "USDT")


# ---- the rebalancer's fee rate in testnet mode ----------------------------------------------

def test_ccxt_taker_fee_is_the_highest_of_our_markets_else_none() -> None:
    venue = ccxt_venue()
    assert venue.taker_fee_rate() is None  # no markets loaded
    venue.exchange = type("Ex", (), {"markets": {"BTC/USDT": {"taker": 0.00075},
                                                 "ETH/USDT": {"taker": 0.001},
                                                 "XRP/USDT": {"taker": 0.5}}})()
    assert venue.taker_fee_rate() == 0.001
    venue.exchange.markets = {"BTC/USDT": {"taker": None}}
    assert venue.taker_fee_rate() is None


def test_testnet_mode_plans_with_exchange_fee_bps_until_the_venue_says(tmp_path: Path) -> None:
    from daemon.app import Daemon
    from daemon.config import parse_config

    cfg = parse_config(f"""
[daemon]
mode = "testnet"
state_dir = "{tmp_path}"
[market]
symbols = ["BTC/USDT", "ETH/USDT"]
[venue.paper]
fee_bps = 1.0
[exchange]
fee_bps = 25.0
""")
    daemon = Daemon(cfg)
    try:
        assert daemon.rebalancer.fee_rate == pytest.approx(0.0025)  # not the paper venue's
    finally:
        daemon.journal.close()
