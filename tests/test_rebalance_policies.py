"""Evidence on real data: three rebalancing policies replayed through the real daemon pipeline
(replay feed → bus → rebalancer → risk gate → OMS → paper venue → fills → portfolio → journal)
over 3¼ years of Binance daily bars of 10 assets, against the same fixed targets.

- calendar:  every 30 days, back to target (no drift rule);
- band:      5 pp absolute band, back to target;
- band_edge: 5 pp absolute band, only to the band's edge.

Targets are the same in every run, so only the trading policy differs: equal weight (the real
`risk.allocation.solve`, method equal_weight), and in a second case a long-only min-variance
(riskfolio-lib, 90-bar window, at most 25% per asset) re-solved every 30 bars on the same
schedule in every run (the solve sees only prices, never the portfolio, so the targets match).

The risk gate's portfolio limits (drawdown halt, daily loss, VaR) are opened wide and orders may
be large (no child splitting at these sizes): crypto in 2019-2022 breaches the defaults (-40% on
2020-03-12), and this test compares trading policies, not risk limits.

Measures, all over the same bars (from the first bar after the initial deployment filled):

- turnover: traded notional over mean NAV, annualised (a full switch of the portfolio once a
  year is 2.0);
- fees: paid to the paper venue (10 bps), slippage is in the NAV (5 bps);
- tracking error: annualised std of r_P - r_T, where r_P is the daemon's NAV return per bar and
  r_T the return of a target-weight portfolio rebalanced continuously (every bar, without cost)
  at the targets in force at the start of the bar; 365 bars a year;
- RMS drift: root mean square over bars and assets of (weight - target), a second, return-free
  view of how far the portfolio sat from its targets.

Comparability criterion: band_edge counts as tracking "comparably" when its tracking error is at
most 1.5 × the calendar policy's. Under it, band_edge must trade less than calendar-to-target.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import structlog

from daemon.app import Daemon, build_feed
from daemon.config import Config, parse_config
from daemon.events import BarsClosed
from daemon.journal import Journal

SYMBOLS = ["BTC/USDT", "ETH/USDT", "BNB/USDT", "XRP/USDT", "ADA/USDT", "LINK/USDT", "LTC/USDT",
           "TRX/USDT", "XLM/USDT", "ETC/USDT"]
START, END = "2019-07-05", "2022-10-11"  # end exclusive: the last bar is 2022-10-10

BASE = """
[daemon]
state_dir = "{state}"
log_level = "warning"
[market]
source = "replay"
symbols = {symbols}
interval = "1d"
[market.replay]
data_dir = "{data}"
start = "{start}"
end = "{end}"
[venue.paper]
initial_cash = 100000.0
fee_bps = 10.0
slippage_bps = 5.0
[rebalance]
band = 0.05
solver = "thread"
max_child_notional = 200000.0
[rebalance.schedule]
every_bars = 30
[allocation]
{allocation}
min_history_bars = 30
[risk]
max_order_notional = 250000.0
[risk.state]
max_daily_loss_fraction = 1.0
max_drawdown_fraction = 1.0
[risk.var]
max_var_fraction = 1.0
max_cvar_fraction = 1.0
"""

TARGETS = {
    "equal_weight": 'method = "equal_weight"\nlookback_bars = 30',
    "min_variance": 'method = "min_variance"\nlookback_bars = 90\nmax_weight = 0.25',
}

POLICIES = {
    "calendar": '[rebalance.trigger]\nrules = []\ncalendar_days = 30.0\n'
                '[rebalance.policy]\nmode = "target"\n',
    "band": '[rebalance.trigger]\nrules = ["absolute"]\n[rebalance.policy]\nmode = "target"\n',
    "band_edge": '[rebalance.trigger]\nrules = ["absolute"]\n[rebalance.policy]\nmode = "edge"\n',
}


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """Warnings and errors only, to this test's stdout, whatever an earlier test configured:
    three replays log tens of thousands of order events at info."""
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


@dataclass
class Result:
    name: str
    turnover: float  # per year
    traded: float
    fees: float
    tracking_error: float  # annualised
    rms_drift: float
    rebalances: int
    final_nav: float
    seconds: float


class Recorder:
    """After every complete cross-section: NAV, weights, targets and closes."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.navs: list[float] = []
        self.weights: list[list[float]] = []
        self.targets: list[list[float] | None] = []
        self.closes: list[list[float]] = []
        daemon.bus.subscribe("recorder", {BarsClosed: self.on_bars_closed})

    def on_bars_closed(self, event: BarsClosed) -> None:
        p, rb = self.daemon.portfolio, self.daemon.rebalancer
        w = p.weights(SYMBOLS)
        self.navs.append(p.nav)
        self.weights.append([w[s] for s in SYMBOLS])
        t = rb.targets
        self.targets.append([t.get(s, 0.0) for s in SYMBOLS] if t else None)
        self.closes.append([p.prices[s] for s in SYMBOLS])


