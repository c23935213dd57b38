"""Reconciliation: the journal's view of the account against the venue's, at start-up and then
periodically, as a daemon `Service`.

Start-up runs before the first bar, so before any new order:
1. opening balances: the account before the daemon's first order, recorded once in the journal;
2. portfolio = opening balances + every journaled fill (it changes only through fills);
3. working orders rebuilt from the journal's non-terminal rows (PENDING_NEW ones become
   UNKNOWN: their send's outcome was never recorded);
4. one reconciliation pass, and the bus settled so the portfolio has every fill it found.

A pass:
1. the venue's trades since the watermark: those the journal lacks are booked through the
   OMS's normal trade path (journal, then Fill to the portfolio);
2. UNKNOWN orders: asked for by client order id; found -> adopted with their trades; never
   received -> sent again with the same id if recent (`oms.resend_max_age_s`), else expired;
3. the venue's open orders: ours -> their state adopted; unknown to the journal ->
   `oms.unknown_order_policy` (cancel, adopt or halt); open at the venue but terminal in the
   journal -> an issue;
4. working orders missing from the open list -> their final state fetched (filled or
   cancelled while we were away); one the venue no longer knows -> an issue;
5. positions: the venue's balances are read, then its trades booked once more (so every trade
   those balances reflect is journaled), then opening balances + journaled fills are compared
   with them, each fee taken from the asset it was charged in (quote: cash; base: the
   position; another asset such as BNB: that asset's balance). A difference
   beyond `oms.position_tolerance_lots` lot steps (or `oms.cash_tolerance` for cash) halts
   trading with a report naming each asset, instead of trading on a wrong view. While running,
   a difference must still be there a moment later (fills in flight cause passing ones).

The trade watermark is the earliest market time any trade we could have missed can carry: the
decision time of the oldest working order, or the last journaled fill's time if earlier.
Every report is logged (`reconciled`) and stored in the journal's `reconciliations` table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime

import structlog

from adapters.tasks import stop_task
from adapters.venue import Venue, VenueError, VenueOrder
from daemon.bus import EventBus
from daemon.events import utcnow
from daemon.journal import Journal
from daemon.oms import NOT_FOUND, OMS, OmsConfig
from daemon.order_state import OrderState
from daemon.portfolio import Portfolio

log = structlog.get_logger("reconcile")
S = OrderState

STARTUP_ATTEMPTS = 5  # start-up passes tried (venue unreachable) before the daemon gives up
SMALLEST_STEP = 1e-8  # lot step assumed for a market whose filters are not known yet


@dataclass
class Mismatch:
    asset: str
    journal: float
    venue: float
    tolerance: float

    @property
    def difference(self) -> float:
        return self.venue - self.journal


@dataclass
class ReconcileReport:
    kind: str  # startup | periodic
    at: datetime
    trades_seen: int = 0
    missed_fills: int = 0
    unknown_found: int = 0
    unknown_resent: int = 0
    unknown_expired: int = 0
    unknown_unresolved: int = 0
    refreshed: int = 0
    venue_open: int = 0
    foreign_orders: list[str] = field(default_factory=list)
    foreign_action: str = ""
    issues: list[str] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues and not self.mismatches

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["at"] = self.at.isoformat()
        out["mismatches"] = [{**asdict(m), "difference": m.difference} for m in self.mismatches]
        out["ok"] = self.ok
        return out

    def describe(self) -> str:
        parts = [f"{m.asset} journal={m.journal:.10g} venue={m.venue:.10g} "
                 f"difference={m.difference:+.10g} tolerance={m.tolerance:g}"
                 for m in self.mismatches]
        return "; ".join([*self.issues, *parts])


class Reconciler:
    name = "reconciler"

    def __init__(self, oms: OMS, journal: Journal, venue: Venue, portfolio: Portfolio,
                 bus: EventBus, config: OmsConfig, quote: str, symbols: list[str],
                 clock: Callable[[], datetime] = utcnow,
                 confirm_delay_s: float = 1.0) -> None:
        self.oms = oms
        self.journal = journal
        self.venue = venue
        self.portfolio = portfolio
        self.bus = bus
        self.config = config
        self.quote = quote
        self.symbols = list(symbols)
        self.clock = clock
        self.confirm_delay_s = confirm_delay_s
        self.opening: dict[str, float] = {}
        self.reports: list[ReconcileReport] = []
        self._unreconciled_fee_assets: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    # -- service --------------------------------------------------------------------------
    async def start(self) -> None:
        await self.startup()
        if self.config.reconcile_interval_s > 0:
            self._task = asyncio.create_task(self._periodic(), name="reconciler")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.config.reconcile_interval_s)
            try:
                await self.reconcile("periodic")
            except VenueError as exc:  # the venue is away: try again next time
                log.warning("reconcile_failed", error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                log.error("reconcile_failed", error=f"{type(exc).__name__}: {exc}",
                          exc_info=exc)

    # -- start-up -------------------------------------------------------------------------
    async def startup(self) -> ReconcileReport:
        self.opening = await self._opening_balances()
        self._restore_portfolio()
        restored = self.oms.restore()
        if restored:
            log.info("orders_restored", orders={o.client_order_id: str(o.state)
                                                for o in restored})
        for attempt in range(1, STARTUP_ATTEMPTS + 1):
            try:
                report = await self.reconcile("startup")
                break
            except VenueError as exc:
                if attempt == STARTUP_ATTEMPTS:
                    raise VenueError(f"start-up reconciliation failed after {attempt} attempts:"
                                     f" {exc}") from exc
                log.warning("startup_reconcile_retry", attempt=attempt, error=str(exc))
                await asyncio.sleep(self.oms.backoff(attempt))
        await self.bus.settle()  # the fills found above reach the portfolio before any bar
        return report

    async def _opening_balances(self) -> dict[str, float]:
        opening = self.journal.opening_balances()
        if opening is not None:
            return opening
        venue = await self.venue.balances()
        cash_delta, quantities = self.journal.fill_totals()
        fee_assets = self.journal.fee_asset_totals()
        # a journal from before opening balances were recorded: infer them, so that the
        # journal plus its fills equals the venue now (nothing to compare against this once)
        if quantities:
            log.warning("opening_balances_inferred",
                        detail="journal has fills but no opening balances; taking the venue's "
                               "balances less those fills")
        opening = {self.quote: venue.get(self.quote, 0.0) - cash_delta}
        for symbol in self.symbols:
            base = _base(symbol)
            opening[base] = (venue.get(base, 0.0) - quantities.get(symbol, 0.0)
                             + fee_assets.get(base, 0.0))
        # every other asset held, as it stands: fees may be charged in one (BNB with Binance's
        # fee discount), and its balance is then reconciled like a position
        for asset, amount in venue.items():
            if asset not in opening and (amount or asset in fee_assets):
                opening[asset] = amount + fee_assets.get(asset, 0.0)
        self.journal.set_opening_balances(opening)
        return self.journal.opening_balances() or opening

    def _restore_portfolio(self) -> None:
        p = self.portfolio
        p.cash = self.opening.get(self.quote, 0.0)
        p.positions = {s: q for s in self.symbols if (q := self.opening.get(_base(s), 0.0))}
        p.fee_balances = {}
        p.symbols = set(self.symbols)
        for fill in self.journal.fills(oldest_first=True):
            p.apply_fill(fill)

    # -- one pass -------------------------------------------------------------------------
    async def reconcile(self, kind: str) -> ReconcileReport:
        report = ReconcileReport(kind=kind, at=self.clock())
        await self._book_missed_trades(report)
        await self._resolve_unknown(report)
        open_ids = await self._sync_open_orders(report)
        await self._refresh_missing(report, open_ids)
        report.mismatches = await self._compare_positions(report)
        if report.mismatches and kind != "startup":
            # fills in flight make passing differences: only one that stays counts
            await asyncio.sleep(self.confirm_delay_s)
            again = {m.asset for m in await self._compare_positions(report)}
            report.mismatches = [m for m in report.mismatches if m.asset in again]
        self._finish(report)
        return report

    def _watermark(self) -> datetime | None:
        candidates = [o.intent.ts for o in self.oms.working()]
        last = self.journal.last_fill_at()
        if last is not None:
            candidates.append(last)
        return min(candidates) if candidates else None

    async def _book_missed_trades(self, report: ReconcileReport) -> None:
        since = self._watermark()
        if since is None:
            return  # nothing traded and nothing working: no trade can be ours
        trades = await self.venue.trades_since(since)
        report.trades_seen = max(report.trades_seen, len(trades))
        for trade in sorted(trades, key=lambda t: t.ts):
            if self.oms.apply_trade(trade, source="query"):
                report.missed_fills += 1

    async def _resolve_unknown(self, report: ReconcileReport) -> None:
        now = self.clock()
        for order in [o for o in self.oms.working() if o.state is S.UNKNOWN]:
            if order.lock.locked():
                continue  # its own send is asking the venue already
            age = (now - order.created_at).total_seconds()
            resend = age <= self.config.resend_max_age_s
            outcome = await self.oms.resolve_unknown(order, resend=resend)
            if outcome == "found":
                report.unknown_found += 1
            elif outcome == NOT_FOUND:
                if resend:
                    report.unknown_resent += 1
                else:
                    report.unknown_expired += 1
            elif outcome != "moved":
                report.unknown_unresolved += 1

    async def _sync_open_orders(self, report: ReconcileReport) -> set[str]:
        open_orders = await self.venue.open_orders()
        report.venue_open = len(open_orders)
        foreign: list[VenueOrder] = []
        for view in open_orders:
            order = self.oms.orders.get(view.client_order_id)
            if order is not None and order.state.working:
                if not order.lock.locked():
                    self.oms.on_venue_order(view)
                continue
            row = self.journal.order(view.client_order_id)
            if row is None:
                foreign.append(view)
            elif await self._still_open(view):  # not an answer that crossed the snapshot
                report.issues.append(f"ORDER_STATE_DISAGREES {view.client_order_id} is "
                                     f"{row.state} in the journal but open at the venue")
        open_ids = {v.client_order_id for v in open_orders}
        if not foreign:
            return open_ids
        policy = self.config.unknown_order_policy
        report.foreign_orders = [v.client_order_id for v in foreign]
        report.foreign_action = policy
        log.warning("unknown_venue_orders", policy=policy, orders=[
            {"client_order_id": v.client_order_id, "symbol": v.symbol, "side": str(v.side),
             "quantity": v.quantity, "filled": v.filled} for v in foreign])
        for view in foreign:
            if policy == "cancel":
                try:
                    await self.venue.cancel(view.client_order_id, view.symbol)
                except VenueError as exc:
                    report.issues.append(f"UNKNOWN_ORDER_CANCEL_FAILED {view.client_order_id}:"
                                         f" {exc}")
            elif policy == "adopt":
                self.oms.adopt_foreign(view)
            else:
                report.issues.append(f"UNKNOWN_ORDER {view.client_order_id} {view.side} "
                                     f"{view.quantity} {view.symbol} is open at the venue but "
                                     f"not in the journal (oms.unknown_order_policy = halt)")
        return open_ids

    async def _still_open(self, view: VenueOrder) -> bool:
        try:
            again = await self.venue.fetch_order(view.client_order_id, view.symbol)
        except VenueError:
            return True
        return again.status == "open"

    async def _refresh_missing(self, report: ReconcileReport, open_ids: set[str]) -> None:
        for order in self.oms.working():
            if order.client_order_id in open_ids or order.state in (S.PENDING_NEW, S.UNKNOWN):
                continue
            outcome = await self.oms.refresh(order)
            if outcome == "ok":
                report.refreshed += 1
            elif outcome == "missing":
                report.issues.append(f"ORDER_MISSING {order.client_order_id} is "
                                     f"{order.state} in the journal but the venue does not "
                                     f"know it")

    async def _compare_positions(self, report: ReconcileReport) -> list[Mismatch]:
        venue = await self.venue.balances()
        # every trade these balances reflect is in the venue's list from now on: book them
        await self._book_missed_trades(report)
        # each fee counts against the asset it was charged in: quote fees in cash_delta, base
        # fees in quantities, any other asset's (BNB) in fee_assets
        cash_delta, quantities = self.journal.fill_totals()
        fee_assets = self.journal.fee_asset_totals()
        rules = self.venue.markets()
        out = []
        cash = self.opening.get(self.quote, 0.0) + cash_delta
        if abs(venue.get(self.quote, 0.0) - cash) > self.config.cash_tolerance:
            out.append(Mismatch(self.quote, cash, venue.get(self.quote, 0.0),
                                self.config.cash_tolerance))
        for symbol in self.symbols:
            base = _base(symbol)
            expected = (self.opening.get(base, 0.0) + quantities.get(symbol, 0.0)
                        - fee_assets.get(base, 0.0))
            step = rules[symbol].amount_step if symbol in rules else SMALLEST_STEP
            tolerance = self.config.position_tolerance_lots * step
            if abs(venue.get(base, 0.0) - expected) > tolerance:
                out.append(Mismatch(base, expected, venue.get(base, 0.0), tolerance))
        bases = {_base(s) for s in self.symbols}
        for asset, spent in sorted(fee_assets.items()):
            if asset in bases or asset == self.quote:
                continue
            if asset not in self.opening:
                # opening balances recorded before fees were charged in it: nothing to
                # compare with (its fees are still booked in the portfolio)
                if asset not in self._unreconciled_fee_assets:
                    self._unreconciled_fee_assets.add(asset)
                    log.warning("fee_asset_not_reconciled", asset=asset,
                                reason="no opening balance recorded for it")
                continue
            expected = self.opening[asset] - spent
            # no market of ours gives its lot step: Binance books fees to 1e-8
            tolerance = self.config.position_tolerance_lots * SMALLEST_STEP
            if abs(venue.get(asset, 0.0) - expected) > tolerance:
                out.append(Mismatch(asset, expected, venue.get(asset, 0.0), tolerance))
        return out

    def _finish(self, report: ReconcileReport) -> None:
        self.reports.append(report)
        del self.reports[:-20]
        self.journal.record_reconciliation(report.kind, report.at, report.ok, report.as_dict())
        fields = {k: v for k, v in report.as_dict().items()
                  if k not in ("at", "kind") and v not in (0, [], "")}
        if report.ok:
            log.info("reconciled", kind=report.kind, **fields)
            return
        log.error("reconcile_mismatch", kind=report.kind, **fields)
        self.oms.halt(f"RECONCILE_MISMATCH {report.describe()}")


def _base(symbol: str) -> str:
    return symbol.split("/")[0]
