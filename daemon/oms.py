"""The order management system: approved intents in, venue orders out, fills back.

Write-ahead: an order is committed to the journal as PENDING_NEW, with its deterministic client
order id, before the venue is called; the venue's answer and every fill are journaled as they
arrive, a fill and its order's new quantity atomically. Rows join the journal's open batch and
commit together (daemon/journal.py, "Group commit"): `make_durable` before every venue request
that places or cancels an order, else when the event loop next gets round to it.

Sends run as tracked background tasks (`bus.track`), one per order, so one order's backoff
never stalls another order or the OMS's inbox. Everything the OMS says to the venue about one
order (send, ask, cancel) holds that order's lock, so those conversations never interleave.

Errors: a permanent error (insufficient funds, invalid order, filter failure) rejects the order
with the venue's reason; an authentication error also halts trading. Any other error means the
request may or may not have reached the venue: the order becomes UNKNOWN and, after a capped,
jittered exponential backoff (never shorter than the venue's Retry-After), the OMS asks the
venue for it by client order id. Found: its state is adopted and its trades fetched. Not found:
the venue proves it never saw it, so the order goes back to PENDING_NEW and is sent again with
the same id. Nothing is resent without that proof.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import structlog

from adapters.venue import (
    AuthenticationVenueError,
    OrderNotFound,
    OrderRequest,
    PermanentVenueError,
    TransientVenueError,
    Venue,
    VenueError,
    VenueOrder,
    VenueTrade,
)
from daemon import logs
from daemon.bus import EventBus
from daemon.events import (
    Fill,
    OrderAccepted,
    OrderApproved,
    OrderCancelled,
    OrderIntent,
    OrderRejected,
    Side,
    utcnow,
)
from daemon.journal import Journal, JournalBatchLost, OrderRow, OrderUpdate
from daemon.order_state import TERMINAL, OrderState, allowed, from_venue_status

log = structlog.get_logger("oms")
S = OrderState

FOUND, NOT_FOUND, UNREACHABLE = "found", "not_found", "unreachable"


@dataclass(frozen=True)
class RetryConfig:
    max_attempts: int = field(default=5, metadata={
        "doc": "sends of one order (each after the venue confirmed it has not got it), and "
               "queries per attempt to learn an UNKNOWN order's fate", "min": 1, "max": 50})
    base_delay_s: float = field(default=0.25, metadata={
        "doc": "first backoff delay; doubles each attempt", "min": 0.0, "max": 60.0})
    max_delay_s: float = field(default=8.0, metadata={
        "doc": "cap on one backoff delay (a venue's Retry-After may ask for longer)",
        "min": 0.0, "max": 600.0})


@dataclass(frozen=True)
class OmsConfig:
    cancel_on_shutdown: bool = field(default=True, metadata={
        "doc": "on SIGTERM, cancel the orders still working at the venue: nobody watches them "
               "while the daemon is down"})
    shutdown_timeout_s: float = field(default=10.0, metadata={
        "doc": "at shutdown, wait this long for sends in flight and for the cancels; what is "
               "left is resolved by the next start-up", "unit": "s", "min": 0.0, "max": 300.0})
    unknown_order_policy: Literal["cancel", "adopt", "halt"] = field(default="cancel", metadata={
        "doc": "open orders at the venue that the journal does not know: cancel them, adopt "
               "them (journal and track them as ours), or halt trading"})
    reconcile_interval_s: float = field(default=60.0, metadata={
        "doc": "compare journal and venue (orders, trades, balances) this often while running; "
               "0 = only at start-up", "unit": "s", "min": 0.0, "max": 86_400.0})
    position_tolerance_lots: float = field(default=0.5, metadata={
        "doc": "a position may differ from the venue's balance by this many lot steps before "
               "trading halts (a real fill is at least one lot)", "min": 0.0, "max": 1000.0})
    cash_tolerance: float = field(default=0.01, metadata={
        "doc": "quote cash may differ from the venue's balance by this much before trading "
               "halts", "unit": "quote", "min": 0.0})
    resend_max_age_s: float = field(default=300.0, metadata={
        "doc": "an order from an earlier run that the venue never received is sent again (same "
               "client order id) if younger than this; older ones expire, their decision stale",
        "unit": "s", "min": 0.0})


@dataclass(eq=False)
class WorkingOrder:
    intent: OrderIntent
    state: OrderState
    created_at: datetime
    venue_order_id: str | None = None
    filled: float = 0.0
    average_price: float | None = None
    attempts: int = 0  # venue submits this run
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def remaining(self) -> float:
        return max(self.intent.quantity - self.filled, 0.0)

    @property
    def signed_remaining(self) -> float:
        return self.remaining if self.intent.side is Side.BUY else -self.remaining

    @property
    def client_order_id(self) -> str:
        return self.intent.client_order_id

    def behind(self, venue_filled: float) -> bool:
        """The venue reports more executed than we have booked."""
        return venue_filled > self.filled + self.intent.quantity * 1e-9


Sleep = Callable[[float], Awaitable[Any]]


class OMS:
    name = "oms"

    def __init__(self, bus: EventBus, journal: Journal, venue: Venue,
                 retry: RetryConfig | None = None, clock: Callable[[], datetime] = utcnow,
                 seed: int | None = None, config: OmsConfig | None = None,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.bus = bus
        self.journal = journal
        self.venue = venue
        self.retry = retry or RetryConfig()
        self.config = config or OmsConfig()
        self.clock = clock
        self.orders: dict[str, WorkingOrder] = {}
        self._live: dict[str, WorkingOrder] = {}  # working()'s shortlist, see there
        self._added = 0  # orders put in self.orders by _add; another count means a rebuild
        self.halted_reason: str | None = None
        # Fill events sent to the bus; the app counts those the portfolio has booked, and the
        # rebalancer waits while the two differ (cash is not what it looks like yet)
        self.fills_published = 0
        self.accepting = True
        self.stats: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._tasks: set[asyncio.Task[Any]] = set()
        self._catching_up: set[str] = set()
        venue.on_trade(self.on_venue_trade)
        venue.on_order(self.on_venue_order)

    # -- service --------------------------------------------------------------------------
    async def start(self) -> None:
        self.accepting = True

    async def stop(self) -> None:
        await self.shutdown()

    def halt(self, reason: str) -> None:
        """No new orders until an operator restarts the daemon; working orders are left."""
        if self.halted_reason is None:
            self.halted_reason = reason
            log.error("trading_halted", reason=reason)

    # -- queries --------------------------------------------------------------------------
    def working(self) -> list[WorkingOrder]:
        # A terminal order never works again (order_state: no transition leaves FILLED,
        # CANCELLED, REJECTED or EXPIRED), so a shortlist of possibly-working orders replaces a
        # walk over every order ever sent: a long replay sends tens of thousands and asks
        # several times a bar. `_add` puts each new order on it as it enters self.orders. If
        # self.orders was changed behind _add's back (its size differs from what _add counted),
        # the shortlist is rebuilt from it, in its order.
        orders, live = self.orders, self._live
        if len(orders) != self._added:
            live.clear()
            live.update((cid, o) for cid, o in orders.items() if o.state.working)
            self._added = len(orders)
        done = [cid for cid, o in live.items() if o.state in TERMINAL]
        for cid in done:
            del live[cid]
        return list(live.values())

    def _add(self, order: WorkingOrder) -> None:
        cid = order.client_order_id
        if cid not in self.orders:
            self._added += 1
        self.orders[cid] = order
        self._live[cid] = order

    def working_quantity(self) -> dict[str, float]:
        """Signed quantity still to trade per symbol: drift must count it, or the daemon
        would trade twice for the same drift. UNKNOWN orders count: they may be live."""
        out: dict[str, float] = {}
        for o in self.working():
            out[o.intent.symbol] = out.get(o.intent.symbol, 0.0) + o.signed_remaining
        return out

    def busy(self) -> bool:
        """A send, a query or a catch-up is still in flight."""
        return any(not t.done() for t in self._tasks)

    # -- start-up -------------------------------------------------------------------------
    def restore(self) -> list[WorkingOrder]:
        """Rebuild the working orders from the journal's non-terminal rows. One still
        PENDING_NEW was journaled but its send's outcome never was: it becomes UNKNOWN, for
        the reconciler to resolve by asking the venue."""
        loaded = []
        for row in self.journal.working_orders():
            if row.client_order_id in self.orders:
                continue
            order = self._from_row(row)
            if order.state is S.PENDING_NEW:
                self._set_state(order, S.UNKNOWN,
                                reason="RESTART the outcome of its send was not journaled")
            loaded.append(order)
        return loaded

    def _from_row(self, row: OrderRow) -> WorkingOrder:
        intent = OrderIntent(
            client_order_id=row.client_order_id, symbol=row.symbol, side=row.side,
            quantity=row.quantity, order_type=row.order_type,
            reference_price=row.reference_price, ts=row.decided_at or row.created_at,
            limit_price=row.limit_price, decision_id=row.decision_id, reason=row.reason)
        order = WorkingOrder(intent=intent, state=OrderState(row.state),
                             created_at=row.created_at, venue_order_id=row.venue_order_id,
                             filled=row.filled, average_price=row.average_price)
        self._add(order)
        return order

    # -- sending --------------------------------------------------------------------------
    async def on_approved(self, event: OrderApproved) -> None:
        intent = event.intent
        refusal = self._refusal()
        if refusal is not None:
            log.warning("order_refused", client_order_id=intent.client_order_id,
                        symbol=intent.symbol, reason=refusal)
            self._publish_rejected(intent, refusal)
            return
        now = self.clock()
        if not self.journal.record_intent(intent, S.PENDING_NEW, now):
            log.warning("order_already_journaled", client_order_id=intent.client_order_id)
            return
        order = WorkingOrder(intent=intent, state=S.PENDING_NEW, created_at=now)
        self._add(order)
        self._spawn(self._send(order), f"send:{intent.client_order_id}")

    def _refusal(self) -> str | None:
        if self.halted_reason is not None:
            return f"TRADING_HALTED reason={self.halted_reason}"
        if not self.accepting:
            return "OMS_STOPPED the daemon is shutting down"
        return None

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = self.bus.track(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, order: WorkingOrder) -> None:
        async with order.lock:
            try:
                await self._submit(order)
            except JournalBatchLost as exc:
                # the journal cannot hold this order, so it was not sent, and it cannot record
                # anything else either: stop trading; a restart starts from what it committed
                self.halt(f"JOURNAL_WRITES_LOST {exc}")
                log.error("send_failed", client_order_id=order.client_order_id,
                          error=f"{type(exc).__name__}: {exc}", sent=False)
            except Exception as exc:  # a bug: whatever happened, the venue may have the order
                log.error("send_failed", client_order_id=order.client_order_id,
                          error=f"{type(exc).__name__}: {exc}", exc_info=exc)
                if order.state is S.PENDING_NEW:
                    self._set_state(order, S.UNKNOWN,
                                    reason=f"SEND_FAILED {type(exc).__name__}: {exc}")

    def _request(self, order: WorkingOrder) -> OrderRequest:
        i = order.intent
        return OrderRequest(client_order_id=i.client_order_id, symbol=i.symbol, side=i.side,
                            order_type=i.order_type, quantity=i.quantity,
                            limit_price=i.limit_price)

    async def _submit(self, order: WorkingOrder) -> None:
        """Send a PENDING_NEW order, retrying only after the venue proves it lacks it."""
        while True:
            if order.state is not S.PENDING_NEW:
                return  # a venue report got here first (e.g. a stream faster than the answer)
            if self.halted_reason is not None:
                self._reject(order, f"TRADING_HALTED reason={self.halted_reason} (not sent)")
                return
            order.attempts += 1
            self.journal.make_durable(order.client_order_id)  # write-ahead: never unjournaled
            try:
                view = await self.venue.submit(self._request(order))
            except AuthenticationVenueError as exc:
                self.halt(f"VENUE_AUTH {exc}")
                self._reject(order, f"VENUE_AUTH {exc}")
                return
            except PermanentVenueError as exc:
                self._reject(order, f"VENUE_REJECTED {exc}")
                return
            except VenueError as exc:  # transient or unclassified: it may have reached the venue
                kind = "VENUE_TRANSIENT" if isinstance(exc, TransientVenueError) else "VENUE_ERROR"
                retry_after = getattr(exc, "retry_after", None)
                log.warning("venue_send_failed", client_order_id=order.client_order_id,
                            attempt=order.attempts, error=str(exc), retry_after=retry_after)
                self._set_state(order, S.UNKNOWN,
                                reason=f"{kind} attempt={order.attempts}: {exc}")
                await self._sleep(self.backoff(order.attempts, retry_after))
                if await self._ask(order) != NOT_FOUND:
                    return  # adopted what the venue has, or left UNKNOWN for the reconciler
                if order.attempts >= self.retry.max_attempts:
                    self._reject(order, f"VENUE_UNREACHABLE attempts={order.attempts}: the "
                                        "venue confirms it never received the order")
                    return
                self._set_state(order, S.PENDING_NEW,
                                reason=f"RESEND attempt={order.attempts + 1}: the venue never "
                                       "received it; same client order id")
                self.stats["resent"] += 1
                continue
            self.on_venue_order(view)
            return

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Delay before retry `attempt` + 1: exponential from base_delay_s, capped at
        max_delay_s, jittered to 50-100 % so a crowd of retries spreads out, and never
        shorter than the venue's own Retry-After."""
        step = min(self.retry.base_delay_s * 2 ** (attempt - 1), self.retry.max_delay_s)
        return max(step * (0.5 + self._rng.random() / 2), retry_after or 0.0)

    def _reject(self, order: WorkingOrder, reason: str) -> None:
        self._set_state(order, S.REJECTED, reason=reason)
        log.warning("order_rejected", client_order_id=order.client_order_id, reason=reason)
        self._publish_rejected(order.intent, reason)

    def _publish_rejected(self, intent: OrderIntent, reason: str) -> None:
        self.bus.publish(OrderRejected(intent.client_order_id, intent.symbol, reason,
                                       self.clock()))

    # -- learning an order's fate ---------------------------------------------------------
    async def _ask(self, order: WorkingOrder) -> str:
        """Ask the venue for an UNKNOWN order by client order id and adopt its answer.
        Returns FOUND, NOT_FOUND (the venue never saw it) or UNREACHABLE (no answer)."""
        cid = order.client_order_id
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                view = await self.venue.fetch_order(cid, order.intent.symbol)
            except OrderNotFound:
                self._resolved(order, NOT_FOUND)
                return NOT_FOUND
            except AuthenticationVenueError as exc:
                self.halt(f"VENUE_AUTH {exc}")
                return UNREACHABLE
            except VenueError as exc:
                log.warning("order_query_failed", client_order_id=cid, attempt=attempt,
                            error=str(exc))
                if attempt < self.retry.max_attempts:
                    await self._sleep(self.backoff(attempt, getattr(exc, "retry_after", None)))
                continue
            self._resolved(order, FOUND, view)
            await self._adopt(order, view)
            return FOUND
        log.warning("order_unresolved", client_order_id=cid,
                    detail="left UNKNOWN; the reconciler asks again")
        return UNREACHABLE

    def _resolved(self, order: WorkingOrder, outcome: str, view: VenueOrder | None = None,
                  ) -> None:
        self.stats["unknown_resolved"] += 1
        detail: dict[str, Any] = {"outcome": outcome, "from": str(order.state)}
        if view is not None:
            detail.update(venue_status=view.status, venue_filled=view.filled,
                          venue_order_id=view.venue_order_id)
        self.journal.record_event(order.client_order_id, "RESOLVED", self.clock(), detail)
        log.info("order_resolved", client_order_id=order.client_order_id, **detail)

    async def _adopt(self, order: WorkingOrder, view: VenueOrder) -> None:
        """Take the venue's view of an order; first fetch the trades behind any fills we have
        not booked, so the quantities come from trades, never from a status."""
        cid = order.client_order_id
        self._catching_up.add(cid)
        try:
            if order.behind(view.filled):
                await self.catch_up(order)
            self.on_venue_order(view)
        finally:
            self._catching_up.discard(cid)

    async def catch_up(self, order: WorkingOrder) -> int:
        """Fetch the venue's trades since the order was decided (its trades cannot be older)
        and book the ones we missed. Returns how many were new."""
        try:
            trades = await self.venue.trades_since(order.intent.ts)
        except VenueError as exc:
            log.warning("trade_query_failed", client_order_id=order.client_order_id,
                        error=str(exc))
            return 0
        return sum(self.apply_trade(t, source="query") for t in trades
                   if t.client_order_id == order.client_order_id)

    async def _refresh_after_gap(self, order: WorkingOrder) -> None:
        try:
            await self.catch_up(order)
            view = await self.venue.fetch_order(order.client_order_id, order.intent.symbol)
            self.on_venue_order(view)
            if order.state.working and order.behind(view.filled):
                log.error("venue_trades_missing", client_order_id=order.client_order_id,
                          venue_filled=view.filled, booked=order.filled)
        except VenueError as exc:
            log.warning("order_refresh_failed", client_order_id=order.client_order_id,
                        error=str(exc))
        finally:
            self._catching_up.discard(order.client_order_id)

    async def resolve_unknown(self, order: WorkingOrder, *, resend: bool) -> str:
        """For the reconciler: learn an UNKNOWN order's fate. If the venue never saw it, send
        it again with the same id when `resend`, else expire it (its decision is stale)."""
        async with order.lock:
            if order.state is not S.UNKNOWN:
                return "moved"
            outcome = await self._ask(order)
            if outcome != NOT_FOUND:
                return outcome
            if resend:
                self._set_state(order, S.PENDING_NEW, reason="RESEND the venue never received "
                                "it; same client order id")
                self.stats["resent"] += 1
                await self._submit(order)
            else:
                reason = (f"NOT_SENT the venue never received it and it is older than "
                          f"oms.resend_max_age_s={self.config.resend_max_age_s:g}")
                self._set_state(order, S.EXPIRED, reason=reason)
                self.bus.publish(OrderCancelled(order.client_order_id, order.intent.symbol,
                                                reason, self.clock()))
            return outcome

    async def refresh(self, order: WorkingOrder) -> str:
        """For the reconciler: fetch and adopt the venue's view of a working order.
        Returns "ok", "busy" (another conversation holds it), "missing" or "failed"."""
        if order.lock.locked():
            return "busy"
        async with order.lock:
            try:
                view = await self.venue.fetch_order(order.client_order_id, order.intent.symbol)
            except OrderNotFound:
                return "missing"
            except VenueError as exc:
                log.warning("order_refresh_failed", client_order_id=order.client_order_id,
                            error=str(exc))
                return "failed"
            await self._adopt(order, view)
            return "ok"

    def adopt_foreign(self, view: VenueOrder) -> WorkingOrder:
        """Journal and track an open venue order the journal did not know."""
        intent = OrderIntent(
            client_order_id=view.client_order_id, symbol=view.symbol, side=view.side,
            quantity=view.quantity, order_type=view.order_type,
            reference_price=view.limit_price or view.average_price or 0.0, ts=view.ts,
            limit_price=view.limit_price, decision_id="adopted",
            reason="ADOPTED open at the venue, unknown to the journal")
        now = self.clock()
        self.journal.record_intent(intent, S.ACCEPTED, now)
        order = WorkingOrder(intent=intent, state=S.ACCEPTED, created_at=now,
                             venue_order_id=view.venue_order_id, filled=view.filled,
                             average_price=view.average_price)
        self.journal.record_state(view.client_order_id, S.ACCEPTED, now,
                                  venue_order_id=view.venue_order_id, filled=view.filled,
                                  average_price=view.average_price, reason=intent.reason)
        self._add(order)
        self.on_venue_order(view)
        return order

    # -- cancelling -----------------------------------------------------------------------
    async def cancel(self, client_order_id: str, reason: str) -> None:
        """Cancel a live order. One whose send has not started is cancelled here and never
        sent; one being sent is cancelled once the venue has answered; an UNKNOWN one is left
        to its resolution (its fate is not known, and a cancel by id could race the send)."""
        order = self.orders.get(client_order_id)
        if order is None or not order.state.working:
            return
        if order.state is S.PENDING_NEW and not order.lock.locked():
            reason = f"{reason} (before it was sent)"
            self._set_state(order, S.CANCELLED, reason=reason)
            self.bus.publish(OrderCancelled(client_order_id, order.intent.symbol, reason,
                                            self.clock()))
            return
        async with order.lock:
            if order.state not in (S.ACCEPTED, S.PARTIALLY_FILLED):
                return
            self._set_state(order, S.PENDING_CANCEL, reason=reason)
            self.journal.commit()  # the venue never learns more than the journal holds
            try:
                view = await self.venue.cancel(client_order_id, order.intent.symbol)
            except VenueError as exc:
                # learn the truth, so PENDING_CANCEL does not linger; "unknown order" is also
                # what Binance answers for an order that has just filled
                log.warning("cancel_failed", client_order_id=client_order_id, error=str(exc))
                try:
                    view = await self.venue.fetch_order(client_order_id, order.intent.symbol)
                except OrderNotFound:
                    self._set_state(order, S.CANCELLED, reason=f"{reason}; the venue does not "
                                    "know the order")
                    return
                except VenueError:
                    return
            await self._adopt(order, view)

    async def cancel_all(self, reason: str) -> int:
        live = [o.client_order_id for o in self.working() if o.state is not S.PENDING_CANCEL]
        await asyncio.gather(*(self.cancel(cid, reason) for cid in live))
        return len(live)

    async def shutdown(self) -> None:
        """Stop taking orders, let sends in flight finish (bounded), then cancel what is
        still working if configured. Whatever is left is resolved by the next start-up."""
        self.accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown_timeout_s
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, unfinished = await asyncio.wait(pending, timeout=self.config.shutdown_timeout_s)
            for task in unfinished:
                task.cancel()
            if unfinished:
                log.warning("shutdown_left_sends_unfinished", tasks=len(unfinished),
                            detail="their orders are resolved at the next start-up")
        cancelled = 0
        if self.config.cancel_on_shutdown:
            try:
                cancelled = await asyncio.wait_for(self.cancel_all("SHUTDOWN"),
                                                   max(deadline - loop.time(), 0.1))
            except TimeoutError:
                log.warning("shutdown_cancel_timeout",
                            working=[o.client_order_id for o in self.working()])
        log.info("oms_stopped", cancelled=cancelled,
                 working=[o.client_order_id for o in self.working()], **dict(self.stats))

    # -- venue reports --------------------------------------------------------------------
    def on_venue_order(self, view: VenueOrder) -> None:
        order = self.orders.get(view.client_order_id)
        if order is None:
            log.warning("venue_order_not_ours", client_order_id=view.client_order_id,
                        venue_order_id=view.venue_order_id, status=view.status)
            return
        if order.state.terminal:
            return  # a late or repeated report
        try:
            target = from_venue_status(view.status, view.filled, view.quantity)
        except ValueError as exc:
            log.error("venue_status_unknown", client_order_id=view.client_order_id,
                      error=str(exc))
            return
        if order.behind(view.filled):
            # executions we have not booked: the trades carry quantities and prices, so the
            # status waits for them; meanwhile the order is live at the venue
            if view.client_order_id not in self._catching_up:
                self._catching_up.add(view.client_order_id)
                self._spawn(self._refresh_after_gap(order), f"catch-up:{view.client_order_id}")
            if order.state not in (S.PENDING_NEW, S.UNKNOWN):
                return
            target = S.ACCEPTED
        elif not target.terminal and view.filled < order.filled - order.intent.quantity * 1e-9:
            return  # an older report than the trades we already booked
        if target is order.state or not allowed(order.state, target):
            if target is not order.state:
                log.warning("order_transition_refused", client_order_id=view.client_order_id,
                            state=str(order.state), venue_status=view.status)
            return
        was = order.state
        reason = f"venue status {view.status}" if target.terminal else None
        self._set_state(order, target, venue_order_id=view.venue_order_id, reason=reason)
        if was in (S.PENDING_NEW, S.UNKNOWN) and target is S.ACCEPTED:
            self.bus.publish(OrderAccepted(view.client_order_id, view.venue_order_id,
                                           view.symbol, self.clock()))
        if target in (S.CANCELLED, S.EXPIRED):
            self.bus.publish(OrderCancelled(view.client_order_id, view.symbol,
                                            f"venue {view.status}", self.clock()))
        elif target is S.REJECTED:
            self._publish_rejected(order.intent, f"VENUE_REJECTED status={view.status}")

    def on_venue_trade(self, trade: VenueTrade) -> None:
        self.apply_trade(trade, source="stream")

    def apply_trade(self, trade: VenueTrade, source: str = "stream") -> bool:
        """Journal one execution with its order's new quantity, then publish the Fill.
        False for a trade id already journaled (stream and query both reported it)."""
        fill = Fill(client_order_id=trade.client_order_id, venue_order_id=trade.venue_order_id,
                    trade_id=trade.trade_id, symbol=trade.symbol, side=trade.side,
                    quantity=trade.quantity, price=trade.price, fee=trade.fee, ts=trade.ts,
                    fee_currency=trade.fee_currency, fee_quote=trade.fee_quote)
        order = self.orders.get(trade.client_order_id)
        if order is None:  # a late trade of an order a restart left in the journal only
            row = self.journal.order(trade.client_order_id)
            order = self._from_row(row) if row is not None else None
        update = new = None
        total, avg = 0.0, 0.0
        if order is not None:
            total = order.filled + trade.quantity
            avg = ((order.average_price or 0.0) * order.filled
                   + trade.price * trade.quantity) / total
            target = S.FILLED if total >= order.intent.quantity * (1 - 1e-9) \
                else S.PARTIALLY_FILLED
            new = target if allowed(order.state, target) else None
            update = OrderUpdate(state=new, filled=total, average_price=avg,
                                 venue_order_id=trade.venue_order_id)
        if not self.journal.record_fill(fill, update, at=self.clock(), source=source):
            return False
        if source != "stream":
            self.stats["fills_found_by_query"] += 1
            log.warning("missed_fill_applied", trade_id=trade.trade_id,
                        client_order_id=trade.client_order_id, quantity=trade.quantity,
                        price=trade.price)
        if order is None:
            log.warning("fill_for_unknown_order", client_order_id=trade.client_order_id,
                        trade_id=trade.trade_id)
        else:
            was = order.state
            order.filled, order.average_price = total, avg
            order.venue_order_id = order.venue_order_id or trade.venue_order_id
            if new is not None:
                order.state = new
                if logs.enabled(logging.INFO):  # a logger is assembled per call (daemon.logs)
                    log.info("order_state", client_order_id=trade.client_order_id,
                             state=str(new), symbol=trade.symbol, side=str(trade.side),
                             filled=total, trade_id=trade.trade_id)
                if was is S.UNKNOWN and trade.client_order_id not in self._catching_up:
                    self._resolved_by_trade(order, was, trade)
            else:
                log.warning("fill_after_terminal_state", client_order_id=trade.client_order_id,
                            state=str(was), trade_id=trade.trade_id)
        self.fills_published += 1
        self.bus.publish(fill)
        return True

    def _resolved_by_trade(self, order: WorkingOrder, was: OrderState,
                           trade: VenueTrade) -> None:
        self.stats["unknown_resolved"] += 1
        detail = {"outcome": "trade", "from": str(was), "trade_id": trade.trade_id}
        self.journal.record_event(order.client_order_id, "RESOLVED", self.clock(), detail)
        log.info("order_resolved", client_order_id=order.client_order_id, **detail)

    def _set_state(self, order: WorkingOrder, new: OrderState, *, reason: str | None = None,
                   venue_order_id: str | None = None) -> None:
        if not allowed(order.state, new):
            log.warning("order_transition_refused", client_order_id=order.client_order_id,
                        state=str(order.state), new=str(new), reason=reason)
            return
        order.state = new
        if venue_order_id:
            order.venue_order_id = venue_order_id
        self.journal.record_state(order.client_order_id, new, self.clock(),
                                  venue_order_id=venue_order_id, filled=order.filled,
                                  average_price=order.average_price, reason=reason)
        if logs.enabled(logging.INFO):  # a logger is assembled per call (daemon.logs)
            log.info("order_state", client_order_id=order.client_order_id, state=str(new),
                     symbol=order.intent.symbol, side=str(order.intent.side),
                     quantity=order.intent.quantity, filled=order.filled, reason=reason)
