"""Wires the parts into a running daemon and runs it until told to stop.

market feed → (venue sees the bars first) → bus: Bar, BarsClosed
  → portfolio (marks) · risk gate (last prices) · rebalancer (drift → solve → OrderIntent)
  → risk gate (OrderApproved | RiskRejected) → OMS (journal, venue) → venue fills
  → OMS (journal, Fill) → portfolio
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

import structlog

from adapters.feed import BarFeed
from adapters.paper import PaperVenue
from adapters.replay import ReplayFeed
from adapters.simulated import SimulatedMarket
from adapters.tasks import stop_task
from adapters.venue import Venue
from daemon.bus import EventBus
from daemon.config import Config
from daemon.counters import EventCounters
from daemon.events import (
    Bar,
    BarsClosed,
    Fill,
    OrderApproved,
    OrderIntent,
    OrderRejected,
    RiskRejected,
)
from daemon.journal import Journal
from daemon.oms import OMS
from daemon.portfolio import Portfolio
from daemon.rebalancer import Rebalancer
from daemon.reconcile import Reconciler
from daemon.resume import resume_feed
from daemon.risk_gate import RiskGate
from daemon.solver import SolverPool

log = structlog.get_logger("daemon")


class Service(Protocol):
    """A long-lived part started after the core is wired (control socket, HTTP, reconciler).
    Started in registration order once the bus runs; stopped in reverse order."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class RunSummary:
    bars_per_symbol: int
    start_nav: float
    end_nav: float
    rebalances: int
    orders: int
    fills: int
    fees: float
    risk_rejections: int
    venue_rejections: int
    handler_errors: int
    cash: float
    weights: dict[str, float]
    targets: dict[str, float]
    rejections_by_code: dict[str, int] = field(default_factory=dict)
    journal_path: str = ""

    @property
    def total_return(self) -> float:
        return self.end_nav / self.start_nav - 1.0 if self.start_nav else 0.0

    def render(self) -> str:
        lines = [
            "tradingd run summary",
            f"  bars per symbol    {self.bars_per_symbol}",
            f"  NAV start → end    {self.start_nav:,.2f} → {self.end_nav:,.2f}"
            f"  ({self.total_return:+.2%})",
            f"  rebalances         {self.rebalances}",
            f"  orders / fills     {self.orders} / {self.fills}",
            f"  fees               {self.fees:,.2f}",
            f"  risk rejections    {self.risk_rejections}"
            + (f"  {dict(self.rejections_by_code)}" if self.rejections_by_code else ""),
            f"  venue rejections   {self.venue_rejections}",
            f"  handler errors     {self.handler_errors}",
            f"  cash               {self.cash:,.2f}",
            "  symbol          weight   target    drift",
        ]
        for s in sorted(set(self.weights) | set(self.targets)):
            w, t = self.weights.get(s, 0.0), self.targets.get(s, 0.0)
            lines.append(f"  {s:<14} {w:7.2%}  {t:7.2%}  {w - t:+7.2%}")
        if self.journal_path:
            lines.append(f"  journal            {self.journal_path}")
        return "\n".join(lines)


def build_feed(cfg: Config) -> BarFeed:
    market = cfg.market
    if cfg.daemon.mode == "testnet":
        from adapters.binance_ws import BinanceKlineFeed

        warmup = cfg.exchange.stream.warmup_bars
        return BinanceKlineFeed(cfg.exchange, list(market.symbols), market.interval,
                                market.interval_s, warmup_bars=cfg.allocation.lookback_bars + 1
                                if warmup is None else warmup)
    if market.source == "replay":
        assert market.replay is not None  # MarketConfig.check demands it
        return ReplayFeed(replace(market.replay, symbols=list(market.symbols),
                                  interval_s=market.interval_s))
    return SimulatedMarket(replace(market.simulated, symbols=list(market.symbols),
                                   interval_s=market.interval_s))


def build_venue(cfg: Config) -> Venue:
    if cfg.daemon.mode == "testnet":
        from adapters.ccxt_venue import CcxtVenue

        return CcxtVenue(cfg.exchange, list(cfg.market.symbols), cfg.market.quote)
    return PaperVenue(cfg.venue.paper, list(cfg.market.symbols), cfg.market.quote,
                      state_path=cfg.state_path / "paper_venue.sqlite")


