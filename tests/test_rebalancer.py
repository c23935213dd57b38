"""The rebalancer inside the running daemon (simulated market, paper venue, real riskfolio-lib
solves in a thread): re-solving apart from trading, working orders in the drift, cooldown, the
cost test, limit orders, short history, failed solves, the turnover cap's `previous`, operator
requests, regime re-solves, and one log event per decision."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import structlog

from adapters.paper import PaperVenue
from adapters.venue import OrderRequest, PermanentVenueError, VenueOrder
from daemon.app import Daemon
from daemon.config import Config, parse_config
from daemon.events import BarsClosed, OrderIntent, OrderType, Side, TargetWeights, utcnow
from daemon.order_state import OrderState
from risk.allocation import Allocation, SolveError, solve

SYMBOLS = ["BTC/USDT", "ETH/USDT", "BNB/USDT", "SOL/USDT"]

BASE = """
[daemon]
state_dir = "{state}"
log_level = "warning"
[market]
symbols = ["BTC/USDT", "ETH/USDT", "BNB/USDT", "SOL/USDT"]
[market.simulated]
seed = 5
speed = 0.0
[allocation]
method = "min_variance"
lookback_bars = 48
min_history_bars = 30
max_weight = 0.5
{allocation}
[rebalance]
solver = "thread"
"""


def config(tmp: Path, rebalance: str = "", allocation: str = "", tables: str = "") -> Config:
    """`rebalance`: keys and sub-tables of [rebalance]; `allocation`: keys of [allocation];
    `tables`: further tables."""
    return parse_config(BASE.format(state=tmp / "state", allocation=allocation) + rebalance
                        + "\n" + tables)


@dataclass
class Watch:
    """What crossed the bus, stamped with the rebalancer's bar count at the time."""

    daemon: Daemon
    targets: list[tuple[int, TargetWeights]] = field(default_factory=list)
    intents: list[tuple[int, OrderIntent]] = field(default_factory=list)
    on_bar: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        self.daemon.bus.subscribe("watch", {TargetWeights: self._targets,
                                            OrderIntent: self._intent,
                                            BarsClosed: self._closed})

    def _targets(self, e: TargetWeights) -> None:
        self.targets.append((self.daemon.rebalancer.bar_index, e))

    def _intent(self, e: OrderIntent) -> None:
        self.intents.append((self.daemon.rebalancer.bar_index, e))

    def _closed(self, e: BarsClosed) -> None:
        if self.on_bar is not None:
            self.on_bar(self.daemon.rebalancer.bar_index)

    def decisions(self, completions: bool = False) -> dict[str, tuple[int, str]]:
        """decision id -> (bar, reason), in order; completion legs only when asked."""
        out: dict[str, tuple[int, str]] = {}
        for bar, i in self.intents:
            if completions or not i.reason.startswith("completion"):
                out.setdefault(i.decision_id, (bar, i.reason))
        return out


async def run(cfg: Config, bars: int, *, venue: Any = None, solve_fn: Any = None,
              on_bar: Callable[[int], None] | None = None) -> tuple[Daemon, Any, Watch]:
    kw: dict[str, Any] = {}
    if venue is not None:
        kw["venue"] = venue(cfg)
    if solve_fn is not None:
        kw["solve_fn"] = solve_fn
    daemon = Daemon(cfg, **kw)
    watch = Watch(daemon, on_bar=on_bar)
    summary = await daemon.run(max_bars=bars)
    assert summary.handler_errors == 0
    return daemon, summary, watch


