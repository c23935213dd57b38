"""The OMS against a real PaperVenue behind a faulty network: write-ahead, every error class,
UNKNOWN resolution, retries with the same client order id, duplicate fills, cancels, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.paper import PaperVenue, PaperVenueConfig
from adapters.venue import (
    AuthenticationVenueError,
    OrderNotFound,
    OrderRequest,
    TransientVenueError,
    VenueError,
    VenueOrder,
)
from daemon.bus import EventBus
from daemon.events import (
    Bar,
    Event,
    Fill,
    OrderAccepted,
    OrderApproved,
    OrderCancelled,
    OrderIntent,
    OrderRejected,
    OrderType,
    Side,
)
from daemon.journal import Journal
from daemon.oms import OMS, OmsConfig, RetryConfig
from daemon.order_state import OrderState
from tests.venue_faults import DROP, LOSE, FaultyNetwork

S = OrderState
T0 = datetime(2024, 1, 1, tzinfo=UTC)
SYMBOLS = ["BTC/USDT", "ETH/USDT"]


def bars(i: int, btc: float = 100.0, eth: float = 10.0) -> list[Bar]:
    ts = T0 + timedelta(hours=i)
    return [Bar("BTC/USDT", ts, btc, btc * 1.01, btc * 0.99, btc, 1000.0),
            Bar("ETH/USDT", ts, eth, eth * 1.01, eth * 0.99, eth, 1000.0)]


def intent(cid: str, qty: float = 1.0, side: Side = Side.BUY, symbol: str = "BTC/USDT",
           limit: float | None = None) -> OrderIntent:
    return OrderIntent(cid, symbol, side, qty, OrderType.LIMIT if limit else OrderType.MARKET,
                       reference_price=100.0, ts=T0, limit_price=limit, decision_id="000001")


class Rig:
    def __init__(self, tmp_path: Path, retry: RetryConfig, config: OmsConfig) -> None:
        self.paper = PaperVenue(PaperVenueConfig(initial_cash=10_000.0, slippage_bps=0.0),
                                SYMBOLS, "USDT")
        self.venue = FaultyNetwork(self.paper)
        self.bus = EventBus()
        self.journal = Journal(tmp_path / "journal.sqlite")
        self.events: list[Event] = []
        self.bus.subscribe("recorder", {Event: self.events.append})
        self.sleeps: list[float] = []
        self.oms = OMS(self.bus, self.journal, self.venue, retry, seed=7, config=config,
                       sleep=self.sleep)
        self.venue.on_bars(bars(0))

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)  # no real waiting in unit tests
        await asyncio.sleep(0)

    async def send(self, *intents: OrderIntent) -> None:
        for i in intents:
            await self.oms.on_approved(OrderApproved(i, T0))
        await self.bus.settle()

    def states(self, cid: str) -> list[str]:
        return [kind for _, kind, _ in self.journal.order_events(cid)]

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path, RetryConfig(max_attempts=3, base_delay_s=0.25, max_delay_s=8.0),
            OmsConfig())
    await r.bus.start()
    yield r
    await r.bus.stop()
    r.journal.close()


# -- write-ahead and the happy path -------------------------------------------------------
async def test_order_is_journaled_before_the_venue_is_called(rig: Rig) -> None:
    seen: list[tuple[str, str | None]] = []

    def check(order: OrderRequest) -> None:
        row = rig.journal.order(order.client_order_id)
        seen.append((order.client_order_id, row.state if row else None))

    rig.venue.before_submit = check
    await rig.send(intent("a"))
    assert seen == [("a", "PENDING_NEW")]
    assert rig.states("a") == ["PENDING_NEW", "ACCEPTED"]
    assert rig.journal.order("a").venue_order_id == rig.paper.orders()[0].venue_order_id
    assert len(rig.of(OrderAccepted)) == 1


async def test_fills_are_journaled_with_their_order_and_reach_the_bus(rig: Rig) -> None:
    await rig.send(intent("a", qty=2.0))
    rig.venue.on_bars(bars(1, btc=101.0))
    await rig.bus.settle()
    assert rig.states("a") == ["PENDING_NEW", "ACCEPTED", "FILLED"]
    row = rig.journal.order("a")
    assert (row.state, row.filled, row.average_price) == ("FILLED", 2.0, 101.0)
    fills = rig.of(Fill)
    assert [(f.quantity, f.price) for f in fills] == [(2.0, 101.0)]
    assert rig.oms.working() == []


async def test_a_partial_fill_then_venue_cancel_walks_the_states(rig: Rig) -> None:
    # 95 BTC is affordable at 100 with the hold, not after the price doubles: the venue fills
    # what the cash covers and cancels the rest
    await rig.send(intent("a", qty=95.0))
    rig.venue.on_bars(bars(1, btc=200.0))
    await rig.bus.settle()
    assert rig.states("a") == ["PENDING_NEW", "ACCEPTED", "PARTIALLY_FILLED", "CANCELLED"]
    row = rig.journal.order("a")
    assert 0 < row.filled < 95.0
    assert row.filled == sum(f.quantity for f in rig.journal.fills("a"))
    assert len(rig.of(OrderCancelled)) == 1


# -- transient errors: UNKNOWN, ask, and only then resend -------------------------------
async def test_a_request_that_never_arrived_is_resent_with_the_same_id(rig: Rig) -> None:
    rig.venue.script("submit", DROP)
    await rig.send(intent("a"))
    assert rig.states("a") == ["PENDING_NEW", "UNKNOWN", "RESOLVED", "PENDING_NEW", "ACCEPTED"]
    resolved = [d for _, k, d in rig.journal.order_events("a") if k == "RESOLVED"]
    assert resolved[0]["outcome"] == "not_found"
    assert [(s.client_order_id, s.outcome) for s in rig.paper.submissions()] == [
        ("a", "accepted")]
    assert rig.venue.calls["submit"] == 2 and rig.venue.calls["fetch_order"] == 1
    assert rig.oms.stats["resent"] == 1


async def test_a_lost_answer_is_adopted_never_resent(rig: Rig) -> None:
    rig.venue.script("submit", LOSE)
    await rig.send(intent("a"))
    assert rig.states("a") == ["PENDING_NEW", "UNKNOWN", "RESOLVED", "ACCEPTED"]
    assert rig.venue.calls["submit"] == 1  # the venue has it: asking was enough
    assert [s.outcome for s in rig.paper.submissions()] == ["accepted"]
    assert rig.journal.order("a").venue_order_id == "P1"


async def test_an_order_filled_while_its_answer_was_lost_books_its_trades(rig: Rig) -> None:
    # the answer is lost and, before the OMS asks, the next bar fills the order and its trade
    # report is lost too: asking finds it closed, and its trades are fetched
    async def fill_then_wait(seconds: float) -> None:
        rig.paper._trade_listeners.clear()  # the stream drops the report
        rig.paper._order_listeners.clear()
        rig.venue.on_bars(bars(1, btc=105.0))
        await asyncio.sleep(0)

    rig.oms._sleep = fill_then_wait
    rig.venue.script("submit", LOSE)
    await rig.send(intent("a", qty=3.0))
    assert rig.states("a") == ["PENDING_NEW", "UNKNOWN", "RESOLVED", "FILLED"]
    fills = rig.journal.fills("a")
    assert [(f.quantity, f.price) for f in fills] == [(3.0, 105.0)]
    assert rig.journal.counts()["fills_found_by_query"] == 1
    assert [f.trade_id for f in rig.of(Fill)] == [fills[0].trade_id]


async def test_retries_stop_after_max_attempts_with_the_venue_confirming(rig: Rig) -> None:
    rig.venue.script("submit", DROP, DROP, DROP)
    await rig.send(intent("a"))
    row = rig.journal.order("a")
    assert row.state == "REJECTED"
    assert row.reason.startswith("VENUE_UNREACHABLE attempts=3: the venue confirms it never")
    assert rig.paper.submissions() == []
    assert rig.venue.calls["submit"] == 3
    rejected = rig.of(OrderRejected)
    assert len(rejected) == 1 and "VENUE_UNREACHABLE" in rejected[0].reason


async def test_an_order_the_venue_cannot_be_asked_about_stays_unknown(rig: Rig) -> None:
    rig.venue.script("submit", LOSE)
    rig.venue.script("fetch_order", DROP, DROP, DROP)
    await rig.send(intent("a", qty=2.0))
    order = rig.oms.orders["a"]
    assert order.state is S.UNKNOWN
    assert rig.venue.calls["submit"] == 1  # never resent without an answer
    assert rig.oms.working_quantity() == {"BTC/USDT": 2.0}  # still counted: it may be live
    # later (the reconciler) it is resolved from what the venue says
    assert await rig.oms.resolve_unknown(order, resend=True) == "found"
    assert order.state is S.ACCEPTED
    assert rig.venue.calls["submit"] == 1


async def test_retry_after_is_honoured_and_backoff_is_capped_with_jitter(rig: Rig) -> None:
    rig.venue.script("submit", TransientVenueError("HTTP 429 too many requests",
                                                   retry_after=30.0))
    await rig.send(intent("a"))
    assert rig.sleeps == [30.0]
    assert rig.oms.orders["a"].state is S.ACCEPTED
    for attempt in range(1, 12):
        step = min(0.25 * 2 ** (attempt - 1), 8.0)
        delays = {rig.oms.backoff(attempt) for _ in range(50)}
        assert all(step / 2 <= d <= step for d in delays)
        assert len(delays) > 1  # jittered
    assert rig.oms.backoff(1, retry_after=2.5) == 2.5


async def test_an_unclassified_venue_error_is_treated_as_unknown(rig: Rig) -> None:
    rig.venue.script("submit", VenueError("502 bad gateway"))
    await rig.send(intent("a"))
    # it may have reached the venue: ask before anything else (here it had not)
    assert rig.states("a") == ["PENDING_NEW", "UNKNOWN", "RESOLVED", "PENDING_NEW", "ACCEPTED"]
    assert rig.journal.order_events("a")[1][2] == {
        "reason": "VENUE_ERROR attempt=1: 502 bad gateway"}
    assert rig.oms.orders["a"].state is S.ACCEPTED


async def test_one_orders_backoff_does_not_hold_up_another(rig: Rig) -> None:
    gate = asyncio.Event()

    async def slow_sleep(seconds: float) -> None:
        await gate.wait()

    rig.oms._sleep = slow_sleep
    rig.venue.script("submit", DROP)
    await rig.oms.on_approved(OrderApproved(intent("slow"), T0))
    await rig.oms.on_approved(OrderApproved(intent("fast", symbol="ETH/USDT", qty=5.0), T0))
    for _ in range(20):
        await asyncio.sleep(0)
    assert rig.oms.orders["slow"].state is S.UNKNOWN  # waiting out its backoff
    assert rig.oms.orders["fast"].state is S.ACCEPTED
    gate.set()
    await rig.bus.settle()
    assert rig.oms.orders["slow"].state is S.ACCEPTED


# -- permanent errors: reported, never retried ---------------------------------------------
@pytest.mark.parametrize(("order", "reason"), [
    (intent("rich", qty=500.0), "VENUE_REJECTED insufficient funds: need="),
    (intent("odd", qty=1.05, symbol="ETH/USDT"), "VENUE_REJECTED FILTER_LOT_STEP quantity=1.05"),
    (intent("tiny", qty=0.01), "VENUE_REJECTED FILTER_MIN_NOTIONAL"),
    (intent("short", side=Side.SELL), "VENUE_REJECTED insufficient balance: sell=1.0"),
])
async def test_permanent_errors_reject_with_the_venues_reason(rig: Rig, order: OrderIntent,
                                                              reason: str) -> None:
    await rig.send(order)
    row = rig.journal.order(order.client_order_id)
    assert row.state == "REJECTED" and row.reason.startswith(reason)
    assert rig.venue.calls["submit"] == 1 and rig.venue.calls["fetch_order"] == 0
    assert [e.reason for e in rig.of(OrderRejected)] == [row.reason]
    assert rig.oms.halted_reason is None


async def test_an_authentication_error_rejects_and_halts_trading(rig: Rig) -> None:
    rig.venue.script("submit", AuthenticationVenueError("API key expired"))
    await rig.send(intent("a"), intent("b"))
    assert rig.journal.order("a").reason == "VENUE_AUTH API key expired"
    assert rig.oms.halted_reason == "VENUE_AUTH API key expired"
    # "b" was journaled before the halt; its send found trading halted and did not go out
    assert rig.journal.order("b").reason == "TRADING_HALTED reason=VENUE_AUTH API key expired" \
                                            " (not sent)"
    await rig.send(intent("c"))
    assert rig.journal.order("c") is None  # refused before the journal
    assert rig.venue.calls["submit"] == 1
    assert [e.reason for e in rig.of(OrderRejected)] == [
        "VENUE_AUTH API key expired",
        "TRADING_HALTED reason=VENUE_AUTH API key expired (not sent)",
        "TRADING_HALTED reason=VENUE_AUTH API key expired"]


# -- venue reports --------------------------------------------------------------------------
async def test_a_fill_reported_twice_counts_once(rig: Rig) -> None:
    await rig.send(intent("a"))
    rig.venue.on_bars(bars(1))
    trade = rig.paper._trades[0]
    assert rig.oms.apply_trade(trade, source="query") is False  # the poll after the stream
    await rig.bus.settle()
    assert len(rig.journal.fills()) == 1 and len(rig.of(Fill)) == 1
    assert rig.journal.order("a").filled == 1.0


async def test_a_late_fill_on_a_cancelled_order_is_booked_state_kept(rig: Rig) -> None:
    await rig.send(intent("a", qty=2.0))
    venue_view = rig.paper.orders()[0]
    listeners = list(rig.paper._trade_listeners)
    rig.paper._trade_listeners.clear()
    rig.venue.on_bars(bars(1))  # fills; the trade report is delayed
    rig.oms.on_venue_order(replace(venue_view, status="canceled", filled=0.0))
    assert rig.oms.orders["a"].state is S.CANCELLED
    for listener in listeners:
        listener(rig.paper._trades[0])
    row = rig.journal.order("a")
    assert (row.state, row.filled) == ("CANCELLED", 2.0)
    assert len(rig.journal.fills("a")) == 1


async def test_a_status_ahead_of_its_trades_waits_and_fetches_them(rig: Rig) -> None:
    rig.paper._trade_listeners.clear()  # the trade stream is down
    await rig.send(intent("a"))
    rig.venue.on_bars(bars(1))  # fills: the order report arrives, the trade report does not
    await rig.bus.settle()
    assert rig.oms.orders["a"].state is S.FILLED  # after fetching the trade
    assert rig.journal.counts()["fills_found_by_query"] == 1
    assert rig.states("a") == ["PENDING_NEW", "ACCEPTED", "FILLED"]


async def test_a_late_fill_for_an_order_finished_before_a_restart_is_booked(rig: Rig
                                                                            ) -> None:
    await rig.send(intent("a", qty=2.0))
    rig.journal.record_state("a", S.CANCELLED, T0, reason="venue status canceled")
    fresh = OMS(rig.bus, rig.journal, rig.venue, seed=1)  # a restart: terminal rows stay home
    assert fresh.restore() == []
    rig.paper._trade_listeners.clear()
    rig.venue.on_bars(bars(1))
    assert fresh.apply_trade(rig.paper._trades[0], source="query")
    row = rig.journal.order("a")
    assert (row.state, row.filled) == ("CANCELLED", 2.0)


async def test_venue_expiry_and_venue_rejection_end_the_order(rig: Rig) -> None:
    await rig.send(intent("a"))
    view = rig.paper.orders()[0]
    rig.oms.on_venue_order(replace(view, status="expired"))
    rig.oms.on_venue_order(replace(view, status="open"))  # a stale repeat: ignored
    # a rejection pushed by the venue before the OMS even sent "b" (its send then stays home)
    await rig.oms.on_approved(OrderApproved(intent("b", symbol="ETH/USDT", qty=5.0), T0))
    rig.oms.on_venue_order(replace(view, client_order_id="b", symbol="ETH/USDT",
                                   status="rejected"))
    await rig.bus.settle()
    assert rig.journal.order("a").state == "EXPIRED"
    assert rig.journal.order("b").state == "REJECTED"
    assert rig.venue.calls["submit"] == 1
    assert [e.client_order_id for e in rig.of(OrderCancelled)] == ["a"]
    assert [e.reason for e in rig.of(OrderRejected)] == ["VENUE_REJECTED status=rejected"]


async def test_a_report_for_an_order_that_is_not_ours_changes_nothing(rig: Rig) -> None:
    view = VenueOrder("foreign", "X1", "BTC/USDT", Side.BUY, OrderType.MARKET, 1.0, 0.0, None,
                      "open", T0)
    rig.oms.on_venue_order(view)
    assert rig.oms.orders == {} and rig.journal.orders() == []


# -- cancelling and shutdown ----------------------------------------------------------------
async def test_cancel_walks_pending_cancel_to_cancelled(rig: Rig) -> None:
    await rig.send(intent("a", limit=50.0))
    await rig.oms.cancel("a", "operator")
    assert rig.states("a") == ["PENDING_NEW", "ACCEPTED", "PENDING_CANCEL", "CANCELLED"]
    assert (await rig.paper.balances())["USDT"] == pytest.approx(10_000.0)  # hold released


async def test_a_cancel_whose_answer_is_lost_learns_the_truth_by_asking(rig: Rig) -> None:
    await rig.send(intent("a", limit=50.0))
    rig.venue.script("cancel", LOSE)
    await rig.oms.cancel("a", "operator")
    assert rig.oms.orders["a"].state is S.CANCELLED
    rig.venue.script("cancel", DROP)
    await rig.send(intent("b", limit=50.0))
    await rig.oms.cancel("b", "operator")
    assert rig.oms.orders["b"].state is S.ACCEPTED  # refused/failed: still live, not lingering


async def test_cancel_all_stops_orders_not_yet_sent_and_waits_for_sends(rig: Rig) -> None:
    await rig.send(intent("live", limit=50.0))
    gate = asyncio.Event()

    async def held(seconds: float) -> None:
        await gate.wait()

    rig.oms._sleep = held
    rig.venue.script("submit", DROP)
    await rig.oms.on_approved(OrderApproved(intent("retrying", symbol="ETH/USDT", qty=5.0), T0))
    await asyncio.sleep(0)  # its send starts, fails and waits out the backoff, lock held
    assert rig.oms.orders["retrying"].state is S.UNKNOWN
    await rig.oms.on_approved(OrderApproved(intent("queued"), T0))
    await rig.oms.cancel("queued", "operator")  # before its send task has even started
    cancelling = asyncio.ensure_future(rig.oms.cancel_all("operator"))
    await asyncio.sleep(0)
    gate.set()  # the retry resolves (never received), resends, then the cancel goes out
    assert await cancelling == 2
    await rig.bus.settle()
    states = {c: o.state for c, o in rig.oms.orders.items()}
    assert states == {"live": S.CANCELLED, "queued": S.CANCELLED, "retrying": S.CANCELLED}
    assert rig.journal.order("queued").reason == "operator (before it was sent)"
    assert "queued" not in {s.client_order_id for s in rig.paper.submissions()}


async def test_unknown_order_on_cancel_is_checked_before_believing_it(rig: Rig) -> None:
    await rig.send(intent("filled", qty=2.0))
    rig.paper._trade_listeners.clear()
    rig.paper._order_listeners.clear()
    rig.venue.on_bars(bars(1))  # it fills; the reports are slow
    rig.venue.script("cancel", OrderNotFound("Unknown order sent."))  # Binance, after a fill
    await rig.oms.cancel("filled", "operator")
    await rig.bus.settle()
    assert rig.oms.orders["filled"].state is S.FILLED  # not CANCELLED: the venue was asked
    assert rig.journal.order("filled").filled == 2.0
    rig.journal.record_intent(intent("ghost"), S.PENDING_NEW, T0)
    ghost = rig.oms._from_row(rig.journal.order("ghost"))
    ghost.state = S.ACCEPTED  # an order the venue has no trace of at all
    await rig.oms.cancel("ghost", "operator")
    assert rig.journal.order("ghost").reason == "operator; the venue does not know the order"


async def test_shutdown_cancels_working_orders_and_refuses_new_ones(tmp_path: Path) -> None:
    r = Rig(tmp_path, RetryConfig(), OmsConfig(cancel_on_shutdown=True, shutdown_timeout_s=5))
    await r.bus.start()
    await r.send(intent("a", limit=50.0), intent("b", symbol="ETH/USDT", qty=5.0, limit=5.0))
    await r.oms.stop()
    assert {o.client_order_id: o.state for o in r.oms.orders.values()} == {
        "a": S.CANCELLED, "b": S.CANCELLED}
    await r.send(intent("c"))
    assert r.journal.order("c") is None
    assert r.of(OrderRejected)[-1].reason == "OMS_STOPPED the daemon is shutting down"
    await r.bus.stop()
    r.journal.close()


async def test_shutdown_without_cancel_leaves_orders_working(tmp_path: Path) -> None:
    r = Rig(tmp_path, RetryConfig(), OmsConfig(cancel_on_shutdown=False))
    await r.bus.start()
    await r.send(intent("a", limit=50.0))
    await r.oms.stop()
    assert r.oms.orders["a"].state is S.ACCEPTED
    assert (await r.paper.open_orders())[0].client_order_id == "a"
    await r.bus.stop()
    r.journal.close()


# -- restart --------------------------------------------------------------------------------
async def test_restore_rebuilds_working_orders_and_marks_unsent_ones_unknown(rig: Rig) -> None:
    await rig.send(intent("live", limit=50.0))
    rig.journal.record_intent(intent("unsent"), S.PENDING_NEW, T0)  # died before the call
    await rig.send(intent("done", symbol="ETH/USDT", qty=5.0))
    rig.venue.on_bars(bars(1))
    fresh = OMS(rig.bus, rig.journal, rig.venue, seed=1)
    restored = {o.client_order_id: o for o in fresh.restore()}
    assert set(restored) == {"live", "unsent"}
    assert restored["live"].state is S.ACCEPTED
    assert restored["live"].venue_order_id == rig.journal.order("live").venue_order_id
    assert restored["unsent"].state is S.UNKNOWN
    assert rig.journal.order("unsent").reason.startswith("RESTART")
    assert restored["unsent"].intent.ts == T0  # decision time, for the trade watermark
