"""Start-up and periodic reconciliation: the journal squared with a real, file-backed PaperVenue
after the daemon died at the worst moments; a view that cannot be squared halts trading."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.paper import PaperVenue, PaperVenueConfig
from adapters.venue import OrderRequest
from daemon.app import Daemon
from daemon.bus import EventBus
from daemon.config import Config, parse_config
from daemon.events import Bar, Event, Fill, OrderApproved, OrderIntent, OrderType, Side
from daemon.journal import Journal
from daemon.oms import OMS, OmsConfig
from daemon.order_state import OrderState
from daemon.portfolio import Portfolio
from daemon.reconcile import Reconciler

S = OrderState
T0 = datetime(2024, 1, 1, tzinfo=UTC)
SYMBOLS = ["BTC/USDT", "ETH/USDT"]
PAPER = PaperVenueConfig(initial_cash=10_000.0, slippage_bps=0.0)


def bars(i: int, btc: float = 100.0, eth: float = 10.0) -> list[Bar]:
    ts = T0 + timedelta(hours=i)
    return [Bar("BTC/USDT", ts, btc, btc * 1.01, btc * 0.99, btc, 1000.0),
            Bar("ETH/USDT", ts, eth, eth * 1.01, eth * 0.99, eth, 1000.0)]


def intent(cid: str, qty: float = 1.0, symbol: str = "BTC/USDT",
           limit: float | None = None) -> OrderIntent:
    return OrderIntent(cid, symbol, Side.BUY, qty, OrderType.LIMIT if limit else OrderType.MARKET,
                       reference_price=100.0, ts=T0, limit_price=limit, decision_id="000001")


def request(i: OrderIntent) -> OrderRequest:
    return OrderRequest(i.client_order_id, i.symbol, i.side, i.order_type, i.quantity,
                        i.limit_price)


class Process:
    """One life of the daemon's core on a state directory; `crash` drops it like kill -9."""

    def __init__(self, state: Path, config: OmsConfig | None = None,
                 now: datetime | None = None) -> None:
        self.venue = PaperVenue(PAPER, SYMBOLS, "USDT", state_path=state / "paper.sqlite")
        self.journal = Journal(state / "journal.sqlite")
        self.bus = EventBus()
        self.events: list[Event] = []
        self.bus.subscribe("recorder", {Event: self.events.append})
        self.portfolio = Portfolio(quote="USDT", cash=0.0)
        self.bus.subscribe("portfolio", {Fill: self.portfolio.apply_fill})
        self.config = config or OmsConfig(reconcile_interval_s=0)
        clock = (lambda: now) if now is not None else None
        self.oms = OMS(self.bus, self.journal, self.venue, config=self.config, seed=1,
                       **({"clock": clock} if clock else {}))
        self.reconciler = Reconciler(self.oms, self.journal, self.venue, self.portfolio,
                                     self.bus, self.config, "USDT", SYMBOLS,
                                     **({"clock": clock} if clock else {}),
                                     confirm_delay_s=0.0)

    async def start(self) -> None:
        await self.bus.start()
        await self.reconciler.start()

    async def send(self, *intents: OrderIntent) -> None:
        for i in intents:
            await self.oms.on_approved(OrderApproved(i, T0))
        await self.bus.settle()

    async def crash(self) -> None:
        await self.reconciler.stop()
        for sub in self.bus.subscribers:
            if sub.task is not None:
                sub.task.cancel()
        self.journal.close()
        self.venue._db.close()

    async def stop(self) -> None:
        await self.reconciler.stop()
        await self.oms.stop()
        await self.bus.stop()
        await self.venue.close()
        self.journal.close()

    def resolved(self, cid: str) -> list[Any]:
        return [d["outcome"] for _, k, d in self.journal.order_events(cid) if k == "RESOLVED"]


async def balances_of(p: Portfolio) -> dict[str, float]:
    return {"USDT": p.cash, **{s.split("/")[0]: p.positions.get(s, 0.0) for s in SYMBOLS}}


