"""`tradingd replay`: historical CSV bars through the daemon's own pipeline, as fast as the
machine allows, then a report.

The replay builds the same `Daemon` that trades (bus, rebalancer, risk gate, OMS, paper venue,
journal) over a `ReplayFeed`. The feed is unpaced, so the daemon runs in lockstep: every
timestamp settles (solves, orders, fills) before the next bar is shown, which makes a replay
deterministic for a given config, data window and seed. While nothing is pending, the bus runs
each timestamp's handlers in the pump's own task, in the order its workers would
(`EventBus.publish_settled`): the same calls, without a task switch per subscriber.

Isolation: the daemon's state directory is `OUT/state`, never the live one; a previous replay's
state there is removed first (only if a marker file says a replay wrote it), so decision ids and
balances start fresh and two replays of the same input produce the same orders.

A `Recorder` subscribes to the bus like any other consumer and keeps its own books from `Fill`
and `Bar` events: NAV, weights, targets in force, traded notional and fees per timestamp. It
never reads the portfolio object, so ordering between subscribers cannot skew it, and the end
NAV doubles as an independent check of the daemon's portfolio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from adapters.csv_bars import BarDataError
from adapters.replay import ReplayConfig, ReplayFeed, ReplayReport
from daemon.events import (
    Bar,
    BarsClosed,
    Fill,
    OrderIntent,
    Side,
    TargetWeights,
    TradingStateChanged,
)
from daemon.settings import ConfigError

_MARKER = ".tradingd-replay"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ReplayRequest:
    data_dir: Path
    out_dir: Path
    start: str | None = None
    end: str | None = None
    symbols: list[str] | None = None  # None: the config's market.symbols
    seed: int = 0
    progress: bool = False


# --------------------------------------------------------------------------- recording


@dataclass
class Recording:
    """What the replay saw, one row per timestamp (bar close), symbols in config order."""

    symbols: list[str]
    interval_s: int
    ts_ns: np.ndarray  # int64, bar open times
    nav: np.ndarray
    cash: np.ndarray
    closes: np.ndarray  # T x N, NaN where the symbol had no bar
    weights: np.ndarray  # T x N, holdings at the close over NAV
    targets: np.ndarray  # T x N, targets in force at the close (NaN before the first solve)
    traded: np.ndarray  # notional filled at this timestamp (fills happen at bar opens)
    fees: np.ndarray
    decisions: np.ndarray  # distinct decisions that sent order intents after this close
    target_updates: int = 0
    # (row, state, previous, reason, by): the risk gate's kill switch moving, at the close
    # whose processing moved it
    state_changes: list[tuple[int, str, str, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.ts_ns.size)

    def drift(self) -> np.ndarray:
        """weights - targets, NaN before the first targets."""
        return self.weights - self.targets


class Recorder:
    """A bus subscriber that books the run from events, for the report."""

    def __init__(self, symbols: list[str], interval_s: int, cash: float,
                 progress: Progress | None = None) -> None:
        self.symbols = list(symbols)
        self.interval_s = interval_s
        self._col = {s: i for i, s in enumerate(self.symbols)}
        n = len(self.symbols)
        self._cash = cash
        self._qty = [0.0] * n
        self._price = [0.0] * n
        self._row_close = [math.nan] * n
        self._target_row = [math.nan] * n
        self._seen_trades: set[str] = set()
        self._traded = 0.0
        self._fees = 0.0
        self._decisions: set[str] = set()
        self._progress = progress
        self.target_updates = 0
        self.state_changes: list[tuple[int, str, str, str, str]] = []
        self.ts: list[datetime] = []
        self.nav: list[float] = []
        self.cash: list[float] = []
        self.closes: list[list[float]] = []
        self.values: list[list[float]] = []
        self.targets: list[list[float]] = []
        self.traded: list[float] = []
        self.fees: list[float] = []
        self.decisions: list[int] = []

    def handlers(self) -> dict[type, Any]:
        return {Bar: self.on_bar, BarsClosed: self.on_closed, Fill: self.on_fill,
                TargetWeights: self.on_targets, OrderIntent: self.on_intent,
                TradingStateChanged: self.on_state}

    def on_bar(self, bar: Bar) -> None:
        i = self._col.get(bar.symbol)
        if i is not None:
            self._price[i] = self._row_close[i] = bar.close

    def on_fill(self, fill: Fill) -> None:
        i = self._col.get(fill.symbol)
        if i is None or fill.trade_id in self._seen_trades:
            return
        self._seen_trades.add(fill.trade_id)
        signed = fill.quantity if fill.side is Side.BUY else -fill.quantity
        self._qty[i] += signed
        self._cash -= signed * fill.price + fill.fee
        self._traded += fill.quantity * fill.price
        self._fees += fill.fee
        if not self._price[i]:
            self._price[i] = fill.price  # as the portfolio does: a price before the first bar

    def on_closed(self, event: BarsClosed) -> None:
        # the decisions sent after the previous close belong to its row
        self._flush_decisions()
        values = [q * p for q, p in zip(self._qty, self._price, strict=True)]
        self.ts.append(event.ts)
        self.nav.append(self._cash + sum(values))
        self.cash.append(self._cash)
        self.values.append(values)
        self.closes.append(self._row_close)
        self._row_close = [math.nan] * len(self.symbols)
        self.targets.append(self._target_row)  # replaced, never mutated: sharing is safe
        self.traded.append(self._traded)
        self.fees.append(self._fees)
        self._traded = self._fees = 0.0
        self.decisions.append(0)
        if self._progress is not None:
            self._progress.tick(event.ts)

    def on_targets(self, event: TargetWeights) -> None:
        self.target_updates += 1
        self._target_row = [float(event.weights.get(s, 0.0)) for s in self.symbols]

    def on_intent(self, intent: OrderIntent) -> None:
        self._decisions.add(intent.decision_id)

    def on_state(self, event: TradingStateChanged) -> None:
        self.state_changes.append((max(len(self.ts) - 1, 0), str(event.state),
                                   str(event.previous), str(event.reason), str(event.by)))

    def _flush_decisions(self) -> None:
        if self.decisions and self._decisions:
            self.decisions[-1] += len(self._decisions)
        self._decisions.clear()

    def result(self) -> Recording:
        self._flush_decisions()
        n = len(self.symbols)
        nav = np.asarray(self.nav, dtype=float)
        values = np.asarray(self.values, dtype=float).reshape(-1, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            weights = np.where(nav[:, None] > 0, values / nav[:, None], 0.0)
        return Recording(
            symbols=list(self.symbols), interval_s=self.interval_s,
            ts_ns=np.array([_ns(t) for t in self.ts], dtype=np.int64), nav=nav,
            cash=np.asarray(self.cash, dtype=float),
            closes=np.asarray(self.closes, dtype=float).reshape(-1, n), weights=weights,
            targets=np.asarray(self.targets, dtype=float).reshape(-1, n),
            traded=np.asarray(self.traded, dtype=float), fees=np.asarray(self.fees, dtype=float),
            decisions=np.asarray(self.decisions, dtype=np.int64),
            target_updates=self.target_updates, state_changes=list(self.state_changes))


def _ns(ts: datetime) -> int:
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


class Progress:
    """A one-line progress bar on a terminal, redrawn with \\r at most every `every_s`."""

    def __init__(self, total: int, stream: TextIO, every_s: float = 0.2, width: int = 30) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.every_s = every_s
        self.width = width
        self.done = 0
        self._started = time.perf_counter()
        self._drawn = 0.0

    def tick(self, ts: datetime) -> None:
        self.done += 1
        if self.done & 127 and self.done != self.total:
            return  # reading the clock every timestamp would cost more than drawing
        now = time.perf_counter()
        if now - self._drawn < self.every_s and self.done != self.total:
            return
        self._drawn = now
        frac = min(self.done / self.total, 1.0)
        filled = int(frac * self.width)
        rate = self.done / max(now - self._started, 1e-9)
        self.stream.write(f"\rreplay [{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{frac:6.1%} {self.done:,}/{self.total:,} {ts:%Y-%m-%d %H:%M} "
                          f"{rate:,.0f} ts/s ")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


# --------------------------------------------------------------------------- running


@dataclass
class ReplayResult:
    config: Any  # daemon.config.Config as replayed
    request: ReplayRequest
    data: ReplayReport
    summary: Any  # daemon.app.RunSummary
    recording: Recording
    solve_failures: int
    elapsed_s: float  # wall clock of the run itself, data loading excluded
    load_s: float

    @property
    def bars(self) -> int:
        return self.data.total_bars

    @property
    def bars_per_second(self) -> float:
        return self.bars / self.elapsed_s if self.elapsed_s > 0 else math.nan


def prepare_state_dir(out_dir: Path, live_state: Path) -> Path:
    """`out_dir/state`, emptied if a previous replay made it; refuses anything else."""
    state = (out_dir / "state").resolve()
    if state == live_state.resolve():
        raise ConfigError("--report", str(out_dir),
                          f"its state folder {state} is the daemon's live state_dir")
    if state.exists():
        if not (state / _MARKER).exists():
            raise ConfigError("--report", str(out_dir),
                              f"{state} exists and was not written by a replay; move it away")
        shutil.rmtree(state)
    state.mkdir(parents=True)
    (state / _MARKER).write_text("written by `tradingd replay`; removed by the next one\n")
    return state


def replay_config(cfg: Any, req: ReplayRequest, feed: ReplayFeed, state: Path) -> Any:
    """The config as replayed: replay source, the data's interval, an isolated state dir and the
    thread solver. `prepare` hands the daemon an inline `SolverPool` all the same: lockstep
    waits for every solve, so a worker would only add its hand-over (a process also its
    start-up and the pickling of every window); the solve function is the same."""
    from daemon.config import INTERVALS

    label = next((k for k, v in INTERVALS.items() if v == feed.interval_s), None)
    if label is None:
        raise ConfigError("--data", str(req.data_dir),
                          f"bars are {feed.interval_s} s apart; supported intervals: "
                          f"{', '.join(INTERVALS)}")
    quotes = {s.partition("/")[2] for s in feed.symbols}
    if len(quotes) != 1:
        raise ConfigError("--symbols", feed.symbols, "must all share one quote currency")
    market = replace(cfg.market, source="replay", symbols=list(feed.symbols),
                     quote=quotes.pop(), interval=label, replay=feed.cfg)
    market.check()
    out = replace(cfg, market=market,
                  daemon=replace(cfg.daemon, state_dir=str(state)),
                  rebalance=replace(cfg.rebalance, solver="thread"))
    out.check()
    return out


def load_feed(cfg: Any, req: ReplayRequest) -> ReplayFeed:
    symbols = list(req.symbols) if req.symbols else list(cfg.market.symbols)
    rc = ReplayConfig(data_dir=str(req.data_dir), symbols=symbols, start=req.start,
                      end=req.end, speed=0.0)
    feed = ReplayFeed(rc)
    if feed.report.timestamps == 0:
        raise ConfigError("--start/--end", f"{req.start}..{req.end}",
                          f"no bars of {', '.join(feed.symbols)} in {req.data_dir} fall in "
                          "this window")
    return feed


@dataclass
class PreparedReplay:
    """A daemon wired for a replay, not started yet: benchmarks instrument it before `execute`."""

    request: ReplayRequest
    config: Any  # the config as replayed
    feed: ReplayFeed
    daemon: Any  # daemon.app.Daemon
    recorder: Recorder
    progress: Progress | None
    load_s: float


def prepare(cfg: Any, req: ReplayRequest, *,
            progress_stream: TextIO | None = None) -> PreparedReplay:
    """Load the data, empty `OUT/state` and build the `Daemon` with the recorder on its bus."""
    from adapters.paper import PaperVenue
    from daemon.app import Daemon
    from daemon.journal import Journal
    from daemon.solver import SolverPool

    random.seed(req.seed)
    np.random.seed(req.seed)
    started = time.perf_counter()
    feed = load_feed(cfg, req)
    state = prepare_state_dir(req.out_dir, cfg.state_path)
    rcfg = replay_config(cfg, req, feed, state)
    # the replay's state is thrown away by the next replay: an fsync per journal commit would
    # cost more than the rest of the pipeline (OFF still writes every row, readable afterwards)
    journal = Journal(state / "journal.sqlite", synchronous="OFF")
    # the paper venue's own books in memory (state_path None): its SQLite writes every bar
    # are for surviving a restart, which a replay never does; the journal keeps the orders
    venue = PaperVenue(rcfg.venue.paper, list(feed.symbols), rcfg.market.quote, state_path=None)
    daemon = Daemon(rcfg, feed=feed, journal=journal, venue=venue,
                    solver=SolverPool("inline", rcfg.rebalance.solve_timeout_s))
    rng = getattr(daemon.oms, "_rng", None)
    if isinstance(rng, random.Random):
        # the OMS's retry jitter: the paper venue never asks for a retry, seeded all the same
        rng.seed(req.seed)
    progress = None
    if req.progress:
        progress = Progress(feed.report.timestamps, progress_stream or sys.stderr)
    recorder = Recorder(feed.symbols, feed.interval_s, rcfg.venue.paper.initial_cash, progress)
    daemon.bus.subscribe("replay-recorder", recorder.handlers())
    return PreparedReplay(req, rcfg, feed, daemon, recorder, progress,
                          time.perf_counter() - started)


async def execute(p: PreparedReplay) -> ReplayResult:
    t0 = time.perf_counter()
    try:
        summary = await p.daemon.run()
    finally:
        if p.progress is not None:
            p.progress.close()
    elapsed = time.perf_counter() - t0
    return ReplayResult(config=p.config, request=p.request, data=p.feed.report, summary=summary,
                        recording=p.recorder.result(),
                        solve_failures=int(getattr(p.daemon.rebalancer, "solve_failures", 0)),
                        elapsed_s=elapsed, load_s=p.load_s)


async def run_replay(cfg: Any, req: ReplayRequest, *,
                     progress_stream: TextIO | None = None) -> ReplayResult:
    """Replay `req` through a `Daemon` built from `cfg` (see `replay_config`)."""
    return await execute(prepare(cfg, req, progress_stream=progress_stream))


# --------------------------------------------------------------------------- metrics


def build_metrics(result: ReplayResult) -> dict[str, Any]:
    """Everything `metrics.json` holds. Only what the data and config determine: no wall-clock
    times, no solve durations, so the same replay gives the same bytes."""
    from risk import performance as perf

    rec, cfg, s = result.recording, result.config, result.summary
    ts = rec.ts_ns
    rf = float(getattr(cfg.allocation, "risk_free_rate", 0.0))
    strategy = perf.curve_stats(ts, rec.nav, rec.interval_s, rf)
    bench_curve = perf.buy_and_hold(rec.closes, float(rec.nav[0]))
    benchmark = perf.curve_stats(ts, bench_curve, rec.interval_s, rf)
    years = perf.years_between(int(ts[0]), int(ts[-1])) if len(rec) > 1 else 0.0
    mean_nav = float(rec.nav.mean())
    traded = float(rec.traded.sum())
    fees = float(rec.fees.sum())
    turnover = perf.one_way_turnover(traded, mean_nav)
    var = var_backtest(result)
    return {
        "schema": 1,
        "window": {
            "first_bar": _iso(ts[0]), "last_bar": _iso(ts[-1]), "timestamps": len(rec),
            "bars": result.data.total_bars, "interval_s": rec.interval_s, "years": years,
            "periods_per_year": perf.periods_per_year(rec.interval_s),
            "symbols": list(rec.symbols), "start": result.request.start,
            "end": result.request.end},
        "strategy": {
            **_stats(strategy, ts),
            "fees": fees, "fees_to_mean_nav": fees / mean_nav if mean_nav else math.nan,
            "traded_notional": traded, "turnover": turnover,
            "turnover_per_year": turnover / years if years > 0 else math.nan,
            "rebalances": s.rebalances, "orders": s.orders, "fills": s.fills,
            "target_updates": rec.target_updates, "solve_failures": result.solve_failures,
            "risk_rejections": s.risk_rejections,
            "risk_rejections_by_code": dict(sorted(s.rejections_by_code.items())),
            "venue_rejections": s.venue_rejections, "handler_errors": s.handler_errors,
            "final_weights": {k: s.weights[k] for k in sorted(s.weights)},
            "final_targets": {k: s.targets[k] for k in sorted(s.targets)},
            "max_abs_drift": _nanmax(np.abs(rec.drift())),
            "trading_state_changes": [
                {"at": _iso(ts[row]), "state": state, "previous": previous, "reason": reason,
                 "by": by} for row, state, previous, reason, by in rec.state_changes],
        },
        "benchmark": {"name": "equal-weight buy and hold, no fees", **_stats(benchmark, ts)},
        "var": asdict(var),
        "data": {sym: {"bars": r.bars, "first": _iso_dt(r.first), "last": _iso_dt(r.last),
                       "gaps": r.gaps, "missing_bars": r.missing_bars,
                       "late_start": bool(r.first and r.first > _dt(int(ts[0]))),
                       "dropped_rows": dict(sorted(r.dropped.items()))}
                 for sym, r in result.data.symbols.items()},
        "config": _config_facts(cfg, result.request.seed),
    }


def var_backtest(result: ReplayResult) -> Any:
    """The daemon's configured VaR model when the config has one (`risk.var`), else a
    historical 99% 1-day VaR of the realised equity curve."""
    from risk import performance as perf
    from risk.var import VarConfig

    rec = result.recording
    var_cfg = getattr(result.config.risk, "var", None)
    var_cfg = getattr(var_cfg, "model_config", var_cfg)  # a wrapper may hold the VarConfig
    if isinstance(var_cfg, VarConfig) and var_cfg.horizon_bars == 1 \
            and len(rec) > var_cfg.window_bars + 1:
        asset_r = np.vstack([np.full((1, len(rec.symbols)), np.nan),
                             rec.closes[1:] / perf.forward_fill(rec.closes)[:-1] - 1.0])
        port_r = np.concatenate([[0.0], perf.simple_returns(rec.nav)])
        # one forecast per bar costs a model fit per bar: cap the work at ~10,000 forecasts
        every = max(1, len(rec) // 10_000)
        return perf.model_var_backtest(asset_r, rec.weights, port_r, var_cfg, every=every)
    return perf.historical_equity_var(rec.ts_ns, rec.nav, 0.99, 250)


def _stats(c: Any, ts: np.ndarray) -> dict[str, Any]:
    out = c.to_dict()
    for key in ("max_drawdown_peak", "max_drawdown_trough", "max_drawdown_recovered"):
        i = out.pop(key)
        out[f"{key}_at"] = None if i is None else _iso(ts[i])
    return out


def _config_facts(cfg: Any, seed: int) -> dict[str, Any]:
    """The settings that shape the result, for the reader of the report."""
    facts: dict[str, Any] = {
        "seed": seed, "band": cfg.rebalance.band,
        "allocation_method": cfg.allocation.method,
        "lookback_bars": cfg.allocation.lookback_bars,
        "min_weight": cfg.allocation.min_weight, "max_weight": cfg.allocation.max_weight,
        "initial_cash": cfg.venue.paper.initial_cash, "fee_bps": cfg.venue.paper.fee_bps,
        "slippage_bps": cfg.venue.paper.slippage_bps, "quote": cfg.market.quote,
        "interval": cfg.market.interval,
    }
    return facts


def _nanmax(a: np.ndarray) -> float:
    finite = a[np.isfinite(a)]
    return float(finite.max()) if finite.size else math.nan


def _dt(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _iso(ns: Any) -> str:
    return _dt(int(ns)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_dt(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dumps_metrics(metrics: dict[str, Any]) -> str:
    """Stable bytes: sorted keys, floats to 12 significant digits, NaN and inf as null."""
    return json.dumps(_clean(metrics), sort_keys=True, indent=2, allow_nan=False) + "\n"


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        f = float(x)
        return float(f"{f:.12g}") if math.isfinite(f) else None
    return str(x)


# --------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="config.toml", help="path to config.toml")
    p.add_argument("--data", required=True, type=Path,
                   help="folder of BASE-QUOTE.csv files (timestamp,open,high,low,close,volume)")
    p.add_argument("--start", default=None, help="first bar open time, inclusive (ISO 8601)")
    p.add_argument("--end", default=None, help="bar open times before this (exclusive)")
    p.add_argument("--report", required=True, type=Path,
                   help="output folder: report.html, metrics.json, PNG charts, replay.log, "
                        "state/ (the replay's own journal)")
    p.add_argument("--symbols", default=None,
                   help="comma-separated BASE/QUOTE list; default: the config's market.symbols")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                   help="level of OUT/replay.log (default warning: info logs every decision "
                        "and order, and makes the replay about 40%% slower)")


def cli_main(args: argparse.Namespace) -> int:
    """The `replay` subcommand. ConfigError propagates (the CLI prints it, exit 2)."""
    from daemon.config import load_config
    from daemon.logs import configure
    from daemon.report import write_report

    cfg = load_config(args.config)
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()] if args.symbols \
        else None
    req = ReplayRequest(data_dir=args.data, out_dir=args.report, start=args.start,
                        end=args.end, symbols=symbols, seed=args.seed,
                        progress=sys.stderr.isatty())
    args.report.mkdir(parents=True, exist_ok=True)
    log_path = args.report / "replay.log"
    with log_path.open("w", encoding="utf-8") as log_file:
        # the daemon logs every decision: to a file beside the report, not over the summary
        configure(args.log_level, stream=log_file)
        try:
            result = _run(run_replay(cfg, req))
        except BarDataError as exc:
            raise ConfigError("--data", str(args.data), str(exc)) from None
        except ConfigError:
            raise
        except Exception as exc:
            print(f"tradingd: replay failed: {type(exc).__name__}: {exc} (log: {log_path})",
                  file=sys.stderr)
            return 1
    paths = write_report(result, args.report)
    print(result.data.summary())
    print(result.summary.render())
    print(f"replayed {result.bars:,} bars ({len(result.recording):,} timestamps) in "
          f"{result.elapsed_s:.2f} s: {result.bars_per_second:,.0f} bars/s")
    print(f"report   {paths['html']}")
    print(f"metrics  {paths['metrics']}")
    print(f"log      {log_path}")
    return 0


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # optional on platforms without it
        return asyncio.run(coro)
    return uvloop.run(coro)
