"""The rebalancer: keeps target weights fresh and trades towards them only when it pays.

Two separate loops, both driven by complete cross-sections of bars (`BarsClosed`):

- Estimation: target weights are re-solved off the event loop on a schedule or a volatility
  regime change (`risk/resolve_schedule.py`), never because the portfolio drifted. A failed
  solve keeps the last good targets and sends nothing; too little history applies the
  allocation's `on_short_history` (equal weight, or hold).
- Trading: on every bar, drift against the current targets goes through the drift rules and the
  calendar fallback (`risk/triggers.py`), the cooldown, the trade policy (target, band edge or a
  fraction of the way: `risk/rebalance_policy.py`), the discrete quantities (`risk/trade_plan.py`)
  and the cost test. Each decision is logged once as `rebalance`; a skipped one as
  `rebalance_skipped` with its reason, at info when the reason changes and at debug otherwise.

Drift counts working orders: an order already sent for a drift is part of the position, so the
same drift never triggers a second trade while the first is still working.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
import structlog

from daemon import logs
from daemon.bus import EventBus
from daemon.events import Bar, BarsClosed, OrderIntent, OrderType, Side, TargetWeights
from daemon.history import CloseHistory
from daemon.journal import Journal
from daemon.oms import OMS
from daemon.order_state import OrderState
from daemon.portfolio import Portfolio
from daemon.solver import SolverPool
from risk import rebalance_policy as policy
from risk import triggers
from risk.allocation import (
    Allocation,
    AllocationConfig,
    InsufficientHistory,
    ReturnsWindow,
    SolveError,
    fallback_equal_weight,
    periods_per_year,
    solve,
)
from risk.market_rules import MarketRules
from risk.rebalance_policy import CostConfig, PolicyConfig
from risk.resolve_schedule import ScheduleConfig, realised_vol, resolve_reason
from risk.trade_plan import (
    TradePlan,
    cap_order_count,
    cap_participation,
    drift,
    limit_price,
    plan_orders,
    weights_after,
)
from risk.triggers import TriggerConfig

log = structlog.get_logger("rebalancer")

BPS = 10_000.0
LAST_REBALANCE_KEY = "rebalancer.last_rebalance_at"  # journal meta: ISO time of the last one


@dataclass(frozen=True)
class RebalanceConfig:
    band: float = field(default=0.05, metadata={
        "doc": "absolute band: the absolute and five_twenty_five rules fire when an asset's "
               "weight is further than this from its target (fraction of NAV)",
        "min": 0.0, "exclusive_min": True, "max": 1.0})
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
    trigger: TriggerConfig = field(default_factory=TriggerConfig, metadata={
        "doc": "when drift triggers a rebalance: rules, calendar fallback, cooldown"})
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig, metadata={
        "doc": "when target weights are re-solved"})
    policy: PolicyConfig = field(default_factory=PolicyConfig, metadata={
        "doc": "how far to trade and with which orders"})
    cost: CostConfig = field(default_factory=CostConfig, metadata={
        "doc": "cost test: skip rebalances that cost more than they remove"})


SolveFn = Callable[..., Any]


@dataclass(frozen=True)
class Skip:
    code: str  # within_bands | cooldown | rejected_retry | nothing_to_trade | cost_exceeds_benefit
    detail: str


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
        self.ppy = periods_per_year(interval_s)
        self.cfg = cfg
        self.allocation = allocation
        self.rules = rules
        self.solver = solver
        self.fee_rate = fee_rate
        self.solve_fn = solve_fn
        self._takes_previous = _accepts_previous(solve_fn)
        depth = max(allocation.lookback_bars, cfg.schedule.vol_window_bars)
        self.history = CloseHistory(symbols, depth + 1)
        self.targets: dict[str, float] | None = None
        self.solving = False
        self.bars_seen = 0  # Bar events
        self.bar_index = 0  # BarsClosed events: the clock of schedules and cooldowns
        self.rebalances = 0  # decisions that sent orders (completion legs not counted)
        self.solve_failures = 0
        self.skips: Counter[str] = Counter()
        self.last_decision: dict[str, Any] | None = None
        self._last_attempt: int | None = None
        self._last_success: int | None = None
        self._failed_last = False
        self._fallback_targets = False  # targets came from on_short_history = equal_weight
        self._vol_at_solve: float | None = None
        self._targets_since: datetime | None = None
        self._traded_targets: dict[str, float] | None = None  # targets of the last rebalance
        self._last_rebalance_bar: int | None = None
        self._last_rebalance_ts: datetime | None = None
        # the last rebalance of a previous run (journal meta), taken in at the first complete
        # bar at or after it: a restart must not reset the cooldown nor the calendar fallback
        # (a daemon redeployed weekly would never reach a monthly calendar rebalance)
        self._restored_rebalance = _stored_time(journal, LAST_REBALANCE_KEY)
        self._completion: tuple[str, dict[str, float]] | None = None  # decision, weights
        self._limit_sent: dict[str, int] = {}  # client order id -> bar index sent
        self._last_skip: str | None = None
        self._last_sent: list[str] = []  # client order ids of the last rebalance decision
        self._requested: str | None = None
        self._cov_cache: tuple[int, tuple[list[str], np.ndarray] | None] | None = None
        self._solves_paused = False  # a scheduled solve was held back while HALTED
        # `_quiet`'s view of the targets, rebuilt when they are replaced (see `_QuietBands`)
        self._bands_cache: _QuietBands | None = None
        # `_quiet` and `_halted_repeat`: off, every bar takes `decide`'s full path
        # (tests/test_rebalancer_shortcuts.py compares the two bar by bar)
        self.shortcuts = True
        # targets come from set_external_targets (daemon/strategy_targets.py): never solve
        self.external_targets = False
        # the risk gate's trading state (ACTIVE | REDUCING | HALTED), wired by the app: orders
        # the gate would refuse anyway are not proposed, so a halt does not become a flood of
        # rejections (and the rejection-burst rule is kept for real trouble)
        self.trading_state: Callable[[], str] = lambda: "ACTIVE"
        # fills the OMS has journaled but the portfolio has not booked yet (live venues report
        # an order FILLED before its Fill crosses the bus): cash and positions are stale then,
        # and a decision on them could buy with money already spent
        self.fills_in_flight: Callable[[], int] = lambda: 0
        # most of a symbol one decision may trade (the gate's participation limit), wired by
        # the app; the drift beyond it is traded on later bars
        self.participation_cap: Callable[[str], float] = lambda symbol: math.inf
        # how many more orders (of a symbol, or in total with None) the gate's order throttles
        # pass now, wired by the app: a decision sends no more (risk_gate.order_room)
        self.order_room: Callable[[str | None], int] = lambda symbol: 1 << 30

    # -- operator ---------------------------------------------------------------------------
    def request_rebalance(self, reason: str) -> str:
        """Force a re-solve and a trade back to target on the next complete bar, past the drift
        rules, cooldown and cost test (`tradingd rebalance-now`)."""
        self._requested = reason or "operator request"
        log.info("rebalance_requested", reason=self._requested)
        return "re-solve, then trade to target at the next complete bar"

    def set_external_targets(self, weights: Mapping[str, float], reason: str) -> None:
        """Replace the targets with weights computed elsewhere (allocation across strategies);
        the drift rules and trade policy then act on them from the next complete bar."""
        self.external_targets = True
        old = self.targets
        self.targets = {s: float(weights.get(s, 0.0)) for s in self.symbols}
        self._last_success, self._failed_last, self._fallback_targets = self.bar_index, False, False
        log.info("targets_external", reason=reason, old_targets=_rounded(old),
                 new_targets=_rounded(self.targets))

    # -- bus handlers -----------------------------------------------------------------------
    def on_bar(self, bar: Bar) -> None:
        self.bars_seen += 1
        self.history.add(bar.symbol, bar.ts, bar.close)

    def on_bars_closed(self, event: BarsClosed) -> None:
        self.bar_index += 1
        if self._restored_rebalance is not None and event.ts >= self._restored_rebalance:
            self._take_in_restored(event.ts)
        self._expire_limit_orders()
        if self.solving:
            return
        if self._completion is not None:
            if not self.oms.working() and self.fills_in_flight() == 0:
                self._complete(event.ts)
            return
        if self._requested is not None:
            reason, self._requested = self._requested, None
            self._start_solve(event.ts, f"requested: {reason}", forced=True)
            return
        if self.targets is not None and str(self.trading_state()) == "HALTED":
            # nothing can trade on new targets until an operator (or fresh data) resumes:
            # scheduled re-solves wait (a replay halted for years spent a fifth of its time
            # solving). The schedule keeps counting from the last attempt, so the first bar
            # after the resume re-solves at once if a solve fell due meanwhile. A daemon
            # started halted still makes its initial solve: status shows targets, and the
            # decision path reports the halt.
            if not self._solves_paused and self._solve_due() is not None:
                self._solves_paused = True
                log.info("solves_paused", reason="trading HALTED",
                         resume="the first bar after the resume re-solves")
        else:
            why = self._solve_due()
            if why is not None:
                if self._solves_paused:
                    self._solves_paused = False
                    log.info("solves_resumed", trigger=why)
                self._start_solve(event.ts, why)
                return
        if self.targets is not None:
            self.decide(event.ts)

    def _take_in_restored(self, ts: datetime) -> None:
        """The previous run's last rebalance as if this run had made it, counted in bars of
        this run's clock (warm-up bars older than it come first and do not count)."""
        restored, self._restored_rebalance = self._restored_rebalance, None
        assert restored is not None
        if self._last_rebalance_ts is not None and self._last_rebalance_ts >= restored:
            return
        bars = int((ts - restored).total_seconds() // self.interval_s)
        self._last_rebalance_bar, self._last_rebalance_ts = self.bar_index - bars, restored
        log.info("rebalance_clock_restored", last_rebalance_at=restored.isoformat(),
                 bars_since=bars)

    # -- weights ----------------------------------------------------------------------------
    def effective_weights(self) -> dict[str, float]:
        """Weights counting working orders as if filled at the last price."""
        portfolio = self.portfolio
        nav = portfolio.nav
        if not nav > 0:
            return dict.fromkeys(self.symbols, 0.0)
        # `_effective_positions` inline (every bar): the same sums, in the same order
        held, prices = portfolio.positions, portfolio.prices
        working = self.oms.working_quantity()
        return {s: (held.get(s, 0.0) + working.get(s, 0.0)) * prices.get(s, 0.0) / nav
                for s in self.symbols}

    def _effective_positions(self) -> dict[str, float]:
        working = self.oms.working_quantity()
        return {s: self.portfolio.positions.get(s, 0.0) + working.get(s, 0.0)
                for s in self.symbols}

    def _free_cash(self) -> float:
        """Cash not promised to working buys (the venue holds it for them)."""
        committed = sum(o.remaining * (o.intent.limit_price or o.intent.reference_price)
                        * (1 + self.fee_rate)
                        for o in self.oms.working() if o.intent.side is Side.BUY)
        return self.portfolio.cash - committed

    # -- estimation -------------------------------------------------------------------------
    def _history_rows(self) -> int:
        return max(min(self.history.length, self.allocation.lookback_bars + 1) - 1, 0)

    def _solve_due(self) -> str | None:
        if self.external_targets:
            return None
        rows = self._history_rows()
        enough = rows >= self.allocation.min_history_bars
        since_attempt = None if self._last_attempt is None else self.bar_index - self._last_attempt
        if self.targets is None:
            if self._last_attempt is not None and self._failed_last \
                    and since_attempt is not None \
                    and since_attempt < self.cfg.schedule.retry_after_bars:
                return None
            if enough:
                return "initial"
            if self.allocation.on_short_history == "equal_weight" and self.history.length:
                return "initial (short history)"
            return None
        if self._fallback_targets:
            # equal weight until the history suffices: re-solving before would change nothing
            return f"history now sufficient ({rows} bars)" if enough else None
        since_success = None if self._last_success is None else \
            self.bar_index - self._last_success
        vol_now = self._realised_vol() if self.cfg.schedule.vol_change else None
        return resolve_reason(self.cfg.schedule, since_attempt, since_success, self._failed_last,
                              vol_now, self._vol_at_solve)

    def _start_solve(self, ts: datetime, reason: str, forced: bool = False) -> None:
        if self.external_targets:  # an operator request: nothing to solve, trade to target
            if self.targets is not None:
                self.decide(ts, forced=forced)
            return
        self._last_attempt = self.bar_index
        returns = self.history.window(self.allocation.lookback_bars)
        if len(returns) < self.allocation.min_history_bars:
            # the solve would raise this too: decide here instead of a worker round trip
            short = InsufficientHistory(needed=self.allocation.min_history_bars,
                                        got=len(returns))
            self._on_short_history(ts, reason, short, returns, forced)
            return
        current = self.effective_weights()
        # the turnover cap is about trading away from holdings; deploying cash is not turnover
        previous = current if sum(abs(w) for w in current.values()) > 1e-9 else None
        self.solving = True
        self.bus.track(self._solve(ts, reason, returns, previous, forced), name="rebalance-solve")

    async def _solve(self, ts: datetime, reason: str, returns: ReturnsWindow,
                     previous: dict[str, float] | None, forced: bool) -> None:
        started = time.perf_counter()
        # `solve` takes the window as it is; another solve function gets the DataFrame the
        # rebalancer always passed
        given = returns if self.solve_fn is solve else returns.frame()
        args: tuple[Any, ...] = (given, self.allocation, self.interval_s)
        if self._takes_previous:
            args = (*args, previous)
        try:
            allocation = await self.solver.run(self.solve_fn, *args)
        except InsufficientHistory as exc:
            self.solving = False
            self._on_short_history(ts, reason, exc, returns, forced)
            return
        except SolveError as exc:
            self.solving = False
            self.solve_failures += 1
            self._failed_last = True
            log.warning("solve_failed", reason=str(exc), trigger=reason,
                        method=self.allocation.method, kept_targets=_rounded(self.targets),
                        failures=self.solve_failures, orders="none from this solve")
            return
        finally:
            self.solving = False
        self._install(ts, allocation, reason, returns, time.perf_counter() - started,
                      previous is not None)
        self._fallback_targets = False
        self.decide(ts, forced=forced)

    def _on_short_history(self, ts: datetime, reason: str, exc: InsufficientHistory,
                          returns: ReturnsWindow, forced: bool) -> None:
        self._failed_last = True  # a retry waits for retry_after_bars or enough history
        if self.allocation.on_short_history == "hold":
            log.info("short_history", decision="hold", trigger=reason, needed=exc.needed,
                     got=exc.got, kept_targets=_rounded(self.targets))
            return
        assets = [s for s in self.symbols if self.portfolio.prices.get(s)]
        if not assets:
            log.info("short_history", decision="equal_weight", trigger=reason,
                     needed=exc.needed, got=exc.got, outcome="no priced market yet")
            return
        fallback = fallback_equal_weight(assets, self.allocation, returns.span())
        log.info("short_history", decision="equal_weight", trigger=reason, needed=exc.needed,
                 got=exc.got, assets=len(assets))
        self._install(ts, fallback, f"{reason}; {exc}", returns, 0.0, False)
        self._fallback_targets = True
        self.decide(ts, forced=forced)

    def _install(self, ts: datetime, allocation: Allocation, reason: str,
                 returns: ReturnsWindow, elapsed: float, with_previous: bool) -> None:
        old = self.targets
        self.targets = {k: float(v) for k, v in allocation.weights.items()}
        self._last_success = self.bar_index
        self._failed_last = False
        if self._targets_since is None:
            self._targets_since = ts
        self._vol_at_solve = self._realised_vol()
        method = allocation.method or self.allocation.method
        span = allocation.span or returns.span()
        log.info("targets_solved", method=method, trigger=reason,
                 span_start=span[0] if span else None, span_end=span[1] if span else None,
                 bars=len(returns), expected_return=_finite(allocation.expected_return, 4),
                 volatility=_finite(allocation.volatility, 4),
                 sharpe=_finite(allocation.sharpe, 3), solve_s=round(elapsed, 3),
                 solver_s=round(allocation.solve_seconds, 3),
                 turnover=_finite(allocation.turnover, 4) if allocation.turnover is not None
                 else None, previous_given=with_previous, notes=list(allocation.notes),
                 old_targets=_rounded(old), new_targets=_rounded(self.targets))
        self.bus.publish(TargetWeights(ts=ts, weights=dict(self.targets), method=method,
                                       reason=reason,
                                       stats={"expected_return": allocation.expected_return,
                                              "volatility": allocation.volatility,
                                              "sharpe": allocation.sharpe,
                                              "solve_seconds": elapsed}))

    def _returns_matrix(self, lookback: int) -> ReturnsWindow:
        return self.history.window(lookback)

    def _realised_vol(self) -> float | None:
        if self.targets is None:
            return None
        r = self._returns_matrix(self.cfg.schedule.vol_window_bars)
        if len(r) < 2:
            return None
        w = np.array([self.targets.get(a, 0.0) for a in r.assets])
        return realised_vol(r.values, w, self.ppy)

    def _covariance(self) -> tuple[list[str], np.ndarray] | None:
        """Sample covariance of per-bar returns over the allocation's lookback, once per bar."""
        if self._cov_cache is not None and self._cov_cache[0] == self.bar_index:
            return self._cov_cache[1]
        r = self._returns_matrix(self.allocation.lookback_bars)
        out = None
        if len(r) >= 2 and r.assets:
            cov = np.atleast_2d(np.cov(r.values, rowvar=False))
            out = (list(r.assets), cov)
        self._cov_cache = (self.bar_index, out)
        return out

    def _te(self, drifts: Mapping[str, float]) -> float | None:
        cov = self._covariance()
        if cov is None:
            return None
        return triggers.tracking_error(drifts, cov[0], cov[1], self.ppy)

    # -- trading ----------------------------------------------------------------------------
    def decide(self, ts: datetime, forced: bool = False) -> None:
        """One trading decision against the current targets: trade, or log why not."""
        assert self.targets is not None
        tcfg, pcfg = self.cfg.trigger, self.cfg.policy
        targets = self.targets
        if not forced and self.shortcuts and self._quiet(ts, targets):
            return
        current = self.effective_weights()
        drifts = drift(current, targets)
        bands = triggers.asset_bands({s: targets.get(s, 0.0) for s in drifts}, tcfg.rules,
                                     self.cfg.band, tcfg.relative_band)
        needs_te = ("portfolio" in tcfg.rules and tcfg.portfolio_measure == "tracking_error") \
            or self.cfg.cost.max_cost_share > 0
        te = self._te(drifts) if needs_te else None
        check = triggers.check_drift(drifts, bands, tcfg, te)
        invested = sum(max(w, 0.0) for w in current.values())
        target_invested = sum(max(t, 0.0) for t in targets.values())
        since = self._last_rebalance_ts or self._targets_since or ts
        days = (ts - since).total_seconds() / 86_400.0
        mode: str = pcfg.mode
        exempt = True  # from cooldown and cost test
        if forced:
            reasons, mode = ["requested by operator"], "target"
        elif invested < 0.5 * target_invested:
            # a no-trade region is meaningless when deploying cash: go to target
            reasons, mode = [f"deploy: invested {invested:.1%} of NAV, targets "
                             f"{target_invested:.1%}"], "target"
        elif check.fired:
            reasons, exempt = list(check.reasons), False
        elif triggers.calendar_due(days, check.max_abs_drift, tcfg):
            # no band was breached, so there is no edge to trade to
            reasons, exempt = [f"calendar: {days:.1f} days since the last rebalance, max "
                               f"|drift| {check.max_abs_drift:.4f}"], False
            mode = "target" if mode == "edge" else mode
        else:
            self._skip(Skip("within_bands", f"max |drift| {check.max_abs_drift:.4f}"), check)
            return
        since_bar = None if self._last_rebalance_bar is None else \
            self.bar_index - self._last_rebalance_bar
        if not forced and since_bar is not None and since_bar < tcfg.rejected_retry_bars \
                and self._nothing_reached_the_market():
            # the gate or venue refused the whole last decision: sending it again every bar
            # would only flood them (and trip the gate's rejection-burst halt)
            self._skip(Skip("rejected_retry", f"every order of the last rebalance was "
                            f"rejected; retry in {tcfg.rejected_retry_bars - since_bar} bars; "
                            f"trigger: {'; '.join(reasons)}"), check)
            return
        if not exempt:
            left = triggers.cooldown_left(since_bar, tcfg)
            if left:
                self._skip(Skip("cooldown", f"{left} bars left; trigger: {'; '.join(reasons)}"),
                           check)
                return
        if self.fills_in_flight() > 0:
            self._skip(Skip("fills_in_flight", f"{self.fills_in_flight()} fills not yet "
                            f"booked; trigger: {'; '.join(reasons)}"), check)
            return
        state = str(self.trading_state())
        if state == "HALTED" and not forced:
            self._skip(Skip("trading_halted", "the risk gate is HALTED: no new orders; "
                            f"trigger: {'; '.join(reasons)}"), check)
            return
        goal = self._policy_weights(mode, current, targets, bands)
        plan = self._plan(goal)
        if state == "REDUCING":
            plan = self._reducing_only(plan)
        if not plan.orders:
            self._skip(Skip("nothing_to_trade", "every trade is below the minimum notional or "
                            f"one lot; trigger: {'; '.join(reasons)}"), check)
            return
        nav = self.portfolio.nav
        positions = self._effective_positions()
        after = weights_after(plan, nav, positions, self.portfolio.prices)
        te_after = self._te(drift(after, targets)) if te is not None else None
        cost = policy.estimated_cost((o.notional for o in plan.orders), nav, self.fee_rate,
                                     self.cfg.cost.slippage_bps)
        verdict = policy.cost_test(cost, te, te_after,
                                   0.0 if exempt else self.cfg.cost.max_cost_share)
        if not verdict.passed:
            self._skip(Skip("cost_exceeds_benefit", f"{verdict.reason}; trigger: "
                            f"{'; '.join(reasons)}"), check)
            return
        decision_id = self._send(ts, plan, "; ".join(reasons))
        self._last_sent = [client_order_id(decision_id, o.symbol, o.side.value, i)
                           for i, o in enumerate(plan.orders)]
        self.rebalances += 1
        self._last_rebalance_bar, self._last_rebalance_ts = self.bar_index, ts
        self.journal.set_meta(LAST_REBALANCE_KEY, ts.isoformat())
        self._last_skip = None
        if plan.buys_deferred:
            self._completion = (decision_id, goal)
        self.last_decision = {
            "decision_id": decision_id, "trigger": reasons, "mode": mode,
            "drifts": _rounded(drifts), "breaches": {s: round(d, 4) for s, (d, _) in
                                                     check.breaches.items()},
            "sum_abs_drift": round(check.sum_abs_drift, 4),
            "old_targets": _rounded(self._traded_targets), "new_targets": _rounded(targets),
            "trade_to": _rounded(goal),
            "orders": [_describe(o, self._order_type(), self._limit(o)) for o in plan.orders],
            "est_cost_bps": round(cost * BPS, 3),
            "te_before_bps": _bps(te), "te_after_bps": _bps(te_after),
            "cost_test": verdict.reason, "buys_deferred": plan.buys_deferred}
        self._traded_targets = dict(targets)
        log.info("rebalance", **self.last_decision)

    def _quiet(self, ts: datetime, targets: dict[str, float]) -> bool:
        """The common bar, cheaply; True when it is dealt with, False sends `decide` down its
        full path. Two cases:

        - within bands (no asset outside its band, not deploying cash, no calendar rebalance
          due): counted as `within_bands` exactly as `decide` would, its line built only when
          it would be written (the reason changed, or debug is on);
        - anything else while trading is HALTED, when the skip `decide` would end in repeats
          the last one (`_halted_repeat`).

        The weights are `effective_weights`' and the drifts `drift`'s, the same floats from
        the same operations in the same order, only without the dicts: a bar's band test has
        to see every price move, so nothing is carried from the last bar but the bands.
        Only for the asset rules alone: a portfolio rule or the cost test needs the tracking
        error of the drifts."""
        tcfg = self.cfg.trigger
        if "portfolio" in tcfg.rules or self.cfg.cost.max_cost_share > 0:
            return False
        bands = self._bands_cache
        # targets are replaced, never changed in place: the bands hold as long as the targets
        # object does
        if bands is None or bands.targets is not targets:
            bands = self._bands_cache = _QuietBands.of(targets, self.symbols, self.cfg.band,
                                                       tcfg)
        portfolio = self.portfolio
        nav = portfolio.nav
        if nav > 0:
            held, prices = portfolio.positions, portfolio.prices
            working = self.oms.working_quantity()
            weights = [(held.get(s, 0.0) + working.get(s, 0.0)) * prices.get(s, 0.0) / nav
                       for s in bands.symbols]
        else:
            weights = [0.0] * len(bands.symbols)
        # `max(w, 0.0)` (the same value, NaN and -0.0 included), summed in `current`'s order
        deploying = sum([0.0 if w < 0.0 else w for w in weights]) < bands.half_invested
        breached = False
        for k, t, limit in bands.rows:
            if abs((weights[k] if k >= 0 else 0.0) - t) > limit:
                breached = True
                break
        if deploying or breached:
            # past the band test `decide` trades (deploying cash exempts from the cooldown)
            return self._halted_repeat(exempt=deploying)
        calendar = tcfg.calendar_days > 0
        if not calendar and self._last_skip == "within_bands" \
                and not logs.enabled(logging.DEBUG):
            self.skips["within_bands"] += 1  # what `_skip` does with a repeat it does not log
            return True
        abs_drifts = [abs((weights[k] if k >= 0 else 0.0) - t) for k, t, _ in bands.rows]
        max_abs = max(abs_drifts, default=0.0)
        if calendar:
            since = self._last_rebalance_ts or self._targets_since or ts
            days = (ts - since).total_seconds() / 86_400.0
            if triggers.calendar_due(days, max_abs, tcfg):
                return self._halted_repeat(exempt=False)
        check = triggers.TriggerCheck(reasons=(), breaches={}, max_abs_drift=max_abs,
                                      sum_abs_drift=float(sum(abs_drifts)),
                                      tracking_error=None)
        self._skip(Skip("within_bands", f"max |drift| {max_abs:.4f}"), check)
        return True

    def _halted_repeat(self, exempt: bool) -> bool:
        """While HALTED, `decide` past its band test can only skip: for `rejected_retry`,
        `cooldown`, `fills_in_flight` or `trading_halted`, tested in `decide`'s order. When that
        skip repeats the last one, its line is at debug: with debug off, only the count is
        left, and the trigger's texts, the trade plan and the logger are spared. True when
        counted here; False sends `decide` down its full path (which also logs a change)."""
        if not self.shortcuts or self._last_skip is None \
                or str(self.trading_state()) != "HALTED" \
                or logs.enabled(logging.DEBUG):
            return False
        tcfg = self.cfg.trigger
        since_bar = None if self._last_rebalance_bar is None else \
            self.bar_index - self._last_rebalance_bar
        if since_bar is not None and since_bar < tcfg.rejected_retry_bars \
                and self._nothing_reached_the_market():
            code = "rejected_retry"
        elif not exempt and triggers.cooldown_left(since_bar, tcfg):
            code = "cooldown"
        elif self.fills_in_flight() > 0:
            code = "fills_in_flight"
        else:
            code = "trading_halted"
        if code != self._last_skip:
            return False
        self.skips[code] += 1
        return True

    def _policy_weights(self, mode: str, current: dict[str, float], targets: dict[str, float],
                        bands: dict[str, float]) -> dict[str, float]:
        if mode == "partial":
            return policy.partial(current, targets, self.cfg.policy.fraction)
        if mode == "edge":
            goal = policy.to_band_edge(current, targets, bands)
            tcfg = self.cfg.trigger
            if "portfolio" in tcfg.rules:
                goal = policy.shrink_to_threshold(goal, targets, self._portfolio_measure(),
                                                  tcfg.portfolio_threshold)
            return goal
        return policy.to_target(targets, current)

    def _portfolio_measure(self) -> Callable[[Mapping[str, float]], float]:
        if self.cfg.trigger.portfolio_measure == "tracking_error":
            return lambda d: self._te(d) or 0.0
        return lambda d: float(sum(abs(x) for x in d.values()))

    def _plan(self, goal: Mapping[str, float]) -> TradePlan:
        buffer = 0.005
        if self.cfg.policy.order_type == "limit":
            buffer += self.cfg.policy.limit_offset_bps / BPS  # buys may pay up to the limit
        plan = plan_orders(nav=self.portfolio.nav, cash=self._free_cash(),
                           positions=self._effective_positions(), prices=self.portfolio.prices,
                           targets=goal, rules=self.rules(),
                           min_trade_notional=self.cfg.min_trade_notional,
                           fee_rate=self.fee_rate, price_buffer=buffer,
                           max_child_notional=self.cfg.max_child_notional)
        plan = cap_participation(plan, self.participation_cap, self.rules(),
                                 self.cfg.min_trade_notional)
        capped = cap_order_count(plan, self.order_room)
        if capped is not plan:
            log.info("orders_capped", reason="order throttles: the rest of the drift is "
                     "traded at later bars", planned=len(plan.orders), sent=len(capped.orders),
                     room=self.order_room(None))
        return capped

    def _reducing_only(self, plan: TradePlan) -> TradePlan:
        """REDUCING: keep only orders that move a position toward zero, no further."""
        positions = self._effective_positions()
        kept = [o for o in plan.orders
                if (o.side is Side.SELL and positions.get(o.symbol, 0.0) >= o.quantity)
                or (o.side is Side.BUY and -positions.get(o.symbol, 0.0) >= o.quantity)]
        return TradePlan(orders=kept, buys_deferred=False)

    def _complete(self, ts: datetime) -> None:
        """The buys of a decision that had to wait for its sells' proceeds."""
        assert self._completion is not None
        decision, goal = self._completion
        self._completion = None
        if str(self.trading_state()) != "ACTIVE":
            log.info("completion_skipped", decision_id=decision,
                     reason=f"trading state {self.trading_state()}: no new buys")
            return
        full = self._plan(goal)
        # only the buys: the sells are done, and selling again for the few bps prices moved
        # since would defer the buys once more, every bar, without end
        plan = TradePlan(orders=[o for o in full.orders if o.side is Side.BUY],
                         buys_deferred=False)
        if not plan.orders:
            log.info("completion_skipped", decision_id=decision,
                     reason="nothing left above the minimum notional")
            return
        reason = f"completion of decision {decision}"
        decision_id = self._send(ts, plan, reason)
        log.info("rebalance_completion", decision_id=decision_id, completes=decision,
                 orders=[_describe(o, self._order_type(), self._limit(o)) for o in plan.orders])

    def _nothing_reached_the_market(self) -> bool:
        """Whether every order of the last rebalance was refused: never taken in by the OMS
        (the risk gate rejected it) or rejected by the venue."""
        if not self._last_sent:
            return False
        for cid in self._last_sent:
            order = self.oms.orders.get(cid)
            if order is not None and order.state is not OrderState.REJECTED:
                return False
        return True

    def _order_type(self) -> OrderType:
        return OrderType.LIMIT if self.cfg.policy.order_type == "limit" else OrderType.MARKET

    def _limit(self, order: Any) -> float | None:
        if self.cfg.policy.order_type != "limit":
            return None
        rule = self.rules().get(order.symbol)
        if rule is None:
            return None
        return limit_price(order.side, order.reference_price, self.cfg.policy.limit_offset_bps,
                           rule)

    def _send(self, ts: datetime, plan: TradePlan, reason: str) -> str:
        decision = self.journal.next_sequence("decision_seq")
        decision_id = f"{decision:06d}"
        order_type = self._order_type()
        for i, order in enumerate(plan.orders):
            cid = client_order_id(decision_id, order.symbol, order.side.value, i)
            limit = self._limit(order)
            if limit is not None:
                self._limit_sent[cid] = self.bar_index
            self.bus.publish(OrderIntent(
                client_order_id=cid, symbol=order.symbol, side=order.side,
                quantity=order.quantity,
                order_type=order_type if limit is not None else OrderType.MARKET,
                reference_price=order.reference_price, ts=ts, limit_price=limit,
                decision_id=decision_id, reason=reason))
        return decision_id

    def _expire_limit_orders(self) -> None:
        """Cancel limit orders that stayed unfilled for limit_timeout_bars: a marketable limit
        that did not fill has missed its market, and the drift it was for is seen again."""
        if not self._limit_sent:
            return
        timeout = self.cfg.policy.limit_timeout_bars
        for cid, sent in list(self._limit_sent.items()):
            order = self.oms.orders.get(cid)
            age = self.bar_index - sent
            if order is None:
                if age > 1:  # never reached the OMS: the risk gate refused it
                    del self._limit_sent[cid]
                continue
            if not order.state.working:
                del self._limit_sent[cid]
            elif age >= timeout:
                del self._limit_sent[cid]
                log.info("limit_order_expired", client_order_id=cid, bars=age,
                         filled=order.filled, quantity=order.intent.quantity)
                self.bus.track(self.oms.cancel(cid, f"limit order unfilled after {age} bars"),
                               name="limit-cancel")

    def _skip(self, skip: Skip, check: triggers.TriggerCheck) -> None:
        """Log a skipped decision: at info when the reason changed, at debug when it repeats."""
        self.skips[skip.code] += 1
        repeat = skip.code == self._last_skip
        self._last_skip = skip.code
        if repeat and not logs.enabled(logging.DEBUG):
            return  # nothing would be written: spare assembling a logger (daemon/logs.py)
        level = log.debug if repeat else log.info
        level("rebalance_skipped", reason=skip.code, detail=skip.detail,
              max_abs_drift=round(check.max_abs_drift, 4),
              sum_abs_drift=round(check.sum_abs_drift, 4),
              tracking_error_bps=_bps(check.tracking_error))


@dataclass(frozen=True, slots=True)
class _QuietBands:
    """What `_quiet` needs of one targets dict: the symbols in `effective_weights`' order;
    per symbol in `drift`'s order (sorted), where its weight is among them (-1: none, weight
    0), its target and band plus the band test's 1e-12 (`check_drift`'s); and half the
    targets' long sum (the deploy test's)."""

    targets: dict[str, float]
    symbols: tuple[str, ...]
    rows: tuple[tuple[int, float, float], ...]
    half_invested: float

    @classmethod
    def of(cls, targets: dict[str, float], symbols: list[str], band: float,
           tcfg: TriggerConfig) -> _QuietBands:
        names = sorted(set(symbols) | set(targets))
        widths = triggers.asset_bands({s: targets.get(s, 0.0) for s in names}, tcfg.rules,
                                      band, tcfg.relative_band)
        keys = tuple(dict.fromkeys(symbols))  # a dict's keys, as `effective_weights` has
        where = {s: k for k, s in enumerate(keys)}
        rows = tuple((where.get(s, -1), targets.get(s, 0.0), widths[s] + 1e-12) for s in names)
        return cls(targets, keys, rows, 0.5 * sum(max(t, 0.0) for t in targets.values()))


def client_order_id(decision_id: str, symbol: str, side: str, index: int) -> str:
    """Deterministic, venue-safe (Binance: [.A-Z:/a-z0-9_-]{1,36}) and unique across runs
    because decision ids come from a persistent counter in the journal."""
    return f"td-{decision_id}-{symbol.replace('/', '')}-{side[0]}{index}"[:36]


def _stored_time(journal: Journal, key: str) -> datetime | None:
    text = journal.get_meta(key)
    if text is None:
        return None
    try:
        stamp: datetime | None = datetime.fromisoformat(text)
    except ValueError:
        stamp = None
    if stamp is None or stamp.tzinfo is None:
        # a damaged row costs one cooldown, not the start-up: say so and go on without it
        log.warning("rebalance_clock_unreadable", key=key, value=text)
        return None
    return stamp


def _accepts_previous(fn: SolveFn) -> bool:
    """Whether the solve takes `previous` (risk.allocation.solve does; simple test doubles with
    the older three-argument signature do not)."""
    try:
        inspect.signature(fn).bind(None, None, None, None)
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): pass the documented three arguments
        return False
    return True


def _rounded(weights: Mapping[str, float] | None, digits: int = 4) -> dict[str, float] | None:
    return None if weights is None else {k: round(v, digits) for k, v in weights.items()}


def _finite(x: float | None, digits: int) -> float | None:
    return round(x, digits) if x is not None and math.isfinite(x) else None


def _bps(x: float | None) -> float | None:
    return None if x is None else round(x * BPS, 2)


def _describe(order: Any, order_type: OrderType, limit: float | None) -> dict[str, Any]:
    return {"symbol": order.symbol, "side": str(order.side), "quantity": order.quantity,
            "notional": round(order.notional, 2),
            "type": str(order_type if limit is not None else OrderType.MARKET),
            "limit_price": limit}
