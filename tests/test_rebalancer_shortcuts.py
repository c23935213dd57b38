"""The rebalancer's per-bar shortcuts (`_quiet`'s within-bands count, `_halted_repeat`) change
speed only: with `shortcuts` off every bar takes `decide`'s full path.

On real hourly data, bar by bar: the same skip after every `BarsClosed`, the same fingerprint
(every handler call with every order, fill and target) and metrics.json byte for byte. On
made-up states around the band edges: the same skip counts, last skip, orders and log lines,
and the shortcut not taken where `decide` has to trade, log or test the calendar."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from daemon.config import Config
from daemon.events import BarsClosed
from daemon.fingerprint import Fingerprint
from daemon.logs import configure
from daemon.portfolio import Portfolio
from daemon.rebalancer import RebalanceConfig, Rebalancer
from daemon.replay import ReplayRequest, build_metrics, dumps_metrics, execute, prepare
from risk.allocation import AllocationConfig
from risk.market_rules import MarketRules
from risk.triggers import TriggerConfig
from tests.replay_configs import replay_config

SYMBOLS = ["BTC/USDT", "ETH/USDT", "BNB/USDT", "SOL/USDT", "XRP/USDT", "ADA/USDT"]
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _replay(cfg: Config, data: Path, out: Path, start: str, end: str,
            shortcuts: bool) -> dict[str, Any]:
    from risk import solver_cache

    solver_cache._PROBLEMS.clear()  # each run solves cold (see test_replay_lockstep)
    with open(out.parent / f"{out.name}.log", "w", encoding="utf-8") as log:
        configure("warning", stream=log)
        prepared = prepare(cfg, ReplayRequest(data_dir=data, out_dir=out, start=start,
                                              end=end, symbols=SYMBOLS))
        daemon = prepared.daemon
        rb = daemon.rebalancer
        rb.shortcuts = shortcuts
        trace: list[tuple[int, str | None, int, int]] = []
        taken = 0
        quiet = rb._quiet

        def counted(ts: datetime, targets: dict[str, float]) -> bool:
            nonlocal taken
            done = quiet(ts, targets)
            taken += done
            return done

        rb._quiet = counted  # type: ignore[method-assign]
        (sub,) = [s for s in daemon.bus.subscribers if s.name == "rebalancer"]
        handler = sub.handlers[BarsClosed]

        def traced(event: BarsClosed) -> Any:
            out = handler(event)
            trace.append((rb.bar_index, rb._last_skip, rb.skips.total(), rb.rebalances))
            return out

        sub.handlers[BarsClosed] = traced
        fp = Fingerprint()
        fp.attach(daemon.bus)
        result = asyncio.run(execute(prepared))
    fp.add("end_nav", result.summary.end_nav)
    return {"trace": trace, "fingerprint": fp.hexdigest(), "skips": dict(rb.skips),
            "metrics": dumps_metrics(build_metrics(result)), "taken": taken,
            "orders": result.summary.orders}


@pytest.mark.parametrize(("start", "end", "limits"), [
    ("2021-07-01", "2021-08-15", "relaxed"),  # trades throughout: orders, fills, solves
    ("2017-08-17", "2018-03-01", "config.toml"),  # REDUCING, then HALTED from 2018-02-05
])
def test_shortcuts_agree_with_the_full_decide_bar_by_bar(
        shared_data: Path, tmp_path: Path, start: str, end: str, limits: str) -> None:
    cfg = replay_config(limits)
    data = shared_data / "binance-spot" / "1h"
    full = _replay(cfg, data, tmp_path / "full", start, end, shortcuts=False)
    fast = _replay(cfg, data, tmp_path / "fast", start, end, shortcuts=True)
    assert full["taken"] == 0
    assert fast["orders"] > 20
    # most bars are dealt with by the shortcut, so the comparison is about it
    assert fast["taken"] > len(fast["trace"]) // 2
    assert fast["trace"] == full["trace"]
    assert fast["skips"] == full["skips"]
    assert fast["fingerprint"] == full["fingerprint"]
    assert fast["metrics"] == full["metrics"]


# -- made-up states -----------------------------------------------------------------------------

class _Bus:
    def __init__(self) -> None:
        self.published: list[Any] = []

    def publish(self, event: Any) -> None:
        self.published.append(event)

    def track(self, coro: Any, name: str = "") -> None:
        coro.close()


class _Journal:
    def __init__(self) -> None:
        self.seq = 0

    def get_meta(self, key: str) -> str | None:
        return None

    def set_meta(self, key: str, value: str) -> None:
        pass

    def next_sequence(self, name: str) -> int:
        self.seq += 1
        return self.seq


class _OMS:
    def __init__(self, working: dict[str, float]) -> None:
        self._working = working
        self.orders: dict[str, Any] = {}

    def working_quantity(self) -> dict[str, float]:
        return dict(self._working)

    def working(self) -> list[Any]:
        return []


SYMS = ["AAA/USDT", "BBB/USDT", "CCC/USDT"]
RULES = {s: MarketRules(s, s[:3], "USDT", amount_step=0.001, price_tick=0.01, min_qty=0.001,
                        min_notional=10.0) for s in SYMS}


def _rebalancer(rng: random.Random, trigger: TriggerConfig, state: str) -> Rebalancer:
    prices = {s: rng.uniform(5, 500) for s in SYMS}
    targets = {s: rng.choice([0.0, 0.1, 0.2, 0.3]) for s in SYMS}
    if rng.random() < 0.2:
        targets["ZZZ/USDT"] = 0.05  # a target outside the traded symbols
    nav = 100_000.0
    # weights around their targets, some just inside or just outside a band edge
    positions = {}
    for s in SYMS:
        w = targets[s] + rng.choice([-1, 1]) * rng.choice(
            [0.0, 0.01, 0.049999, 0.05, 0.050001, 0.08, rng.uniform(0, 0.06)])
        if rng.random() < 0.1:
            w = 0.0  # not held: deploying cash when most are
        positions[s] = max(w, 0.0) * nav / prices[s]
    cash = nav - sum(q * prices[s] for s, q in positions.items())
    if rng.random() < 0.05:
        cash = -sum(q * prices[s] for s, q in positions.items())  # NAV zero
    working = {s: rng.uniform(-1, 1) for s in SYMS if rng.random() < 0.2}
    portfolio = Portfolio(quote="USDT", cash=cash, positions=positions, prices=prices)
    rb = Rebalancer(_Bus(), portfolio, _OMS(working), _Journal(), SYMS, 3600,  # type: ignore
                    RebalanceConfig(band=0.05, trigger=trigger), AllocationConfig(),
                    lambda: RULES, None, 0.001)  # type: ignore[arg-type]
    rb.targets = targets
    rb._targets_since = T0
    rb._last_skip = rng.choice([None, "within_bands", "within_bands", "trading_halted",
                                "cooldown"])
    if rng.random() < 0.5:
        rb._last_rebalance_bar, rb._last_rebalance_ts = 0, T0
    rb.bar_index = rng.randint(0, 30)
    rb.trading_state = lambda: state
    return rb


def _decide(rb: Rebalancer, ts: datetime) -> tuple[Any, ...]:
    with structlog.testing.capture_logs() as lines:
        rb.decide(ts)
    return (dict(rb.skips), rb._last_skip, rb.rebalances, repr(rb.bus.published),  # type: ignore
            [(d["event"], d.get("reason"), d.get("detail")) for d in lines
             if d["log_level"] in ("info", "debug")])


@pytest.mark.parametrize("debug", [False, True])
def test_shortcuts_agree_with_the_full_decide_on_made_up_states(debug: bool) -> None:
    rng = random.Random(11)
    triggers = [TriggerConfig(), TriggerConfig(rules=["relative"]),
                TriggerConfig(rules=["five_twenty_five"], cooldown_bars=10),
                TriggerConfig(rules=[], calendar_days=2.0, calendar_min_drift=0.01),
                TriggerConfig(calendar_days=1.0)]
    configure("debug" if debug else "info")  # info: the lines a changed reason writes
    taken = 0
    for case in range(600):
        seed = rng.random()
        trigger = triggers[case % len(triggers)]
        state = ["ACTIVE", "REDUCING", "HALTED"][case % 3]
        ts = T0 + timedelta(hours=rng.choice([1, 30, 70]))
        results = []
        for shortcuts in (False, True):
            rb = _rebalancer(random.Random(seed), trigger, state)
            rb.shortcuts = shortcuts
            quiet = rb._quiet(ts, rb.targets) if shortcuts else False  # type: ignore[arg-type]
            taken += quiet
            rb = _rebalancer(random.Random(seed), trigger, state)
            rb.shortcuts = shortcuts
            # twice: the second bar repeats the first one's skip, the shortcut's case
            results.append((_decide(rb, ts), _decide(rb, ts + timedelta(hours=1))))
        assert results[1] == results[0], (case, trigger, state)
    assert taken > 50


def test_no_shortcut_where_decide_must_trade_or_log() -> None:
    configure("warning")
    rng = random.Random(3)
    seen = set()
    for _ in range(400):
        rb = _rebalancer(rng, TriggerConfig(), "ACTIVE")
        ts = T0 + timedelta(hours=5)
        weights = rb.effective_weights()
        drifts = {s: weights.get(s, 0.0) - rb.targets.get(s, 0.0)  # type: ignore[union-attr]
                  for s in set(weights) | set(rb.targets)}  # type: ignore[arg-type]
        breach = any(abs(d) > 0.05 + 1e-12 for d in drifts.values())
        invested = sum(max(w, 0.0) for w in weights.values())
        deploying = invested < 0.5 * sum(rb.targets.values())  # type: ignore[union-attr]
        repeat = rb._last_skip == "within_bands"
        before = rb.skips.total()
        taken = rb._quiet(ts, rb.targets)  # type: ignore[arg-type]
        if breach or deploying:
            assert not taken  # ACTIVE: decide trades
            assert rb.skips.total() == before
        else:
            assert taken and rb.skips["within_bands"] == 1
        seen.add((breach or deploying, repeat))
    assert seen == {(True, True), (True, False), (False, True), (False, False)}


def test_within_bands_is_logged_when_its_reason_changes_or_debug_is_on() -> None:
    rb = _rebalancer(random.Random(0), TriggerConfig(), "ACTIVE")
    rb.targets = {s: 0.0 for s in SYMS}
    rb.portfolio.positions = {}
    rb.oms = _OMS({})  # type: ignore[assignment]
    rb.portfolio.cash = 1000.0
    rb._last_skip = "cooldown"
    configure("info")
    with structlog.testing.capture_logs() as lines:
        rb.decide(T0)
        rb.decide(T0)
    assert [d["event"] for d in lines] == ["rebalance_skipped"]
    assert lines[0]["reason"] == "within_bands" and lines[0]["log_level"] == "info"
    configure("debug")
    with structlog.testing.capture_logs() as lines:
        rb.decide(T0)
    assert [(d["event"], d["log_level"]) for d in lines] == [("rebalance_skipped", "debug")]
    assert rb.skips["within_bands"] == 3