class FrozenVenue:
    """The paper venue's market data and filters, but orders are only accepted: they stay open
    and never fill (a venue that is slow to fill) until cancelled."""

    name = "frozen"

    def __init__(self, cfg: Config) -> None:
        self.inner = PaperVenue(cfg.venue.paper, list(cfg.market.symbols), cfg.market.quote)
        self.orders: dict[str, VenueOrder] = {}
        self.listeners: list[Callable[[VenueOrder], None]] = []

    def on_bars(self, bars: list[Any]) -> None:
        self.inner.on_bars(bars)  # it holds no order, so nothing can fill

    def on_order(self, listener: Callable[[VenueOrder], None]) -> None:
        self.listeners.append(listener)

    async def submit(self, order: OrderRequest) -> VenueOrder:
        view = self.orders.get(order.client_order_id) or VenueOrder(
            order.client_order_id, f"F{len(self.orders)}", order.symbol, order.side,
            order.order_type, order.quantity, 0.0, None, "open", utcnow(), order.limit_price)
        self.orders[order.client_order_id] = view
        return view

    async def cancel(self, client_order_id: str, symbol: str) -> VenueOrder:
        view = replace(self.orders[client_order_id], status="canceled")
        self.orders[client_order_id] = view
        for listener in self.listeners:
            listener(view)
        return view

    async def fetch_order(self, client_order_id: str, symbol: str) -> VenueOrder:
        return self.orders[client_order_id]

    async def open_orders(self) -> list[VenueOrder]:
        return [v for v in self.orders.values() if v.status == "open"]

    def __getattr__(self, name: str) -> Any:  # start, close, markets, balances, trades
        return getattr(self.inner, name)