async def test_first_start_records_opening_balances(tmp_path: Path) -> None:
    p = Process(tmp_path)
    await p.start()
    assert p.journal.opening_balances() == {"USDT": 10_000.0, "BTC": 0.0, "ETH": 0.0}
    assert p.portfolio.cash == 10_000.0
    report = p.reconciler.reports[-1]
    assert report.kind == "startup" and report.ok
    assert p.journal.reconciliations()[0][1:3] == ("startup", True)
    await p.stop()


async def test_after_a_restart_the_portfolio_equals_the_venue(tmp_path: Path) -> None:
    p = Process(tmp_path)
    await p.start()
    p.venue.on_bars(bars(0))
    await p.send(intent("a", qty=3.0), intent("b", qty=50.0, symbol="ETH/USDT"))
    p.venue.on_bars(bars(1, btc=110.0, eth=11.0))
    await p.bus.settle()
    await p.stop()

    again = Process(tmp_path)
    await again.start()
    venue = await again.venue.balances()
    assert await balances_of(again.portfolio) == pytest.approx(venue, abs=1e-9)
    assert venue["BTC"] == 3.0 and venue["ETH"] == 50.0
    assert again.reconciler.reports[-1].ok
    await again.stop()


async def test_a_lost_answer_is_found_at_start_up_and_not_resent(tmp_path: Path) -> None:
    p = Process(tmp_path)
    await p.start()
    p.venue.on_bars(bars(0))
    a = intent("a", limit=50.0)
    # died after the venue committed the order, before the journal heard the answer
    p.journal.record_intent(a, S.PENDING_NEW, datetime.now(UTC))
    await p.venue.submit(request(a))
    await p.crash()

    again = Process(tmp_path)
    await again.start()
    assert again.oms.orders["a"].state is S.ACCEPTED
    assert again.resolved("a") == ["found"]
    assert [s.outcome for s in again.venue.submissions()] == ["accepted"]
    assert again.reconciler.reports[-1].unknown_found == 1
    await again.stop()


