"""The order management system: approved intents in, venue orders out, fills back.

Write-ahead: an order is journaled as PENDING_NEW before the venue is called. Transient venue
errors are retried with the same client order id (the venue deduplicates on it); permanent
ones are reported as `OrderRejected`; an order whose fate we cannot learn becomes UNKNOWN and
is resolved by asking the venue, never resent blindly.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

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
from daemon.journal import Journal
from daemon.order_state import InvalidTransition, OrderState, from_venue_status, transition

log = structlog.get_logger("oms")


@dataclass(frozen=True)
class RetryConfig:
    max_attempts: int = field(default=5, metadata={
        "doc": "venue calls per order before it is marked UNKNOWN and resolved by query",
        "min": 1, "max": 50})
    base_delay_s: float = field(default=0.25, metadata={
        "doc": "first backoff delay; doubles each attempt", "min": 0.0, "max": 60.0})
    max_delay_s: float = field(default=8.0, metadata={
        "doc": "cap on one backoff delay (a venue's Retry-After may ask for longer)",
        "min": 0.0, "max": 600.0})


@dataclass
class WorkingOrder:
    intent: OrderIntent
    state: OrderState
    venue_order_id: str | None = None
    filled: float = 0.0
    average_price: float | None = None

    @property
    def remaining(self) -> float:
        return max(self.intent.quantity - self.filled, 0.0)

    @property
    def signed_remaining(self) -> float:
        return self.remaining if self.intent.side is Side.BUY else -self.remaining


class OMS:
    def __init__(self, bus: EventBus, journal: Journal, venue: Venue,
                 retry: RetryConfig | None = None, clock: Callable[[], datetime] = utcnow,
                 seed: int | None = None) -> None:
        self.bus = bus
        self.journal = journal
        self.venue = venue
        self.retry = retry or RetryConfig()
        self.clock = clock
        self.orders: dict[str, WorkingOrder] = {}
        self._rng = random.Random(seed)
        self.halted_reason: str | None = None
        venue.on_trade(self.on_venue_trade)
        venue.on_order(self.on_venue_order)

    # -- queries --------------------------------------------------------------------------
    def working(self) -> list[WorkingOrder]:
        return [o for o in self.orders.values() if o.state.working]

    def working_quantity(self) -> dict[str, float]:
        """Signed quantity still to trade per symbol: drift must count it, or the daemon
        would trade twice for the same drift."""
        out: dict[str, float] = {}
        for o in self.working():
            out[o.intent.symbol] = out.get(o.intent.symbol, 0.0) + o.signed_remaining
        return out

    # -- sending --------------------------------------------------------------------------
    async def on_approved(self, event: OrderApproved) -> None:
        intent = event.intent
        if self.halted_reason is not None:
            self._reject_locally(intent, f"TRADING_HALTED reason={self.halted_reason}")
            return
        if not self.journal.record_intent(intent, OrderState.PENDING_NEW, self.clock()):
            log.warning("order_already_journaled", client_order_id=intent.client_order_id)
            return
        order = WorkingOrder(intent=intent, state=OrderState.PENDING_NEW)
        self.orders[intent.client_order_id] = order
        await self._send(order)

    async def _send(self, order: WorkingOrder) -> None:
        intent = order.intent
        request = OrderRequest(client_order_id=intent.client_order_id, symbol=intent.symbol,
                               side=intent.side, order_type=intent.order_type,
                               quantity=intent.quantity, limit_price=intent.limit_price)
        delay = self.retry.base_delay_s
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                view = await self.venue.submit(request)
            except TransientVenueError as exc:
                log.warning("venue_transient_error", client_order_id=intent.client_order_id,
                            attempt=attempt, error=str(exc), retry_after=exc.retry_after)
                if attempt == self.retry.max_attempts:
                    self._set_state(order, OrderState.UNKNOWN, reason=f"VENUE_TRANSIENT {exc}")
                    return
                wait = max(min(delay, self.retry.max_delay_s), exc.retry_after or 0.0)
                await asyncio.sleep(wait * (0.5 + self._rng.random() / 2))
                delay *= 2
                continue
            except AuthenticationVenueError as exc:
                self.halted_reason = "AUTHENTICATION"
                log.error("venue_authentication_failed", error=str(exc))
                self._set_state(order, OrderState.REJECTED, reason=f"VENUE_AUTH {exc}")
                self.bus.publish(OrderRejected(intent.client_order_id, intent.symbol,
                                               f"VENUE_AUTH {exc}", self.clock()))
                return
            except (PermanentVenueError, VenueError) as exc:
                self._set_state(order, OrderState.REJECTED, reason=f"VENUE_REJECTED {exc}")
                self.bus.publish(OrderRejected(intent.client_order_id, intent.symbol,
                                               f"VENUE_REJECTED {exc}", self.clock()))
                log.warning("order_rejected_by_venue", client_order_id=intent.client_order_id,
                            reason=str(exc))
                return
            self.on_venue_order(view)
            return

    def _reject_locally(self, intent: OrderIntent, reason: str) -> None:
        self.bus.publish(OrderRejected(intent.client_order_id, intent.symbol, reason,
                                       self.clock()))

    async def cancel(self, client_order_id: str, reason: str) -> None:
        order = self.orders.get(client_order_id)
        if order is None or not order.state.working:
            return
        self._set_state(order, OrderState.PENDING_CANCEL, reason=reason)
        try:
            view = await self.venue.cancel(client_order_id, order.intent.symbol)
        except OrderNotFound:
            self._set_state(order, OrderState.CANCELLED, reason="venue does not know it")
            return
        except VenueError as exc:
            log.warning("cancel_failed", client_order_id=client_order_id, error=str(exc))
            return
        self.on_venue_order(view)

    async def cancel_all(self, reason: str) -> int:
        working = [o.intent.client_order_id for o in self.working()]
        for cid in working:
            await self.cancel(cid, reason)
        return len(working)

    # -- venue reports --------------------------------------------------------------------
    def on_venue_order(self, view: VenueOrder) -> None:
        order = self.orders.get(view.client_order_id)
        if order is None:
            log.warning("venue_order_not_ours", client_order_id=view.client_order_id,
                        venue_order_id=view.venue_order_id, status=view.status)
            return
        order.venue_order_id = view.venue_order_id
        new = from_venue_status(view.status, view.filled, view.quantity)
        if new in (OrderState.PARTIALLY_FILLED, OrderState.FILLED) and view.filled > order.filled:
            # the trade reports carry the quantities; the status waits for them
            new = OrderState.ACCEPTED if order.state is OrderState.PENDING_NEW else order.state
        if new is order.state:
            return
        was = order.state
        self._set_state(order, new, venue_order_id=view.venue_order_id)
        if was in (OrderState.PENDING_NEW, OrderState.UNKNOWN) and new is OrderState.ACCEPTED:
            self.bus.publish(OrderAccepted(view.client_order_id, view.venue_order_id,
                                           view.symbol, self.clock()))
        if new is OrderState.CANCELLED:
            self.bus.publish(OrderCancelled(view.client_order_id, view.symbol,
                                            "venue cancelled", self.clock()))

    def on_venue_trade(self, trade: VenueTrade) -> None:
        fill = Fill(client_order_id=trade.client_order_id, venue_order_id=trade.venue_order_id,
                    trade_id=trade.trade_id, symbol=trade.symbol, side=trade.side,
                    quantity=trade.quantity, price=trade.price, fee=trade.fee, ts=trade.ts)
        if not self.journal.record_fill(fill):
            return  # seen before: the stream and a poll both reported it
        order = self.orders.get(trade.client_order_id)
        if order is not None:
            total = order.filled + trade.quantity
            order.average_price = ((order.average_price or 0.0) * order.filled
                                   + trade.price * trade.quantity) / total
            order.filled = total
            done = total >= order.intent.quantity * (1 - 1e-9)
            new = OrderState.FILLED if done else OrderState.PARTIALLY_FILLED
            if order.state is OrderState.PENDING_NEW:
                self._set_state(order, OrderState.ACCEPTED, venue_order_id=trade.venue_order_id)
            self._set_state(order, new, venue_order_id=trade.venue_order_id)
        else:
            log.warning("fill_for_unknown_order", client_order_id=trade.client_order_id,
                        trade_id=trade.trade_id)
        self.bus.publish(fill)

    def _set_state(self, order: WorkingOrder, new: OrderState, *, reason: str | None = None,
                   venue_order_id: str | None = None) -> None:
        try:
            order.state = transition(order.state, new)
        except InvalidTransition as exc:
            log.warning("order_transition_refused", client_order_id=order.intent.client_order_id,
                        error=str(exc))
            return
        self.journal.record_state(order.intent.client_order_id, new, self.clock(),
                                  venue_order_id=venue_order_id, filled=order.filled,
                                  average_price=order.average_price, reason=reason)
        log.info("order_state", client_order_id=order.intent.client_order_id, state=str(new),
                 symbol=order.intent.symbol, side=str(order.intent.side),
                 quantity=order.intent.quantity, filled=order.filled, reason=reason)