def config(tmp: Path, data: Path, policy: str, targets: str = "equal_weight") -> Config:
    text = BASE.format(state=tmp / targets / policy, symbols=str(SYMBOLS).replace("'", '"'),
                       data=data / "binance-spot" / "1d", start=START, end=END,
                       allocation=TARGETS[targets])
    return parse_config(text + POLICIES[policy])


async def run_policy(tmp: Path, data: Path, policy: str,
                     targets: str = "equal_weight") -> tuple[Result, Recorder]:
    cfg = config(tmp, data, policy, targets)
    started = time.perf_counter()
    # disposable state: the journal need not fsync each order for this evidence
    journal = Journal(cfg.state_path / "journal.sqlite", synchronous="OFF")
    daemon = Daemon(cfg, feed=build_feed(cfg), journal=journal)
    rec = Recorder(daemon)
    summary = await daemon.run()
    seconds = time.perf_counter() - started
    assert summary.handler_errors == 0
    assert summary.risk_rejections == 0, summary.rejections_by_code
    assert summary.venue_rejections == 0
    return measure(policy, rec, daemon.counters.traded_notional, summary.fees,
                   summary.rebalances, summary.end_nav, seconds), rec


def measure(name: str, rec: Recorder, traded_total: float, fees: float, rebalances: int,
            final_nav: float, seconds: float) -> Result:
    navs = np.array(rec.navs)
    closes = np.array(rec.closes)
    weights = np.array(rec.weights)
    first = next(i for i, t in enumerate(rec.targets) if t is not None)
    start = first + 2  # deployment decided at `first`, filled at the next bar's open
    targets = np.array([t for t in rec.targets[start - 1:]])  # in force at each bar's start
    r_p = navs[start:] / navs[start - 1:-1] - 1.0
    asset_r = closes[start:] / closes[start - 1:-1] - 1.0
    r_t = np.sum(targets[:-1] * asset_r, axis=1)
    te = float(np.std(r_p - r_t, ddof=1) * math.sqrt(365.0))
    drift = weights[start:] - targets[1:]
    rms = float(np.sqrt(np.mean(drift**2)))
    years = (len(navs) - start) / 365.0
    turnover = traded_total / float(np.mean(navs[start:])) / years
    return Result(name, turnover, traded_total, fees, te, rms, rebalances, final_nav, seconds)


@pytest.mark.parametrize("targets", list(TARGETS))
async def test_band_to_edge_trades_less_than_calendar_at_comparable_tracking(
        tmp_path: Path, shared_data: Path, targets: str) -> None:
    results = {}
    for policy in POLICIES:
        results[policy], _ = await run_policy(tmp_path, shared_data, policy, targets)
    print(f"\n{targets} targets, {len(SYMBOLS)} assets, {START}..2022-10-10")
    print(f"{'policy':<10} {'turnover/yr':>11} {'traded':>14} {'fees':>10} {'TE ann.':>8} "
          f"{'RMS drift':>9} {'rebal.':>6} {'final NAV':>14} {'run s':>6}")
    for r in results.values():
        print(f"{r.name:<10} {r.turnover:11.3f} {r.traded:14,.0f} {r.fees:10,.0f} "
              f"{r.tracking_error:8.2%} {r.rms_drift:9.4f} {r.rebalances:6d} "
              f"{r.final_nav:14,.0f} {r.seconds:6.1f}")
    cal, edge = results["calendar"], results["band_edge"]
    assert edge.tracking_error <= 1.5 * cal.tracking_error, (edge, cal)
    assert edge.turnover < cal.turnover, (edge, cal)
    assert edge.fees < cal.fees