class Daemon:
    def __init__(self, cfg: Config, *, feed: BarFeed | None = None, venue: Venue | None = None,
                 solve_fn: Callable[..., Any] | None = None,
                 journal: Journal | None = None, solver: SolverPool | None = None) -> None:
        self.cfg = cfg
        self.feed = feed or build_feed(cfg)
        self.symbols = list(cfg.market.symbols)
        self.venue: Venue = venue or build_venue(cfg)
        self.bus = EventBus()
        # a replay passes its own (disposable state: no fsync per commit)
        self.journal = journal or Journal(cfg.state_path / "journal.sqlite")
        self.portfolio = Portfolio(quote=cfg.market.quote, cash=0.0)
        self.counters = EventCounters()
        self.oms = OMS(self.bus, self.journal, self.venue, cfg.venue.retry, config=cfg.oms)
        self.gate = RiskGate(self.bus, cfg.risk, symbols=self.symbols, portfolio=self.portfolio,
                             oms=self.oms, markets=self.venue.markets, journal=self.journal,
                             interval_s=cfg.market.interval_s)
        # a replay passes an inline one (daemon/solver.py)
        self.solver = solver or SolverPool(cfg.rebalance.solver, cfg.rebalance.solve_timeout_s)
        extra = {"solve_fn": solve_fn} if solve_fn is not None else {}
        self.rebalancer = Rebalancer(
            self.bus, self.portfolio, self.oms, self.journal, self.symbols,
            cfg.market.interval_s, cfg.rebalance, cfg.allocation, self.venue.markets,
            self.solver, fee_rate=(cfg.exchange.fee_bps if cfg.daemon.mode == "testnet"
                                   else cfg.venue.paper.fee_bps) / 10_000.0, **extra)
        self.rebalancer.trading_state = lambda: self.gate.state.value
        self.rebalancer.participation_cap = self.gate.participation_cap
        self.rebalancer.order_room = self.gate.order_room
        self.fills_booked = 0
        self.rebalancer.fills_in_flight = lambda: self.oms.fills_published - self.fills_booked
        self.timestamps = 0
        self.start_nav: float | None = None
        self.services: list[Service] = [self.gate]  # the gate's stale-data heartbeat
        # crash safety first: the reconciler rebuilds orders and portfolio from the journal and
        # squares them with the venue before any other service or bar; the OMS stops last
        # (ends sends, cancels working orders)
        self.reconciler = Reconciler(self.oms, self.journal, self.venue, self.portfolio,
                                     self.bus, cfg.oms, cfg.market.quote, self.symbols)
        self.services[:0] = [self.oms, self.reconciler]
        # resume point: bars at or before it were seen by the venue before a restart (see _start)
        self.resume_after: datetime | None = None
        # set once start-up (venue, reconciliation, services) is complete: READY=1 for systemd
        self.started = asyncio.Event()
        self._wire()
        if cfg.strategies.enabled:  # targets from strategy files instead of solves
            from daemon.strategy_targets import attach as attach_strategies

            self.strategy_targets = attach_strategies(self)

    def _wire(self) -> None:
        bus = self.bus
        bus.subscribe("portfolio", {Bar: self.portfolio.mark, Fill: self._book_fill})
        bus.subscribe("risk_gate", {Bar: self.gate.on_bar, BarsClosed: self.gate.on_bars_closed,
                                    OrderIntent: self.gate.on_intent, Fill: self.gate.on_fill,
                                    OrderRejected: self.gate.on_order_rejected})
        bus.subscribe("oms", {OrderApproved: self.oms.on_approved})
        bus.subscribe("rebalancer", {Bar: self.rebalancer.on_bar,
                                     BarsClosed: self.rebalancer.on_bars_closed})
        bus.subscribe("journal", {RiskRejected: self.journal.record_rejection})
        bus.subscribe("counters", self.counters.handlers())

    def _book_fill(self, fill: Fill) -> None:
        self.portfolio.apply_fill(fill)
        self.fills_booked += 1

    async def _start(self) -> None:
        await self.venue.start()
        # the exchange's own taker fee (ccxt markets) beats a configured guess when it has one
        taker = getattr(self.venue, "taker_fee_rate", lambda: None)()
        if taker is not None:
            self.rebalancer.fee_rate = taker
        # the portfolio's opening state comes from the reconciler (a service, below). A venue
        # that remembers the last bar it saw (the paper venue) must never see it again: the
        # feed restarts from its first bar, so it is resumed after that one, and the pump gives
        # older bars to the bus only, as warm-up
        self.resume_after = getattr(self.venue, "last_bar_ts", None)
        self.feed = resume_feed(self.feed, self.resume_after,
                                warm=self.cfg.allocation.lookback_bars + 1)
        if self.solver.kind == "process":
            await self.solver.warm_up()
        await self.bus.start()
        for service in self.services:
            await service.start()
        log.info("started", mode=self.cfg.daemon.mode, symbols=self.symbols,
                 source=self.cfg.market.source, state_dir=str(self.cfg.state_path),
                 cash=self.portfolio.cash)

    async def _pump(self, max_bars: int | None, lockstep: bool) -> None:
        on_bars = getattr(self.venue, "on_bars", None)
        async for bars in self.feed.bars():
            if not bars:
                continue
            if self.resume_after is not None and bars[0].ts <= self.resume_after:
                for bar in bars:  # warm-up after a restart: history and marks, no venue
                    self.bus.publish(bar)
                continue
            if on_bars is not None:
                on_bars(bars)  # the venue's market moves before we see it
            closed = BarsClosed(ts=bars[0].ts, count=len(bars))
            self.timestamps += 1
            if lockstep:
                # publish and settle: the bus runs the handlers in this task when it can
                await self.bus.publish_settled([*bars, closed])
            else:
                for bar in bars:
                    self.bus.publish(bar)
                self.bus.publish(closed)
            if self.start_nav is None:
                await self.bus.settle()
                self.start_nav = self.portfolio.nav
            if max_bars is not None and self.timestamps >= max_bars:
                return

    async def run(self, max_bars: int | None = None,
                  stop: asyncio.Event | None = None) -> RunSummary:
        stop = stop or asyncio.Event()
        await self._start()
        self.started.set()
        lockstep = getattr(self.feed, "lockstep", None)
        if lockstep is None:
            speed = getattr(getattr(self.feed, "cfg", None), "speed", 0.0)
            lockstep = not speed
        if lockstep:  # throttles and staleness on bar time: a replay runs faster than live
            self.gate.use_market_time()
        pump = asyncio.create_task(self._pump(max_bars, bool(lockstep)), name="feed-pump")
        stopper = asyncio.create_task(stop.wait(), name="stop-signal")
        try:
            done, _ = await asyncio.wait({pump, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if pump in done and pump.exception() is not None:
                raise pump.exception()  # type: ignore[misc]
            if stopper in done:
                log.info("stopping", reason="signal")
        finally:
            # a bar arriving with SIGTERM can swallow one cancellation on Python 3.11, which
            # would keep the pump, and so the daemon, running: stop_task insists
            await stop_task(stopper)
            await stop_task(pump)
            await self._shutdown()
        return self.summary()

    async def _shutdown(self) -> None:
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception as exc:  # one failing service must not block the flush below
                log.error("service_stop_failed", service=service.name, error=str(exc))
        await self.bus.stop()
        self.solver.close()
        await self.feed.close()
        await self.venue.close()
        log.info("stopped", nav=round(self.portfolio.nav, 2), journal=str(self.journal.path),
                 **self.journal.counts())
        self.journal.close()

    def summary(self) -> RunSummary:
        c = self.counters
        return RunSummary(
            bars_per_symbol=self.timestamps,
            start_nav=self.start_nav if self.start_nav is not None else self.portfolio.nav,
            end_nav=self.portfolio.nav, rebalances=self.rebalancer.rebalances,
            orders=c.orders, fills=c.fills, fees=c.fees, risk_rejections=c.risk_rejections,
            venue_rejections=c.venue_rejections, handler_errors=self.bus.errors(),
            cash=self.portfolio.cash, weights=self.portfolio.weights(self.symbols),
            targets=dict(self.rebalancer.targets or {}),
            rejections_by_code=dict(c.rejections_by_code), journal_path=str(self.journal.path))