class RejectingVenue(FrozenVenue):
    """Refuses every order, as an exchange refuses what the account cannot pay for."""

    async def submit(self, order: OrderRequest) -> VenueOrder:
        raise PermanentVenueError("insufficient balance (test)")


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """Warnings and errors to this test's stdout, whatever an earlier test left configured
    (a logger writing to a file another test closed turns every log call into a handler
    error)."""
    old = structlog.get_config()
    structlog.configure(processors=[structlog.processors.add_log_level,
                                    structlog.dev.ConsoleRenderer(colors=False)],
                        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(),
                        cache_logger_on_first_use=False)
    try:
        yield
    finally:
        structlog.configure(**old)


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Every structlog event at every level, whatever an earlier test configured."""
    old = structlog.get_config()
    captured = structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.processors.add_log_level, captured],
                        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
                        logger_factory=structlog.PrintLoggerFactory(),
                        cache_logger_on_first_use=False)
    try:
        yield captured.entries
    finally:
        structlog.configure(**old)


# -- estimation apart from trading ---------------------------------------------------------

async def test_targets_are_resolved_on_schedule_without_trading(
        tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    # a band nothing can breach: every re-solve after the deployment must trade nothing
    cfg = config(tmp_path, "band = 1.0\n[rebalance.schedule]\nevery_bars = 10\n")
    _, summary, watch = await run(cfg, 150)
    solved_at = [bar for bar, _ in watch.targets]
    assert solved_at[0] == 31  # min_history_bars of returns
    assert solved_at[1:] == list(range(41, 151, 10))
    assert len(watch.decisions()) == 1 and summary.rebalances == 1  # the deployment only
    # the targets really moved between solves (real min-variance on a moving window)
    first, last = watch.targets[0][1].weights, watch.targets[-1][1].weights
    assert max(abs(first[s] - last[s]) for s in first) > 0.01
    solved = [e for e in logs if e["event"] == "targets_solved"]
    assert len(solved) == len(watch.targets)
    for e in solved:
        assert e["method"] == "min_variance" and e["bars"] == min(e["bars"], 48)
        for key in ("span_start", "span_end", "expected_return", "volatility", "sharpe",
                    "solve_s", "old_targets", "new_targets", "trigger"):
            assert key in e, key
        assert e["volatility"] > 0


async def test_no_scheduled_solves_while_halted_and_one_at_once_after_the_resume(
        tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    cfg = config(tmp_path, "[rebalance.schedule]\nevery_bars = 10\n")
    holder: dict[str, Daemon] = {}

    def on_bar(bar: int) -> None:
        gate = holder["daemon"].gate
        if bar == 60:
            gate.halt("test", by="ops")
        elif bar == 100:
            gate.resume(by="ops")

    daemon = Daemon(cfg)
    holder["daemon"] = daemon
    watch = Watch(daemon, on_bar=on_bar)
    await daemon.run(max_bars=130)
    solved_at = [bar for bar, _ in watch.targets]
    # the watch and the rebalancer see each BarsClosed in either order: allow one bar
    assert not [b for b in solved_at if 62 <= b <= 100], solved_at
    after = [(b, e.reason) for b, e in watch.targets if b > 100]
    assert after and after[0][0] <= 102 and after[0][1].startswith("schedule"), after
    assert [e["event"] for e in logs if e["event"].startswith("solves_")] == \
        ["solves_paused", "solves_resumed"]


async def test_regime_change_triggers_a_resolve(tmp_path: Path) -> None:
    cfg = config(tmp_path, "[rebalance.schedule]\nevery_bars = 0\nvol_change = 0.3\n"
                           "vol_window_bars = 12\n")
    _, _, watch = await run(cfg, 400)
    reasons = [e.reason for _, e in watch.targets]
    assert reasons[0] == "initial"
    regimes = [r for r in reasons if r.startswith("regime: realised vol")]
    assert regimes, reasons  # GARCH volatility clustering moves a 12-bar vol by > 30%
    assert len(regimes) == len(reasons) - 1  # nothing else re-solves: the schedule is off


# -- working orders ------------------------------------------------------------------------

async def test_drift_counts_working_orders_so_a_drift_is_traded_once(tmp_path: Path) -> None:
    # targets fixed after the first solve, so the only drift is the market's; a 5 pp band;
    # participation unbounded so the deployment is one decision (tests/test_participation.py
    # covers trading a large drift in slices)
    cfg = config(tmp_path, "band = 0.05\n[rebalance.schedule]\nevery_bars = 0\n",
                 tables="[risk]\nmax_volume_share = 1.0\n")
    box: list[Daemon] = []
    seen: dict[str, Any] = {}

    def look(bar: int) -> None:  # the daemon cancels working orders when it stops: look before
        if bar == 120:
            rb = box[0].rebalancer
            seen.update(working=box[0].oms.working_quantity(), effective=rb.effective_weights(),
                        filled=box[0].portfolio.weights(SYMBOLS), targets=dict(rb.targets or {}))

    daemon, summary, watch = await _run_with_hook(cfg, 120, look, box, venue=FrozenVenue(cfg))
    assert summary.fills == 0
    assert len(watch.decisions(completions=True)) == 1  # the deployment, never repeated
    targets = seen["targets"]
    assert {s for s, q in seen["working"].items() if q} == \
        {s for s, t in targets.items() if t > 0.01}
    # nothing is filled (drift against fills alone would be -target, far outside the band),
    # yet the effective weights (positions + working orders) sit inside the band
    assert all(v == 0.0 for v in seen["filled"].values())
    assert max(abs(seen["effective"][s] - targets[s]) for s in SYMBOLS) < 0.05
    assert daemon.rebalancer.skips["within_bands"] >= 80  # decided every bar, traded never


async def test_a_refused_rebalance_is_retried_after_a_pause_not_every_bar(
        tmp_path: Path) -> None:
    cfg = config(tmp_path, "[rebalance.trigger]\nrejected_retry_bars = 7\n")
    daemon, summary, watch = await run(cfg, 60, venue=RejectingVenue)
    bars = [bar for bar, _ in watch.decisions().values()]
    assert bars == [31, 38, 45, 52, 59]
    assert summary.fills == 0 and summary.venue_rejections == summary.orders
    assert daemon.rebalancer.skips["rejected_retry"] == 60 - 31 - 4


# -- cooldown, cost test, calendar ---------------------------------------------------------

async def test_cooldown_spaces_rebalances(tmp_path: Path) -> None:
    tight = "band = 0.01\n[rebalance.trigger]\ncooldown_bars = 15\n"
    daemon, _, watch = await run(config(tmp_path, tight), 220)
    bars = [bar for bar, _ in watch.decisions().values()]
    assert len(bars) >= 4
    assert min(b - a for a, b in itertools.pairwise(bars)) >= 15
    assert daemon.rebalancer.skips["cooldown"] > 0


async def test_cost_test_skips_rebalances_that_do_not_pay(
        tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    strict = "band = 0.01\n[rebalance.cost]\nmax_cost_share = 0.0001\n"
    daemon, summary, _ = await run(config(tmp_path / "strict", strict), 200)
    assert summary.rebalances == 1  # the deployment is exempt; nothing else pays 0.01% of TE
    assert daemon.rebalancer.skips["cost_exceeds_benefit"] > 10
    skipped = [e for e in logs if e["event"] == "rebalance_skipped"
               and e["reason"] == "cost_exceeds_benefit"]
    assert skipped and "bps of NAV" in skipped[0]["detail"]
    assert "TE removed" in skipped[0]["detail"]
    # logged at info once when the reason appeared, at debug while it repeats
    assert [e["log_level"] for e in skipped].count("info") < len(skipped) / 2

    lenient = "band = 0.01\n[rebalance.cost]\nmax_cost_share = 1.0\n"
    daemon, summary, _ = await run(config(tmp_path / "lenient", lenient), 200)
    assert summary.rebalances > 3
    decision = daemon.rebalancer.last_decision or {}
    assert decision["te_before_bps"] > decision["te_after_bps"]
    assert decision["est_cost_bps"] < decision["te_before_bps"] - decision["te_after_bps"]


async def test_calendar_fallback_trades_with_no_drift_rule(tmp_path: Path) -> None:
    # 1h bars: every 2 days = 48 bars
    cal = "[rebalance.trigger]\nrules = []\ncalendar_days = 2.0\n"
    _, _, watch = await run(config(tmp_path, cal), 200)
    decisions = list(watch.decisions().values())
    assert decisions[0][1].startswith("deploy")
    later = decisions[1:]
    assert later and all(r.startswith("calendar: ") for _, r in later)
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(decisions)]
    assert all(g == 48 for g in gaps), gaps


async def test_a_restart_keeps_the_calendar_and_cooldown_clock(tmp_path: Path) -> None:
    """The last rebalance's time is journaled: after a restart the calendar fallback counts
    from it, not from the restart (a daemon redeployed more often than calendar_days would
    otherwise never rebalance by the calendar)."""
    cal = "[rebalance.trigger]\nrules = []\ncalendar_days = 2.0\ncooldown_bars = 5\n"
    cfg = config(tmp_path, cal)  # the same state_dir for both runs
    _, _, first = await run(cfg, 110)
    stamps = [i.ts for _, i in first.intents if not i.reason.startswith("completion")]
    assert stamps, "the first run never rebalanced"
    last = max(stamps)
    _, _, second = await run(cfg, 80)  # the simulated market and paper venue resume
    calendar = [(i.ts, i.reason) for _, i in second.intents if i.reason.startswith("calendar")]
    assert calendar, "no calendar rebalance after the restart"
    # 2 days after the first run's last rebalance: not 2 days after the restart
    assert calendar[0][0] - last == timedelta(days=2), (last, calendar[0])


async def test_an_unreadable_rebalance_clock_is_reported_and_ignored(
        tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    from daemon.journal import Journal
    from daemon.rebalancer import LAST_REBALANCE_KEY

    cfg = config(tmp_path)
    cfg.state_path.mkdir(parents=True)
    journal = Journal(cfg.state_path / "journal.sqlite")
    journal.set_meta(LAST_REBALANCE_KEY, "yesterday-ish")
    journal.close()
    _, summary, _ = await run(cfg, 60)
    assert summary.rebalances >= 1  # started and traded as a first run would
    (warning,) = [e for e in logs if e["event"] == "rebalance_clock_unreadable"]
    assert warning["value"] == "yesterday-ish" and warning["log_level"] == "warning"


# -- orders --------------------------------------------------------------------------------

async def test_limit_orders_are_marketable_on_tick_and_fill(tmp_path: Path) -> None:
    lim = "band = 0.02\n[rebalance.policy]\norder_type = \"limit\"\nlimit_offset_bps = 20.0\n"
    daemon, summary, watch = await run(config(tmp_path, lim), 150)
    assert watch.intents and summary.fills > 0
    rules = daemon.venue.markets()
    for _, i in watch.intents:
        assert i.order_type is OrderType.LIMIT and i.limit_price is not None
        assert rules[i.symbol].is_on_tick(i.limit_price)
        if i.side is Side.BUY:
            assert i.limit_price >= i.reference_price * 1.002 - 1e-12
        else:
            assert i.limit_price <= i.reference_price * 0.998 + 1e-12
    assert summary.risk_rejections == 0 and summary.venue_rejections == 0


async def test_unfilled_limit_orders_expire_and_the_drift_is_seen_again(tmp_path: Path) -> None:
    lim = ("band = 0.02\n[rebalance.policy]\norder_type = \"limit\"\nlimit_timeout_bars = 3\n"
           "[rebalance.schedule]\nevery_bars = 0\n")
    daemon, _, watch = await run(config(tmp_path, lim), 45, venue=FrozenVenue)
    decisions = list(watch.decisions().items())
    assert len(decisions) >= 2
    (first, (bar1, _)), (_, (bar2, _)) = decisions[0], decisions[1]
    # cancelled after 3 unfilled bars; traded again on the next bar, once the venue confirmed
    # the cancel (an order whose cancel is still in flight may yet fill: it stays in the drift)
    assert bar2 - bar1 == 4
    for cid, order in daemon.oms.orders.items():
        if cid.startswith(f"td-{first}-"):
            assert order.state is OrderState.CANCELLED


# -- short history, failed solves, previous weights ----------------------------------------

async def test_short_history_equal_weight_until_the_real_solve(tmp_path: Path) -> None:
    cfg = config(tmp_path, allocation='on_short_history = "equal_weight"')
    _, _, watch = await run(cfg, 60)
    # no pointless re-solve while the history is short
    (bar0, first), (bar1, second) = watch.targets[0], watch.targets[1]
    assert bar0 == 1 and first.method == "equal_weight"
    assert first.weights == pytest.approx(dict.fromkeys(SYMBOLS, 0.25))
    assert "insufficient history" in first.reason
    assert bar1 == 31 and second.method == "min_variance"
    assert second.reason.startswith("history now sufficient")
    assert watch.intents[0][0] == 1  # deployed on equal weights straight away


async def test_short_history_hold_waits_for_the_minimum(tmp_path: Path) -> None:
    _, _, watch = await run(config(tmp_path), 40)  # on_short_history defaults to hold
    assert watch.targets[0][0] == 31
    assert min(bar for bar, _ in watch.intents) == 31


class FailAfterFirst:
    """The real solve once, then SolveError every time."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, returns: pd.DataFrame, cfg: Any, interval_s: int,
                 previous: dict[str, float] | None = None) -> Allocation:
        self.calls += 1
        if self.calls > 1:
            raise SolveError("infeasible constraints: test")
        return solve(returns, cfg, interval_s, previous)


