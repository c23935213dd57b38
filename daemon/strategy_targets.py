"""Target weights from strategy files: allocation across strategies, as a daemon Service.

With `[strategies] enabled = true` the rebalancer stops solving: this service watches the
strategy folders (`adapters/strategy_files.py`), and whenever a file changes or a strategy's
positions go stale it

1. allocates across the strategies' daily return streams (`risk.strategy_allocation.allocate`:
   maximise slope / std of the combined cumulative-return curve, then the volatility target of
   `[allocation.vol_target]` on the combined stream gives the leverage),
2. turns strategy positions into coin weights, each a fraction of NAV:

       weight[coin] = leverage × Σ_s w_s × position[s, coin]

   so the rebalancer's order for a coin is NAV × leverage × w_s × position (summed over
   strategies); whatever is left is cash,
3. checks them (spot: no weight below 0, sum at most 1) and publishes
   `TargetWeights(method="strategies")`, which the rebalancer takes through
   `Rebalancer.set_external_targets` and trades towards with its usual drift and trade policy.

Any failure (too little common history, a refused weight vector, no strategy with data) is
logged and keeps the last good targets; no targets at all means the rebalancer does not trade.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd
import structlog

from adapters.strategy_files import ParseLimits, PollResult, StrategyFiles
from adapters.tasks import stop_task
from daemon.bus import EventBus
from daemon.events import Bar, BarsClosed, TargetWeights
from risk.allocation import AllocationConfig
from risk.errors import SolveError
from risk.strategy_allocation import StrategyAllocation, allocate, target_notionals

if TYPE_CHECKING:
    from daemon.app import Daemon
    from daemon.rebalancer import Rebalancer

log = structlog.get_logger("strategy_targets")

METHOD = "strategies"


@dataclass(frozen=True)
class StrategiesConfig:
    enabled: bool = field(default=False, metadata={
        "doc": "take target weights from strategy files instead of solving over coins"})
    dir: str = field(default="strategies", metadata={
        "doc": "folder with one sub-folder per strategy (returns.csv, positions.json); "
               "relative paths are relative to the config file"})
    poll_interval_s: float = field(default=5.0, metadata={
        "doc": "how often the folder is checked for changed files and stale positions",
        "min": 0.01, "max": 3600.0, "unit": "s"})
    stale_after_hours: float = field(default=26.0, metadata={
        "doc": "positions whose as_of is older than this are stale", "min": 0.0,
        "exclusive_min": True, "unit": "hours"})
    stale_policy: Literal["flat", "hold"] = field(default="flat", metadata={
        "doc": "stale positions: flat (count as zero: the strategy's share goes to cash) or "
               "hold (keep using the last positions)"})
    returns_stale_after_days: float = field(default=3.0, metadata={
        "doc": "warn when a strategy's last daily return is older than this; the allocation "
               "then uses the days all strategies share", "min": 0.0, "exclusive_min": True,
        "unit": "days"})
    max_gross_position: float = field(default=1.0, metadata={
        "doc": "largest sum of |position| in one strategy's positions.json, as a fraction of "
               "its capital (1.0: fully invested, no leverage)", "min": 0.0,
        "exclusive_min": True})
    max_abs_daily_return: float = field(default=1.0, metadata={
        "doc": "a daily return larger than this in size is refused as a typo (0.01 = 1%)",
        "min": 0.0, "exclusive_min": True})


def strategies_dir(cfg: StrategiesConfig, config_path: str) -> Path:
    root = Path(cfg.dir)
    if not root.is_absolute() and config_path:
        root = Path(config_path).resolve().parent / root
    return root


def coin_weights(alloc: StrategyAllocation, positions: Mapping[str, Mapping[str, float]],
                 symbols: Collection[str]) -> dict[str, float]:
    """weight[coin] = leverage × Σ_s w_s × position[s, coin]: the order-notional identity at an
    account value of 1, over every traded symbol (0.0 where no strategy holds it)."""
    per_unit = target_notionals(1.0, alloc, positions)
    return {s: float(per_unit.get(s, 0.0)) for s in symbols}


def check_weights(weights: Mapping[str, float], spot: bool) -> str | None:
    """Why these coin weights may not be traded, or None. Validated inputs cannot break this;
    it stops a bug or a non-spot setting from sending an unfundable target to a spot venue."""
    for symbol, w in weights.items():
        if not math.isfinite(w):
            return f"weight of {symbol} is {w}"
        if spot and w < -1e-12:
            return f"weight of {symbol} is {w:.6f} < 0 on a spot account"
    total = sum(weights.values())
    if spot and total > 1.0 + 1e-9:
        return f"weights sum to {total:.6f} > 1 on a spot account"
    return None


def common_returns(series: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Days × strategies (by name) over the days every strategy has (the files have no gaps, so
    this is the span from the latest first day to the earliest last day). Sorted both ways: the
    optimiser's last digits depend on column order, and the same files must give the same
    weights whatever order the strategies were discovered in."""
    if not series:
        return pd.DataFrame()
    ordered = {name: series[name] for name in sorted(series)}
    return pd.concat(ordered, axis=1, join="inner").sort_index()