async def test_an_order_that_never_left_is_resent_if_recent_else_expired(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    p = Process(tmp_path)
    await p.start()
    p.venue.on_bars(bars(0))
    # died between the journal commit and the venue call
    p.journal.record_intent(intent("fresh"), S.PENDING_NEW, now - timedelta(seconds=5))
    p.journal.record_intent(intent("stale", symbol="ETH/USDT", qty=5.0), S.PENDING_NEW,
                            now - timedelta(hours=2))
    await p.crash()

    again = Process(tmp_path, OmsConfig(reconcile_interval_s=0, resend_max_age_s=300), now=now)
    await again.start()
    assert again.resolved("fresh") == ["not_found"] == again.resolved("stale")
    assert again.oms.orders["fresh"].state is S.ACCEPTED
    assert [(s.client_order_id, s.outcome) for s in again.venue.submissions()] == [
        ("fresh", "accepted")]  # sent once, with its original id
    stale = again.journal.order("stale")
    assert stale.state == "EXPIRED"
    assert stale.reason.startswith("NOT_SENT the venue never received it and it is older than")
    report = again.reconciler.reports[-1]
    assert (report.unknown_resent, report.unknown_expired, report.ok) == (1, 1, True)
    await again.stop()


async def test_fills_missed_while_down_are_booked_through_the_oms(tmp_path: Path) -> None:
    p = Process(tmp_path)
    await p.start()
    p.venue.on_bars(bars(0))
    await p.send(intent("a", qty=2.0), intent("b", qty=30.0, symbol="ETH/USDT"))
    await p.crash()
    # the market moves on while the daemon is down: the venue fills both orders
    down = PaperVenue(PAPER, SYMBOLS, "USDT", state_path=tmp_path / "paper.sqlite")
    down.on_bars(bars(1, btc=120.0, eth=12.0))
    down._db.close()

    again = Process(tmp_path)
    await again.start()
    assert {c: again.oms.orders[c].state for c in ("a", "b")} == {"a": S.FILLED,
                                                                  "b": S.FILLED}
    assert again.journal.counts()["fills_found_by_query"] == 2
    assert again.reconciler.reports[-1].missed_fills == 2
    assert sorted(e.client_order_id for e in again.events if isinstance(e, Fill)) == ["a", "b"]
    assert again.portfolio.positions == {"BTC/USDT": 2.0, "ETH/USDT": 30.0}
    assert await balances_of(again.portfolio) == pytest.approx(
        await again.venue.balances(), abs=1e-9)
    await again.stop()


async def test_an_order_that_filled_while_unknown_is_resolved_by_its_trade(tmp_path: Path
                                                                           ) -> None:
    p = Process(tmp_path)
    await p.start()
    p.venue.on_bars(bars(0))
    a = intent("a", qty=2.0)
    p.journal.record_intent(a, S.PENDING_NEW, datetime.now(UTC))
    await p.venue.submit(request(a))
    p.venue._trade_listeners.clear()
    p.venue._order_listeners.clear()
    p.venue.on_bars(bars(1))  # filled, the reports lost with the process
    await p.crash()

    again = Process(tmp_path)
    await again.start()
    assert again.oms.orders["a"].state is S.FILLED
    assert again.resolved("a") == ["trade"]
    assert again.portfolio.positions == {"BTC/USDT": 2.0}
    await again.stop()


@pytest.mark.parametrize("policy", ["cancel", "adopt", "halt"])
async def test_open_orders_the_journal_does_not_know(tmp_path: Path, policy: str) -> None:
    p = Process(tmp_path)
    await p.start()
    p.venue.on_bars(bars(0))
    await p.venue.submit(request(intent("manual", limit=50.0)))  # placed by hand
    await p.stop()

    again = Process(tmp_path, OmsConfig(reconcile_interval_s=0, unknown_order_policy=policy))
    await again.start()
    report = again.reconciler.reports[-1]
    assert report.foreign_orders == ["manual"] and report.foreign_action == policy
    status = (await again.venue.fetch_order("manual", "BTC/USDT")).status
    if policy == "cancel":
        assert status == "canceled" and report.ok and again.oms.halted_reason is None
    elif policy == "adopt":
        assert status == "open" and report.ok
        assert again.oms.orders["manual"].state is S.ACCEPTED
        assert again.journal.order("manual").decision_id == "adopted"
        assert again.oms.working_quantity() == {"BTC/USDT": 1.0}
    else:
        assert status == "open" and not report.ok
        assert again.oms.halted_reason.startswith("RECONCILE_MISMATCH UNKNOWN_ORDER manual buy")
    await again.stop()


async def test_a_position_mismatch_halts_trading_with_a_report(tmp_path: Path) -> None:
    p = Process(tmp_path)
    await p.start()
    p.venue.on_bars(bars(0))
    await p.send(intent("a", qty=2.0))
    p.venue.on_bars(bars(1))
    await p.bus.settle()
    await p.stop()
    # the venue's books change behind the journal's back: a transfer out, say
    v = PaperVenue(PAPER, SYMBOLS, "USDT", state_path=tmp_path / "paper.sqlite")
    v.positions["BTC/USDT"] -= 0.5
    with v._tx() as db:
        v._write_account(db)
    v._db.close()

    again = Process(tmp_path)
    await again.start()
    report = again.reconciler.reports[-1]
    assert [(m.asset, m.journal, m.venue) for m in report.mismatches] == [("BTC", 2.0, 1.5)]
    assert again.oms.halted_reason == (
        "RECONCILE_MISMATCH BTC journal=2 venue=1.5 difference=-0.5 tolerance=0.005")
    assert not again.journal.reconciliations()[0][2]
    await again.send(intent("b"))
    assert again.journal.order("b") is None  # no trading on a wrong view
    await again.stop()


async def test_an_order_terminal_in_the_journal_but_open_at_the_venue_halts(tmp_path: Path
                                                                            ) -> None:
    p = Process(tmp_path)
    await p.start()
    p.venue.on_bars(bars(0))
    await p.send(intent("a", limit=50.0))
    p.journal.record_state("a", S.CANCELLED, datetime.now(UTC), reason="tampered")
    await p.crash()
    again = Process(tmp_path)
    await again.start()
    assert again.oms.halted_reason.startswith(
        "RECONCILE_MISMATCH ORDER_STATE_DISAGREES a is CANCELLED in the journal but open")
    await again.stop()


async def test_periodic_reconciliation_runs_and_stops(tmp_path: Path) -> None:
    p = Process(tmp_path, OmsConfig(reconcile_interval_s=0.01))
    await p.start()
    p.venue.on_bars(bars(0))
    await p.send(intent("a", qty=2.0))
    p.venue._trade_listeners.clear()  # the stream goes quiet: the fill can only be found
    p.venue._order_listeners.clear()
    p.venue.on_bars(bars(1))
    for _ in range(500):
        if p.oms.orders["a"].state is S.FILLED:
            break
        await asyncio.sleep(0.01)
    assert p.oms.orders["a"].state is S.FILLED
    assert any(r.kind == "periodic" and r.missed_fills == 1 for r in p.reconciler.reports)
    await p.reconciler.stop()
    assert p.reconciler._task is None
    await p.stop()


# -- the daemon: restart resumes the market where the venue left it -------------------------
FAST = """
[daemon]
state_dir = "{state}"
log_level = "warning"
[http]
enabled = false
[market]
symbols = ["BTC/USDT", "ETH/USDT", "BNB/USDT"]
[market.simulated]
seed = 11
speed = 0.0
[rebalance]
band = 0.02
solver = "thread"
[allocation]
lookback_bars = 30
min_history_bars = 20
method = "inverse_volatility"
[risk]
var_min_bars = 20
"""


class RecordingPaper(PaperVenue):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.offered: list[datetime] = []

    def on_bars(self, bars: list[Bar]) -> None:
        self.offered.append(bars[0].ts)
        super().on_bars(bars)


def daemon_for(cfg: Config) -> Daemon:
    venue = RecordingPaper(cfg.venue.paper, list(cfg.market.symbols), cfg.market.quote,
                           state_path=cfg.state_path / "paper_venue.sqlite")
    return Daemon(cfg, venue=venue)


async def test_a_restarted_daemon_resumes_after_the_last_bar_the_venue_saw(tmp_path: Path
                                                                           ) -> None:
    cfg = parse_config(FAST.format(state=tmp_path / "state"))
    first = daemon_for(cfg)
    summary = await first.run(max_bars=120)
    assert summary.fills > 0
    last = first.venue.last_bar_ts
    assert last == datetime(2022, 1, 1, tzinfo=UTC) + timedelta(hours=119)

    second = daemon_for(cfg)
    summary2 = await second.run(max_bars=50)
    offered = second.venue.offered
    assert offered[0] == last + timedelta(hours=1)  # the next bar, never an old one
    assert offered == sorted(offered) and len(offered) == 50 == summary2.bars_per_symbol
    assert second.venue.stale_bars == 0
    # warm-up: the estimators saw the last lookback bars again, so it could trade at once
    assert second.rebalancer.bars_seen >= (30 + 1 + 50) * 3
    # and after all that the portfolio still equals the venue's books
    venue = await second.venue.balances()
    p = second.portfolio
    assert p.cash == pytest.approx(venue["USDT"], abs=0.01)
    for s in cfg.market.symbols:
        assert p.positions.get(s, 0.0) == pytest.approx(venue[s.split("/")[0]], abs=1e-9)
    assert all(ok for _, _, ok, _ in Journal(cfg.state_path / "journal.sqlite")
               .reconciliations())


async def test_a_fresh_state_starts_the_market_at_its_first_bar(tmp_path: Path) -> None:
    cfg = parse_config(FAST.format(state=tmp_path / "state"))
    d = daemon_for(cfg)
    await d.run(max_bars=3)
    assert d.resume_after is None
    assert d.venue.offered == [datetime(2022, 1, 1, tzinfo=UTC) + timedelta(hours=i)
                               for i in range(3)]
