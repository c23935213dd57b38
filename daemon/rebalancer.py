"""The rebalancer: watches drift on every complete cross-section of bars, re-solves target
weights off the event loop when drift leaves the band, and proposes the orders that close it.

Drift counts working orders: an order already sent for a drift is part of the position, so the
same drift never triggers a second trade while the first is still working.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import structlog

from daemon.bus import EventBus
from daemon.events import Bar, BarsClosed, OrderIntent, OrderType, TargetWeights
from daemon.history import CloseHistory
from daemon.journal import Journal
from daemon.oms import OMS
from daemon.portfolio import Portfolio
from daemon.solver import SolverPool
from risk.allocation import AllocationConfig, SolveError, solve
from risk.market_rules import MarketRules
from risk.trade_plan import drift, plan_orders

log = structlog.get_logger("rebalancer")


@dataclass(frozen=True)
class RebalanceConfig:
    band: float = field(default=0.05, metadata={
        "doc": "re-solve and trade when any asset's weight is this far from its target "
               "(absolute, as a fraction of NAV)", "min": 0.0, "exclusive_min": True,
        "max": 1.0})
    min_trade_notional: float = field(default=20.0, metadata={
        "doc": "skip any trade smaller than this, quote currency", "min": 0.0})
    max_child_notional: float = field(default=10_000.0, metadata={
        "doc": "split larger trades into child orders of at most this notional; keep it below "
               "risk.max_order_notional", "min": 0.0, "exclusive_min": True})
    solver: Literal["process", "thread"] = field(default="process", metadata={
        "doc": "where solves run: a worker process (never stalls the loop) or a thread"})
    solve_timeout_s: float = field(default=60.0, metadata={
        "doc": "a solve taking longer is abandoned; the last good targets stay",
        "min": 0.1, "max": 3600.0})


SolveFn = Callable[..., Any]


class Rebalancer:
    def __init__(self, bus: EventBus, portfolio: Portfolio, oms: OMS, journal: Journal,
                 symbols: list[str], interval_s: int, cfg: RebalanceConfig,
                 allocation: AllocationConfig, rules: Callable[[], dict[str, MarketRules]],
                 solver: SolverPool, fee_rate: float, solve_fn: SolveFn = solve) -> None:
        self.bus = bus
        self.portfolio = portfolio
        self.oms = oms
        self.journal = journal
        self.symbols = list(symbols)
        self.interval_s = interval_s
        self.cfg = cfg
        self.allocation = allocation
        self.rules = rules
        self.solver = solver
        self.fee_rate = fee_rate
        self.solve_fn = solve_fn
        self.history = CloseHistory(symbols, allocation.lookback_bars + 1)
        self.targets: dict[str, float] | None = None
        self.solving = False
        self.completion_due: str | None = None  # decision whose buys wait for its sells
        self.bars_seen = 0
        self.rebalances = 0
        self.solve_failures = 0

    def on_bar(self, bar: Bar) -> None:
        self.bars_seen += 1
        self.history.add(bar.symbol, bar.ts, bar.close)

    def on_bars_closed(self, event: BarsClosed) -> None:
        if self.solving:
            return
        if self.completion_due is not None and self.targets is not None:
            if not self.oms.working():
                decision, self.completion_due = self.completion_due, None
                self._trade_to_targets(event.ts, f"completion of decision {decision}")
            return
        if self.targets is None:
            if self.history.length > self.allocation.lookback_bars:
                self._start_solve(event.ts, "initial")
            return
        current = self.effective_weights()
        drifts = drift(current, self.targets)
        worst = max(drifts, key=lambda s: abs(drifts[s]))
        if abs(drifts[worst]) > self.cfg.band:
            self._start_solve(event.ts, f"drift {worst} {drifts[worst]:+.4f} > band "
                                        f"{self.cfg.band:.4f}")

    def effective_weights(self) -> dict[str, float]:
        """Weights counting working orders as if filled at the last price."""
        nav = self.portfolio.nav
        working = self.oms.working_quantity()
        out = {}
        for s in self.symbols:
            qty = self.portfolio.positions.get(s, 0.0) + working.get(s, 0.0)
            out[s] = qty * self.portfolio.prices.get(s, 0.0) / nav if nav > 0 else 0.0
        return out

    def _start_solve(self, ts: datetime, reason: str) -> None:
        self.solving = True
        returns = self.history.returns(self.allocation.lookback_bars)
        self.bus.track(self._solve_and_trade(ts, reason, returns), name="rebalance-solve")

    async def _solve_and_trade(self, ts: datetime, reason: str, returns: Any) -> None:
        started = time.perf_counter()
        try:
            allocation = await self.solver.run(self.solve_fn, returns, self.allocation,
                                               self.interval_s)
        except SolveError as exc:
            self.solve_failures += 1
            log.warning("solve_failed", reason=str(exc), trigger=reason,
                        kept_targets=self.targets, failures=self.solve_failures)
            return
        finally:
            self.solving = False
        elapsed = time.perf_counter() - started
        old = self.targets
        self.targets = dict(allocation.weights)
        log.info("targets_solved", method=self.allocation.method, trigger=reason,
                 span_start=str(returns.index[0]), span_end=str(returns.index[-1]),
                 bars=len(returns), expected_return=round(allocation.expected_return, 4),
                 volatility=round(allocation.volatility, 4),
                 sharpe=round(allocation.sharpe, 3), solve_s=round(elapsed, 3),
                 old_targets=old, new_targets={k: round(v, 4) for k, v in self.targets.items()})
        self.bus.publish(TargetWeights(ts=ts, weights=self.targets, method=self.allocation.method,
                                       reason=reason,
                                       stats={"expected_return": allocation.expected_return,
                                              "volatility": allocation.volatility,
                                              "sharpe": allocation.sharpe,
                                              "solve_seconds": elapsed}))
        self._trade_to_targets(ts, reason)

    def _trade_to_targets(self, ts: datetime, reason: str) -> None:
        assert self.targets is not None
        working = self.oms.working_quantity()
        positions = {s: self.portfolio.positions.get(s, 0.0) + working.get(s, 0.0)
                     for s in self.symbols}
        plan = plan_orders(nav=self.portfolio.nav, cash=self.portfolio.cash, positions=positions,
                           prices=self.portfolio.prices, targets=self.targets,
                           rules=self.rules(), min_trade_notional=self.cfg.min_trade_notional,
                           fee_rate=self.fee_rate,
                           max_child_notional=self.cfg.max_child_notional)
        if not plan.orders:
            log.info("rebalance_skipped", reason="no trade above minimum notional", trigger=reason)
            return
        decision = self.journal.next_sequence("decision_seq")
        decision_id = f"{decision:06d}"
        self.rebalances += 1
        log.info("rebalance", decision_id=decision_id, trigger=reason,
                 orders=[f"{o.side} {o.quantity} {o.symbol}" for o in plan.orders],
                 buys_deferred=plan.buys_deferred)
        if plan.buys_deferred:
            self.completion_due = decision_id
        for i, order in enumerate(plan.orders):
            self.bus.publish(OrderIntent(
                client_order_id=client_order_id(decision_id, order.symbol, order.side.value, i),
                symbol=order.symbol, side=order.side, quantity=order.quantity,
                order_type=OrderType.MARKET, reference_price=order.reference_price, ts=ts,
                decision_id=decision_id, reason=reason))


def client_order_id(decision_id: str, symbol: str, side: str, index: int) -> str:
    """Deterministic, venue-safe (Binance: [.A-Z:/a-z0-9_-]{1,36}) and unique across runs
    because decision ids come from a persistent counter in the journal."""
    return f"td-{decision_id}-{symbol.replace('/', '')}-{side[0]}{index}"[:36]
