"""Wires the parts into a running daemon and runs it until told to stop.

market feed → (venue sees the bars first) → bus: Bar, BarsClosed
  → portfolio (marks) · risk gate (last prices) · rebalancer (drift → solve → OrderIntent)
  → risk gate (OrderApproved | RiskRejected) → OMS (journal, venue) → venue fills
  → OMS (journal, Fill) → portfolio
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog

from adapters.feed import BarFeed
from adapters.paper import PaperVenue
from adapters.replay import ReplayFeed
from adapters.simulated import SimulatedMarket
from adapters.venue import Venue
from daemon.bus import EventBus
from daemon.config import Config
from daemon.counters import EventCounters
from daemon.events import (
    Bar,
    BarsClosed,
    Event,
    Fill,
    OrderApproved,
    OrderIntent,
    RiskRejected,
)
from daemon.journal import Journal
from daemon.oms import OMS
from daemon.portfolio import Portfolio
from daemon.rebalancer import Rebalancer
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
    if market.source == "replay":
        assert market.replay is not None  # MarketConfig.check demands it
        return ReplayFeed(replace(market.replay, symbols=list(market.symbols),
                                  interval_s=market.interval_s))
    return SimulatedMarket(replace(market.simulated, symbols=list(market.symbols),
                                   interval_s=market.interval_s))


class Daemon:
    def __init__(self, cfg: Config, *, feed: BarFeed | None = None, venue: Venue | None = None,
                 solve_fn: Callable[..., Any] | None = None) -> None:
        self.cfg = cfg
        self.feed = feed or build_feed(cfg)
        self.symbols = list(cfg.market.symbols)
        self.venue: Venue = venue or PaperVenue(cfg.venue.paper, self.symbols, cfg.market.quote)
        self.bus = EventBus()
        self.journal = Journal(cfg.state_path / "journal.sqlite")
        self.portfolio = Portfolio(quote=cfg.market.quote, cash=0.0)
        self.counters = EventCounters()
        self.oms = OMS(self.bus, self.journal, self.venue, cfg.venue.retry)
        self.gate = RiskGate(self.bus, cfg.risk)
        self.solver = SolverPool(cfg.rebalance.solver, cfg.rebalance.solve_timeout_s)
        extra = {"solve_fn": solve_fn} if solve_fn is not None else {}
        self.rebalancer = Rebalancer(
            self.bus, self.portfolio, self.oms, self.journal, self.symbols,
            cfg.market.interval_s, cfg.rebalance, cfg.allocation, self.venue.markets,
            self.solver, fee_rate=cfg.venue.paper.fee_bps / 10_000.0, **extra)
        self.timestamps = 0
        self.start_nav: float | None = None
        self.services: list[Service] = []
        self._wire()

    def _wire(self) -> None:
        bus = self.bus
        bus.subscribe("portfolio", {Bar: self.portfolio.mark, Fill: self.portfolio.apply_fill})
        bus.subscribe("risk_gate", {Bar: self.gate.on_bar, OrderIntent: self.gate.on_intent})
        bus.subscribe("oms", {OrderApproved: self.oms.on_approved})
        bus.subscribe("rebalancer", {Bar: self.rebalancer.on_bar,
                                     BarsClosed: self.rebalancer.on_bars_closed})
        bus.subscribe("journal", {RiskRejected: self.journal.record_rejection})
        bus.subscribe("counters", {Event: self.counters.on_event})

    async def _start(self) -> None:
        await self.venue.start()
        balances = await self.venue.balances()
        self.portfolio.cash = balances.get(self.cfg.market.quote, 0.0)
        for symbol in self.symbols:
            qty = balances.get(symbol.split("/")[0], 0.0)
            if qty:
                self.portfolio.positions[symbol] = qty
        if self.cfg.rebalance.solver == "process":
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
            if on_bars is not None:
                on_bars(bars)  # the venue's market moves before we see it
            for bar in bars:
                self.bus.publish(bar)
            self.bus.publish(BarsClosed(ts=bars[0].ts, count=len(bars)))
            self.timestamps += 1
            if lockstep:
                await self.bus.settle()
            if self.start_nav is None:
                await self.bus.settle()
                self.start_nav = self.portfolio.nav
            if max_bars is not None and self.timestamps >= max_bars:
                return

    async def run(self, max_bars: int | None = None,
                  stop: asyncio.Event | None = None) -> RunSummary:
        stop = stop or asyncio.Event()
        await self._start()
        lockstep = getattr(self.feed, "lockstep", None)
        if lockstep is None:
            speed = getattr(getattr(self.feed, "cfg", None), "speed", 0.0)
            lockstep = not speed
        pump = asyncio.create_task(self._pump(max_bars, bool(lockstep)), name="feed-pump")
        stopper = asyncio.create_task(stop.wait(), name="stop-signal")
        try:
            done, _ = await asyncio.wait({pump, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if pump in done and pump.exception() is not None:
                raise pump.exception()  # type: ignore[misc]
            if stopper in done:
                log.info("stopping", reason="signal")
        finally:
            for task in (pump, stopper):
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(pump, stopper, return_exceptions=True)
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