class StrategyTargets:
    """The Service (daemon/app.py `Service`): polls, allocates, publishes TargetWeights."""

    name = "strategy_targets"

    def __init__(self, bus: EventBus, files: StrategyFiles, cfg: StrategiesConfig,
                 allocation: Callable[[], AllocationConfig], symbols: list[str],
                 spot: bool, clock: Callable[[], datetime] | None = None) -> None:
        self.bus = bus
        self.files = files
        self.cfg = cfg
        self.allocation = allocation  # a callable: a SIGHUP reload swaps the rebalancer's copy
        self.symbols = list(symbols)
        self.spot = spot
        self.clock = clock or (lambda: datetime.now(UTC))
        self.strategy_alloc: StrategyAllocation | None = None
        self.targets: dict[str, float] | None = None
        self.published = 0
        self.failures = 0
        self._stale: set[str] = set()
        self._returns_late: set[str] = set()
        self._alloc_key: tuple[object, ...] | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_problem: str | None = None

    # -- Service ----------------------------------------------------------------------------
    async def start(self) -> None:
        # the first targets exist before the first bar, so the rebalancer never waits a poll
        await self._safe_tick()
        self._task = asyncio.create_task(self._run(), name="strategy-targets")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.poll_interval_s)
            await self._safe_tick()

    async def _safe_tick(self) -> None:
        try:
            await self.tick()
        except Exception as exc:  # a bug here must not stop the daemon: log, poll again
            self.failures += 1
            log.exception("strategy_targets_failed", error=str(exc),
                          kept_targets=_rounded(self.targets))

    # -- one round --------------------------------------------------------------------------
    async def tick(self) -> None:
        changes = await asyncio.to_thread(self.files.poll)
        now = self.clock()
        reasons = self._reasons(changes)
        returns = {n: d.returns for n, d in self.files.strategies.items()
                   if d.returns is not None}
        cfg = self.allocation()
        # re-allocate only on new data, another set of strategies or a reloaded config: the
        # optimiser is deterministic, so anything else would give the same weights
        key = (tuple(sorted(returns)), cfg.strategies, cfg.vol_target)
        if changes.returns_changed or key != self._alloc_key:
            self._alloc_key = key
            if await self._allocate(returns, now, cfg) and not changes.returns_changed:
                reasons.append("strategies or allocation settings changed")
        stale_moves = self._staleness(now)
        if self.strategy_alloc is None:
            return
        if not (reasons or stale_moves or self.targets is None):
            return
        self._publish(now, "; ".join([*reasons, *stale_moves]) or "initial")

    def _reasons(self, changes: PollResult) -> list[str]:
        out = []
        if changes.returns_changed:
            out.append("returns changed: " + ", ".join(changes.returns_changed))
        if changes.positions_changed:
            out.append("positions changed: " + ", ".join(changes.positions_changed))
        return out

    async def _allocate(self, returns: dict[str, pd.Series], now: datetime,
                        cfg: AllocationConfig) -> bool:
        """New strategy weights into `strategy_alloc`; False (logged) keeps the last ones."""
        if not returns:
            self._problem("no strategy has a usable returns.csv in "
                          f"{self.files.root}: no targets")
            return False
        frame = common_returns(returns)
        self._warn_late_returns(returns, now)
        try:
            alloc = await asyncio.to_thread(allocate, frame, cfg.strategies, cfg.vol_target)
        except SolveError as exc:  # InsufficientHistory is one
            self.failures += 1
            kept = "last good strategy weights" if self.strategy_alloc else "no targets yet"
            self._problem(f"allocation across {list(frame.columns)} failed: {exc} "
                          f"({len(frame)} common days); keeping {kept}")
            return False
        self._last_problem = None
        self.strategy_alloc = alloc
        span = (str(frame.index[-cfg.strategies.lookback_days].date()),
                str(frame.index[-1].date()))
        log.info("strategy_weights", weights={k: round(v, 4) for k, v in alloc.weights.items()},
                 score=round(alloc.score, 4), leverage=round(alloc.leverage, 4),
                 realised_vol=None if math.isnan(alloc.realised_vol)
                 else round(alloc.realised_vol, 4), span_start=span[0], span_end=span[1],
                 objective=cfg.strategies.objective)
        return True

    def _warn_late_returns(self, returns: Mapping[str, pd.Series], now: datetime) -> None:
        limit = timedelta(days=self.cfg.returns_stale_after_days)
        today = pd.Timestamp(now.date())
        late = {n for n, s in returns.items() if today - s.index[-1] > limit}
        for name in sorted(late - self._returns_late):
            log.warning("strategy_returns_stale", strategy=name,
                        last_day=str(returns[name].index[-1].date()),
                        limit_days=self.cfg.returns_stale_after_days,
                        effect="allocation uses the days all strategies share")
        self._returns_late = late

    def _staleness(self, now: datetime) -> list[str]:
        """Strategies whose positions crossed the staleness limit either way since last time."""
        limit = timedelta(hours=self.cfg.stale_after_hours)
        stale = {n for n, d in self.files.strategies.items()
                 if d.positions is not None and now - d.positions.as_of > limit}
        moves = []
        for name in sorted(stale - self._stale):
            pos = self.files.strategies[name].positions
            assert pos is not None
            log.warning("strategy_positions_stale", strategy=name,
                        as_of=pos.as_of.isoformat(), limit_hours=self.cfg.stale_after_hours,
                        policy=self.cfg.stale_policy,
                        effect="treated as flat" if self.cfg.stale_policy == "flat"
                        else "last positions held")
            moves.append(f"{name} positions stale ({self.cfg.stale_policy})")
        for name in sorted(self._stale - stale):
            log.info("strategy_positions_fresh", strategy=name)
            moves.append(f"{name} positions fresh again")
        self._stale = stale
        # with hold, going stale changes nothing that is traded: say so, but do not republish
        return moves if self.cfg.stale_policy == "flat" else []

    def positions(self) -> dict[str, dict[str, float]]:
        """Positions the targets are built from: stale ones per the policy, missing ones flat."""
        out = {}
        for name, data in self.files.strategies.items():
            if data.positions is None:
                continue
            if name in self._stale and self.cfg.stale_policy == "flat":
                continue
            out[name] = dict(data.positions.positions)
        return out

    def _publish(self, now: datetime, reason: str) -> None:
        alloc = self.strategy_alloc
        assert alloc is not None
        positions = self.positions()
        weights = coin_weights(alloc, positions, self.symbols)
        problem = check_weights(weights, self.spot)
        if problem is not None:
            self.failures += 1
            self._problem(f"coin weights refused: {problem}; keeping the last good targets")
            return
        no_positions = sorted(set(alloc.weights) - set(positions))
        if self.targets is not None and all(
                abs(w - self.targets.get(k, 0.0)) <= 1e-9 for k, w in weights.items()):
            return  # the same targets (summation order moves the last bits): nothing to say
        old, self.targets = self.targets, weights
        self._last_problem = None
        self.published += 1
        stats = {"leverage": alloc.leverage, "score": alloc.score,
                 "realised_vol": alloc.realised_vol, "cash": 1.0 - sum(weights.values())}
        stats.update({f"weight.{k}": v for k, v in alloc.weights.items()})
        log.info("strategy_targets", reason=reason, leverage=round(alloc.leverage, 4),
                 strategy_weights={k: round(v, 4) for k, v in alloc.weights.items()},
                 flat_strategies=no_positions, old_targets=_rounded(old),
                 new_targets=_rounded(weights), cash=round(stats["cash"], 4))
        self.bus.publish(TargetWeights(ts=now, weights=dict(weights), method=METHOD,
                                       reason=reason, stats=stats))

    def _problem(self, message: str) -> None:
        if message != self._last_problem:  # once per distinct problem, not every poll
            log.error("strategy_targets_problem", error=message)
        self._last_problem = message