async def test_failed_solve_keeps_the_last_targets_and_sends_nothing(
        tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    cfg = config(tmp_path, "band = 1.0\n[rebalance.schedule]\nevery_bars = 5\n"
                           "retry_after_bars = 10\n")
    fn = FailAfterFirst()
    daemon, _, watch = await run(cfg, 120, solve_fn=fn)
    assert len(watch.targets) == 1
    assert daemon.rebalancer.targets == watch.targets[0][1].weights
    assert len(watch.decisions()) == 1  # the deployment; no failed solve sent anything
    # attempts at 31 (ok), 36, then every retry_after_bars: 46, 56, ... 116
    assert daemon.rebalancer.solve_failures == len(range(36, 121, 10))
    failed = [e for e in logs if e["event"] == "solve_failed"]
    assert failed and failed[0]["kept_targets"] == pytest.approx(
        {k: round(v, 4) for k, v in watch.targets[0][1].weights.items()})


class RecordPrevious:
    def __init__(self) -> None:
        self.previous: list[dict[str, float] | None] = []

    def __call__(self, returns: pd.DataFrame, cfg: Any, interval_s: int,
                 previous: dict[str, float] | None = None) -> Allocation:
        self.previous.append(previous)
        return solve(returns, cfg, interval_s, previous)


async def test_current_weights_are_passed_for_the_turnover_cap(tmp_path: Path) -> None:
    cfg = config(tmp_path, "band = 0.02\n[rebalance.schedule]\nevery_bars = 10\n",
                 tables="[allocation.constraints]\nmax_turnover = 0.05\n")
    fn = RecordPrevious()
    _, _, watch = await run(cfg, 100, solve_fn=fn)
    assert fn.previous[0] is None  # deploying cash is not turnover
    later = fn.previous[1:]
    assert len(later) >= 5
    for (_, after), prev in zip(watch.targets[1:], later, strict=True):
        assert prev is not None and sum(prev.values()) == pytest.approx(1.0, abs=0.03)
        # the allocation's cap acts on the weights we passed: no new target is more than
        # 0.05 of turnover away from the holdings
        moved = sum(abs(after.weights.get(s, 0.0) - prev.get(s, 0.0)) for s in SYMBOLS)
        assert moved <= 0.05 + 1e-6


# -- operator request and decision logs ----------------------------------------------------

async def test_request_rebalance_forces_a_solve_and_a_trade(tmp_path: Path) -> None:
    cfg = config(tmp_path, "band = 1.0\n[rebalance.schedule]\nevery_bars = 0\n")
    daemon_box: list[Daemon] = []

    def poke(bar: int) -> None:
        if bar == 80:
            daemon_box[0].rebalancer.request_rebalance("test")

    _, _, watch = await _run_with_hook(cfg, 100, poke, daemon_box)
    reasons = [(bar, e.reason) for bar, e in watch.targets]
    assert reasons == [(31, "initial"), (81, "requested: test")]
    decisions = list(watch.decisions().values())
    assert decisions[0][1].startswith("deploy")
    assert decisions[1] == (81, "requested by operator")


async def _run_with_hook(cfg: Config, bars: int, hook: Callable[[int], None],
                         box: list[Daemon], **kw: Any) -> tuple[Daemon, Any, Watch]:
    daemon = Daemon(cfg, **kw)
    box.append(daemon)
    watch = Watch(daemon, on_bar=hook)
    summary = await daemon.run(max_bars=bars)
    assert summary.handler_errors == 0
    return daemon, summary, watch


async def test_each_decision_is_logged_once_with_its_facts(
        tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    edge = "band = 0.02\n[rebalance.policy]\nmode = \"edge\"\n"
    _, summary, watch = await run(config(tmp_path, edge), 250)
    decisions = [e for e in logs if e["event"] == "rebalance"]
    assert len(decisions) == summary.rebalances == len(watch.decisions()) >= 3
    for e in decisions:
        for key in ("decision_id", "trigger", "mode", "drifts", "old_targets", "new_targets",
                    "trade_to", "orders", "est_cost_bps"):
            assert key in e, key
        assert e["orders"] and e["log_level"] == "info"
    edge_trades = [e for e in decisions if e["mode"] == "edge"]
    assert edge_trades
    on_edge = 0
    for e in edge_trades:
        current = {s: e["new_targets"][s] + e["drifts"][s] for s in e["drifts"]}
        for s, d in e["breaches"].items():
            # into the band from the side it drifted to; exactly onto the edge unless spare
            # cash (cash above its target) is spread over every asset by the projection
            landed = e["trade_to"][s] - e["new_targets"][s]
            assert abs(landed) <= 0.02 + 2e-4 and landed * d >= 0
            on_edge += abs(abs(landed) - 0.02) < 2e-4
        to_edge = sum(abs(e["trade_to"][s] - current[s]) for s in current)
        to_target = sum(abs(e["new_targets"][s] - current[s]) for s in current)
        assert to_edge < to_target
    assert on_edge >= len(edge_trades)
    # skips at info only when the reason changes (between two rebalances)
    info_skips = [e for e in logs if e["event"] in ("rebalance_skipped", "rebalance")
                  and e["log_level"] == "info"]
    for a, b in itertools.pairwise(info_skips):
        if a["event"] == b["event"] == "rebalance_skipped":
            assert a["reason"] != b["reason"]
    assert any(e["event"] == "rebalance_skipped" and e["log_level"] == "debug" for e in logs)


async def test_portfolio_tracking_error_trigger(tmp_path: Path) -> None:
    te = ('band = 0.5\n[rebalance.trigger]\nrules = ["portfolio"]\n'
          'portfolio_measure = "tracking_error"\nportfolio_threshold = 0.03\n')
    _, _, watch = await run(config(tmp_path, te), 200)
    later = list(watch.decisions().values())[1:]
    assert later and all(r.startswith("portfolio: tracking_error") for _, r in later)
