"""kill -9 during rebalances, again and again: nothing lost, nothing sent twice.

The daemon runs as a real subprocess (`python -m daemon.cli run`) against the persistent paper
venue, with a simulated market paced at 200 bars a second, a small band (rebalances every few
bars) and 10 ms of simulated network latency (so requests, answers and fill reports are in
flight when the kill lands). It is SIGKILLed at seeded random moments just after a rebalance
starts, restarted each time, and finally stopped with SIGTERM. Then the journal is audited
against the venue's own books, which the venue keeps in its own SQLite file.

The second test does the same in testnet mode (ccxt venue, websocket klines, user data stream)
against the local Binance emulator, which runs on its own thread and outlives every kill, as
an exchange would.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest

from adapters.paper import PaperVenue
from daemon.config import Config, load_config
from daemon.journal import Journal
from daemon.order_state import from_venue_status

ROOT = Path(__file__).resolve().parent.parent
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
KILLS = 20
SEED = 20_240_607

CONFIG = """
[daemon]
state_dir = "state"
log_level = "info"
[http]
enabled = false
[market]
symbols = ["BTC/USDT", "ETH/USDT", "BNB/USDT", "SOL/USDT"]
[market.simulated]
seed = 5
speed = 720000.0      # 1h bars, 200 a second
[venue.paper]
latency_ms = 10.0
[oms]
reconcile_interval_s = 0.5
shutdown_timeout_s = 5.0
[rebalance]
band = 0.01
solver = "thread"
[allocation]
lookback_bars = 24
min_history_bars = 20
max_weight = 0.5
method = "inverse_volatility"
[risk]
var_min_bars = 20
[risk.state]
max_rejections = 100000
"""


class LogWatch:
    """Reads the daemon's JSON log lines on a thread and counts the events of interest."""

    EVENTS = ("started", "rebalance", "feed_resumed", "reconcile_mismatch", "trading_halted",
              "handler_failed", "send_failed", "missed_fill_applied", "order_resolved")

    def __init__(self, stream: IO[bytes]) -> None:
        self.counts: Counter[str] = Counter()
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace")
            for event in self.EVENTS:
                if f'"event": "{event}"' in line:
                    with self.changed:
                        self.counts[event] += 1
                        if event in ("reconcile_mismatch", "trading_halted", "handler_failed",
                                     "send_failed"):
                            self.lines.append(line.strip())
                        self.changed.notify_all()

    def wait_for(self, event: str, n: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.counts[event] >= n, timeout)

    def join(self) -> None:
        self._thread.join(timeout=10)