def _rounded(weights: Mapping[str, float] | None) -> dict[str, float] | None:
    return None if weights is None else {k: round(v, 4) for k, v in weights.items()}


def attach(daemon: Daemon) -> StrategyTargets:
    """Wire the service into a Daemon: the rebalancer takes its targets from here and never
    solves; the service runs with the daemon's other services."""
    cfg = daemon.cfg
    spot = not cfg.allocation.constraints.allow_short
    limits = ParseLimits(symbols=frozenset(daemon.symbols), allow_short=not spot,
                         max_gross_position=cfg.strategies.max_gross_position,
                         max_abs_daily_return=cfg.strategies.max_abs_daily_return)
    files = StrategyFiles(strategies_dir(cfg.strategies, cfg.path), limits)
    rebalancer = daemon.rebalancer
    service = StrategyTargets(daemon.bus, files, cfg.strategies,
                              lambda: rebalancer.allocation, daemon.symbols, spot)
    rebalancer.external_targets = True  # before the first bar: no solve may start meanwhile
    # the risk gate refuses risk-adding orders until it has var_min_bars of returns (and halts
    # on a storm of such refusals); a solve never comes that early, external targets would
    warm = max(cfg.risk.var_min_bars, cfg.allocation.min_history_bars)
    router = TargetRouter(rebalancer, warm)
    daemon.bus.subscribe("strategy_targets", {TargetWeights: router.on_targets, Bar: router.on_bar,
                                              BarsClosed: router.on_bars_closed})
    daemon.services.append(service)
    return service


class TargetRouter:
    """Hands TargetWeights(method="strategies") to the rebalancer once `warm_bars` returns of
    market history were seen (warm-up bars after a restart count); until then the latest
    targets wait (logged once)."""

    def __init__(self, rebalancer: Rebalancer, warm_bars: int) -> None:
        self.rebalancer = rebalancer
        self.warm_bars = warm_bars
        self.pending: TargetWeights | None = None
        self.timestamps = 0  # distinct bar times seen
        self._last_ts: datetime | None = None
        self._told = False

    def on_bar(self, bar: Bar) -> None:
        if bar.ts != self._last_ts:
            self._last_ts = bar.ts
            self.timestamps += 1

    def on_targets(self, event: TargetWeights) -> None:
        if event.method == METHOD:
            self.pending = event
            self._flush()

    def on_bars_closed(self, event: BarsClosed) -> None:
        if self.pending is not None:
            self._flush()

    def _flush(self) -> None:
        assert self.pending is not None
        bars = max(self.timestamps - 1, 0)
        if bars < self.warm_bars:
            if not self._told:
                log.info("strategy_targets_waiting", bars=bars, needed=self.warm_bars,
                         why="risk.var_min_bars / allocation.min_history_bars of returns "
                             "before the first trade")
                self._told = True
            return
        event, self.pending = self.pending, None
        self.rebalancer.set_external_targets(event.weights, event.reason)