def start(config: Path, log: IO[bytes], env: dict[str, str]
          ) -> tuple[subprocess.Popen[bytes], LogWatch]:
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(config)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
                            env={**env, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    return proc, LogWatch(proc.stdout)


@dataclass
class Audit:
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def audit(cfg: Config) -> Audit:
    """Compare the journal with the paper venue's books, from the two files alone."""
    out = Audit()
    problems = out.problems
    journal = Journal(cfg.state_path / "journal.sqlite")
    venue = PaperVenue(cfg.venue.paper, list(cfg.market.symbols), cfg.market.quote,
                       state_path=cfg.state_path / "paper_venue.sqlite")
    orders = {o.client_order_id: o for o in journal.orders()}
    venue_orders = {v.client_order_id: v for v in venue.orders()}

    # every venue order is in the journal exactly once, with the same content and outcome
    for cid, v in venue_orders.items():
        row = orders.get(cid)
        if row is None:
            problems.append(f"venue order {cid} is not in the journal")
            continue
        if (row.symbol, row.side, row.order_type, row.quantity, row.limit_price) != (
                v.symbol, v.side, v.order_type, v.quantity, v.limit_price):
            problems.append(f"{cid}: journal content differs from the venue's order")
        if row.venue_order_id != v.venue_order_id:
            problems.append(f"{cid}: venue order id {row.venue_order_id} != {v.venue_order_id}")
        if v.status == "open":
            problems.append(f"{cid} still open at the venue after SIGTERM (cancel_on_shutdown)")
        expected = str(from_venue_status(v.status, v.filled, v.quantity))
        if row.state != expected:
            problems.append(f"{cid}: journal state {row.state}, venue status {v.status}")
        if abs(row.filled - v.filled) > 1e-12 * max(v.quantity, 1.0):
            problems.append(f"{cid}: journal filled {row.filled}, venue filled {v.filled}")
    # an order the venue never accepted ended in a terminal state saying why
    for cid, row in orders.items():
        if cid not in venue_orders and row.state not in ("REJECTED", "EXPIRED"):
            problems.append(f"{cid} is {row.state} in the journal but unknown to the venue")
        if row.state in ("UNKNOWN", "PENDING_NEW", "PENDING_CANCEL"):
            problems.append(f"{cid} left {row.state} after a clean stop")

    # the venue's request log: no client order id sent twice with different content, and no
    # request ever reached the venue for an order it already had (no blind resend)
    submissions = defaultdict(list)
    for s in venue.submissions():
        submissions[s.client_order_id].append(s)
    for cid, subs in submissions.items():
        if len({(s.symbol, s.side, s.order_type, s.quantity, s.limit_price) for s in subs}) > 1:
            problems.append(f"{cid} was sent with different content: {subs}")
        if sum(s.outcome in ("accepted", "duplicate") for s in subs) > 1:
            problems.append(f"{cid} reached the venue again after it had the order: "
                            f"{[s.outcome for s in subs]}")

    # fills equal the venue's trades, one for one
    fills = {f.trade_id: f for f in journal.fills()}
    trades = {t.trade_id: t for t in asyncio.run(venue.trades_since(EPOCH))}
    if set(fills) != set(trades):
        problems.append(f"fills missing from the journal: {sorted(set(trades) - set(fills))}; "
                        f"journal fills the venue lacks: {sorted(set(fills) - set(trades))}")
    for tid in set(fills) & set(trades):
        f, t = fills[tid], trades[tid]
        if (f.client_order_id, f.side, f.quantity, f.price, f.fee) != (
                t.client_order_id, t.side, t.quantity, t.price, t.fee):
            problems.append(f"fill {tid} differs from the venue's trade")

    # positions and cash: opening balances + journaled fills = the venue's balances
    opening = journal.opening_balances() or {}
    cash_delta, quantities = journal.fill_totals()
    cash = opening.get(cfg.market.quote, 0.0) + cash_delta
    balances = asyncio.run(venue.balances())
    if abs(cash - balances[cfg.market.quote]) > 0.01:
        problems.append(f"cash: journal {cash}, venue {balances[cfg.market.quote]}")
    for symbol in cfg.market.symbols:
        base = symbol.split("/")[0]
        mine = opening.get(base, 0.0) + quantities.get(symbol, 0.0)
        if abs(mine - balances[base]) > venue.markets()[symbol].amount_step / 2:
            problems.append(f"{symbol}: journal {mine}, venue {balances[base]}")
    for at, kind, ok, report in journal.reconciliations(limit=100_000):
        if not ok:
            problems.append(f"{kind} reconciliation at {at} found a mismatch: {report}")

    outcomes = Counter(detail["outcome"] for cid in orders
                       for _, kind, detail in journal.order_events(cid) if kind == "RESOLVED")
    recon = journal.reconciliations(limit=100_000)
    out.counts = {
        "venue_orders": len(venue_orders), "journal_orders": len(orders),
        "venue_rejected": sum(r.state == "REJECTED" for r in orders.values()),
        "fills": len(fills), "unknown_resolved": sum(outcomes.values()),
        "resolved_found": outcomes["found"], "resolved_by_trade": outcomes["trade"],
        "resolved_not_found_resent": outcomes["not_found"],
        "missed_fills_applied": journal.counts()["fills_found_by_query"],
        "reconciliations": len(recon),
        "startup_reconciliations": sum(k == "startup" for _, k, _, _ in recon)}
    journal.close()
    return out


def kill_cycles(config: Path, env: dict[str, str], kills: int, rng: random.Random,
                stderr: IO[bytes]) -> dict[str, float]:
    """Start, SIGKILL just after a rebalance starts, repeat; then a clean SIGTERM stop."""
    resumed = 0
    for i in range(kills):
        proc, watch = start(config, stderr, env)
        try:
            assert watch.wait_for("started", 1, 60), f"run {i} did not start"
            # land in the first or second rebalance after start, a few ms to 80 ms in:
            # sends, venue answers and fill reports are all in flight then
            assert watch.wait_for("rebalance", rng.randint(1, 2), 30), f"run {i}: no rebalance"
            time.sleep(rng.uniform(0.0, 0.08))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            watch.join()
        resumed += watch.counts["feed_resumed"]
        assert not watch.lines, f"run {i}: {watch.lines[:3]}"

    proc, watch = start(config, stderr, env)
    assert watch.wait_for("started", 1, 60)
    assert watch.wait_for("rebalance", 1, 30)
    time.sleep(1.2)  # periodic reconciliations (every 0.5 s) run while it trades
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    code = proc.wait(30)
    stop_s = time.monotonic() - t0
    watch.join()
    assert code == 0, "SIGTERM did not stop cleanly (exit 0); see stderr.log"
    assert not watch.lines, watch.lines[:3]
    return {"kills": kills, "restarts_resumed_feed": resumed + watch.counts["feed_resumed"],
            "sigterm_stop_s": round(stop_s, 2)}


@pytest.mark.slow
def test_kill_9_during_rebalances_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    config = tmp_path / "crash.toml"
    config.write_text(CONFIG)
    started = time.monotonic()
    with (tmp_path / "stderr.log").open("wb") as stderr:
        run = kill_cycles(config, dict(os.environ), KILLS, random.Random(SEED), stderr)
    result = audit(load_config(config))
    counts = {**run, **result.counts, "total_s": round(time.monotonic() - started, 1)}
    print("\ncrash test (paper):", " ".join(f"{k}={v}" for k, v in counts.items()))
    assert result.problems == []
    # every restart resumed the market after the last bar the venue saw
    assert counts["restarts_resumed_feed"] == KILLS
    assert counts["startup_reconciliations"] == KILLS + 1
    assert counts["venue_orders"] > KILLS  # it traded between the kills
    assert counts["reconciliations"] > counts["startup_reconciliations"]  # periodic ones ran
    # the kills landed mid-flight: some order or fill had to be recovered by asking the venue
    assert counts["unknown_resolved"] + counts["missed_fills_applied"] > 0


# -- the same against the local Binance emulator, through ccxt (testnet mode) ---------------
EMULATOR_KILLS = 5
EMULATOR_SYMBOLS = ["BTC/USDT", "ETH/USDT", "BNB/USDT"]
EMULATOR_CONFIG = """
[daemon]
mode = "testnet"
state_dir = "state"
log_level = "info"
[http]
enabled = false
[market]
symbols = ["BTC/USDT", "ETH/USDT", "BNB/USDT"]
interval = "1h"
[oms]
reconcile_interval_s = 0.5
shutdown_timeout_s = 5.0
[rebalance]
band = 0.01
solver = "thread"
[allocation]
lookback_bars = 24
min_history_bars = 20
method = "inverse_volatility"
[risk]
var_min_bars = 20
max_volume_share = 1.0
[risk.throttle]
orders_per_minute = 5000
symbol_orders_per_minute = 2000
[risk.state]
max_rejections = 100000
[exchange]
rest_url = "{rest}"
ws_url = "{ws}"
timeout_s = 0.5
ccxt_rate_limit_ms = 1
max_requests_per_s = 500
burst = 50
fills_poll_s = 0.2
fills_audit_s = 0.5
[exchange.stream]
bar_deadline_s = 0.3
idle_timeout_s = 0.5
reconnect_min_s = 0.05
reconnect_max_s = 0.3
"""
BINANCE_STATES = {"NEW": "ACCEPTED", "PARTIALLY_FILLED": "PARTIALLY_FILLED",
                  "FILLED": "FILLED", "CANCELED": "CANCELLED", "EXPIRED": "EXPIRED",
                  "REJECTED": "REJECTED"}


class EmulatorThread:
    """The emulator on its own event loop: an exchange that outlives the daemon's kills.
    A bar closes every 50 ms; client order ids of finished orders may be reused, as on
    Binance, so only the daemon's own care prevents a second order under one id."""

    def __init__(self) -> None:
        from adapters.binance_emulator import BinanceEmulator, SyntheticBars

        self.emu = BinanceEmulator(EMULATOR_SYMBOLS, SyntheticBars(EMULATOR_SYMBOLS, seed=21),
                                   balances={"USDT": 100_000.0}, history_bars=60, seed=7,
                                   bar_period_s=0.05, unique_client_order_ids=False)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete,
                                         args=(self._serve(),), daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "emulator did not start"

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with self.emu:
            self._ready.set()
            await self._stop.wait()

    def snapshot(self) -> tuple[Any, Any, dict[str, float]]:
        async def take() -> tuple[Any, Any, dict[str, float]]:
            return (self.emu.orders(), self.emu.trades(),
                    {a: b.total for a, b in self.emu.balances().items()})
        return asyncio.run_coroutine_threadsafe(take(), self.loop).result(10)

    def close(self) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def audit_emulator(cfg: Config, emulator: EmulatorThread) -> Audit:
    out = Audit()
    problems = out.problems
    emu_orders, emu_trades, balances = emulator.snapshot()
    journal = Journal(cfg.state_path / "journal.sqlite")
    orders = {o.client_order_id: o for o in journal.orders()}
    by_cid: dict[str, list[Any]] = defaultdict(list)
    for o in emu_orders:
        by_cid[o.client_order_id].append(o)
    for cid, same in by_cid.items():
        if len(same) > 1:
            problems.append(f"{cid} placed {len(same)} times at the exchange")
        v, row = same[0], orders.get(cid)
        if row is None:
            problems.append(f"exchange order {cid} is not in the journal")
            continue
        if (row.symbol, row.side.value.upper(), row.quantity) != (v.symbol, v.side, v.quantity):
            problems.append(f"{cid}: journal content differs from the exchange's order")
        if row.venue_order_id != str(v.order_id):
            problems.append(f"{cid}: venue order id {row.venue_order_id} != {v.order_id}")
        if row.state != BINANCE_STATES.get(v.status, v.status):
            problems.append(f"{cid}: journal state {row.state}, exchange status {v.status}")
        if abs(row.filled - v.filled) > 1e-9 * max(v.quantity, 1.0):
            problems.append(f"{cid}: journal filled {row.filled}, exchange filled {v.filled}")
    for cid, row in orders.items():
        if cid not in by_cid and row.state not in ("REJECTED", "EXPIRED"):
            problems.append(f"{cid} is {row.state} in the journal but unknown to the exchange")
    fills = {f.trade_id: f for f in journal.fills()}
    trades = {str(t.trade_id): t for t in emu_trades}
    if set(fills) != set(trades):
        problems.append(f"fills missing from the journal: {sorted(set(trades) - set(fills))}; "
                        f"journal fills the exchange lacks: {sorted(set(fills) - set(trades))}")
    for tid in set(fills) & set(trades):
        f, t = fills[tid], trades[tid]
        if (f.client_order_id, f.quantity, f.price) != (t.client_order_id, t.qty, t.price):
            problems.append(f"fill {tid} differs from the exchange's trade")
    opening = journal.opening_balances() or {}
    cash_delta, quantities = journal.fill_totals()
    cash = opening.get("USDT", 0.0) + cash_delta
    if abs(cash - balances.get("USDT", 0.0)) > 0.01:
        problems.append(f"cash: journal {cash}, exchange {balances.get('USDT')}")
    for symbol in cfg.market.symbols:
        base = symbol.split("/")[0]
        mine = opening.get(base, 0.0) + quantities.get(symbol, 0.0)
        if abs(mine - balances.get(base, 0.0)) > 1e-8:
            problems.append(f"{symbol}: journal {mine}, exchange {balances.get(base)}")
    recon = journal.reconciliations(limit=100_000)
    problems.extend(f"{k} reconciliation at {a} found a mismatch: {r}"
                    for a, k, ok, r in recon if not ok)
    outcomes = Counter(detail["outcome"] for cid in orders
                       for _, kind, detail in journal.order_events(cid) if kind == "RESOLVED")
    out.counts = {"exchange_orders": len(emu_orders), "journal_orders": len(orders),
                  "fills": len(fills), "unknown_resolved": sum(outcomes.values()),
                  "resolved_found": outcomes["found"], "resolved_by_trade": outcomes["trade"],
                  "resolved_not_found_resent": outcomes["not_found"],
                  "missed_fills_applied": journal.counts()["fills_found_by_query"],
                  "reconciliations": len(recon),
                  "startup_reconciliations": sum(k == "startup" for _, k, _, _ in recon)}
    journal.close()
    return out


@pytest.mark.slow
def test_kill_9_against_the_binance_emulator(tmp_path: Path) -> None:
    from adapters.binance_emulator import DEFAULT_API_KEY, DEFAULT_API_SECRET

    emulator = EmulatorThread()
    try:
        config = tmp_path / "crash.toml"
        config.write_text(EMULATOR_CONFIG.format(rest=emulator.emu.http_url,
                                                 ws=emulator.emu.ws_url))
        env = {**os.environ, "TRADINGD_API_KEY": DEFAULT_API_KEY,
               "TRADINGD_API_SECRET": DEFAULT_API_SECRET}
        started = time.monotonic()
        with (tmp_path / "stderr.log").open("wb") as stderr:
            run = kill_cycles(config, env, EMULATOR_KILLS, random.Random(SEED + 1), stderr)
        result = audit_emulator(load_config(config), emulator)
    finally:
        emulator.close()
    counts = {**run, **result.counts, "total_s": round(time.monotonic() - started, 1)}
    print("\ncrash test (emulator):", " ".join(f"{k}={v}" for k, v in counts.items()))
    assert result.problems == []
    assert counts["startup_reconciliations"] == EMULATOR_KILLS + 1
    assert counts["exchange_orders"] > EMULATOR_KILLS
