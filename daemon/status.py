"""`tradingd status`: one snapshot of the running daemon (built inside it, sent over the control
socket as JSON) and its rendering as a table for a terminal.

The snapshot reads the live objects and changes nothing. It is also what /metrics renders, so
the table and the metrics can never disagree.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from daemon.health import Health
from daemon.metrics import EventObserver, LoopLagMonitor
from risk.trade_plan import drift

if TYPE_CHECKING:
    from daemon.app import Daemon


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _limit(limits: Any, *path: str) -> float | None:
    for name in path:
        limits = getattr(limits, name, None)
    return _num(limits)


def risk_usage(daemon: Daemon) -> dict[str, Any]:
    """Risk measures next to their limits, as fractions of NAV. VaR, drawdown and daily loss
    come from the risk gate's own `status()` when it has one (it owns the model); exposure is
    computed here from positions when the gate does not report it."""
    gate = daemon.gate
    limits = getattr(gate, "limits", None)
    gate_status: dict[str, Any] = {}
    status = getattr(gate, "status", None)
    if callable(status):
        try:
            gate_status = status() or {}
        except Exception as exc:  # a status request must not fail on a risk-model hiccup
            gate_status = {"error": f"{type(exc).__name__}: {exc}"}
    var = gate_status.get("var") if isinstance(gate_status.get("var"), dict) else {}
    p = daemon.portfolio
    nav = p.nav
    gross = sum(abs(p.position_value(s)) for s in p.positions)
    net = sum(p.position_value(s) for s in p.positions)
    values = [abs(p.position_value(s)) / nav for s in p.positions] if nav > 0 else []
    out: dict[str, Any] = {
        "var_fraction": _num(var.get("var_fraction")),
        "var_limit_fraction": _limit(limits, "var", "max_var_fraction"),
        "cvar_fraction": _num(var.get("cvar_fraction")),
        "cvar_limit_fraction": _limit(limits, "var", "max_cvar_fraction"),
        "var_unavailable": var.get("reason") if var and not var.get("available") else None,
        "gross_exposure": _num(gate_status.get("gross_exposure"))
        if "gross_exposure" in gate_status else (gross / nav if nav > 0 else 0.0),
        "max_gross_exposure": _limit(limits, "max_gross_exposure"),
        "net_exposure": _num(gate_status.get("net_exposure"))
        if "net_exposure" in gate_status else (net / nav if nav > 0 else 0.0),
        "max_net_exposure": _limit(limits, "max_net_exposure"),
        "largest_asset": max(values, default=0.0),
        "max_asset_fraction": _limit(limits, "max_asset_fraction"),
        "drawdown": _num(gate_status.get("drawdown")),
        "max_drawdown": _limit(limits, "state", "max_drawdown_fraction"),
        "daily_loss": _num(gate_status.get("daily_loss")),
        "max_daily_loss": _limit(limits, "state", "max_daily_loss_fraction"),
        "max_order_notional": _limit(limits, "max_order_notional"),
    }
    if out["var_fraction"] is not None:
        out["var"] = out["var_fraction"] * nav
    if out["var_limit_fraction"] is not None:
        out["var_limit"] = out["var_limit_fraction"] * nav
    out["gate"] = gate_status
    return out


def reconnect_counts(feed: Any, venue: Any) -> dict[str, int]:
    """Reconnections of the market-data stream and of the venue's user data stream, from the
    counters those adapters keep (`stats()`); nothing for the in-process feeds and venue."""
    out = {}
    for name, obj, key in (("feed", feed, "reconnects"),
                           ("venue", venue, "user_stream_reconnects")):
        stats = getattr(obj, "stats", None)
        try:
            value = stats().get(key, 0) if callable(stats) else None
        except Exception:  # a status request must not fail on an adapter's counters
            value = None
        if isinstance(value, int):
            out[name] = value
    return out


def snapshot(daemon: Daemon, *, observer: EventObserver, lag: LoopLagMonitor, health: Health,
             trading: dict[str, Any], reloads: dict[str, int], started: bool,
             started_at: float, feed: Any = None) -> dict[str, Any]:
    p, rb, oms = daemon.portfolio, daemon.rebalancer, daemon.oms
    symbols = daemon.symbols
    targets = dict(rb.targets or {})
    current = p.weights(symbols)
    effective = rb.effective_weights()
    drifts = drift(effective, targets) if targets else {}
    worst = max(drifts, key=lambda s: abs(drifts[s]), default=None)
    working = oms.working_quantity()
    positions = [{
        "symbol": s, "quantity": p.positions.get(s, 0.0), "price": p.prices.get(s),
        "value": p.position_value(s), "weight": current.get(s, 0.0),
        "target": targets.get(s) if targets else None,
        "drift": drifts.get(s), "working": working.get(s, 0.0)} for s in symbols]
    now = time.time()
    orders = [{
        "client_order_id": o.intent.client_order_id, "symbol": o.intent.symbol,
        "side": str(o.intent.side), "quantity": o.intent.quantity, "filled": o.filled,
        "state": str(o.state), "venue_order_id": o.venue_order_id,
        "age_s": max(now - o.intent.ts.timestamp(), 0.0)} for o in oms.working()]
    ages = observer.bar_ages()
    c = daemon.counters
    return {
        "at": datetime.now(UTC).isoformat(), "pid": os.getpid(), "mode": daemon.cfg.daemon.mode,
        "started": started, "uptime_s": round(time.monotonic() - started_at, 1),
        "health": {"ok": health.ok, "reasons": health.reasons, **health.details},
        "trading": trading, "quote": p.quote, "nav": p.nav, "cash": p.cash,
        "cash_weight": p.cash / p.nav if p.nav > 0 else 0.0, "band": rb.cfg.band,
        "max_drift": abs(drifts[worst]) if worst is not None else 0.0,
        "max_drift_symbol": worst, "solving": rb.solving, "positions": positions,
        "orders": orders,
        "orders_by_state": dict(Counter(str(o.state) for o in oms.orders.values())),
        "risk": risk_usage(daemon),
        "bars": {s: {"age_s": round(ages[s], 1), "bar_ts": observer.bar_ts.get(s)}
                 for s in symbols if s in ages},
        "rejections": list(observer.recent_rejections)[::-1],
        "rejections_by_code": dict(c.rejections_by_code),
        "venue_rejections_by_code": dict(observer.venue_rejections),
        "counters": {"bars": observer.bars, "orders": c.orders, "fills": c.fills,
                     "fees": c.fees, "traded_notional": c.traded_notional,
                     "rebalances": rb.rebalances, "solves": observer.solves,
                     "solve_failures": rb.solve_failures, "last_solve_s": observer.last_solve_s},
        "bus": {s.name: {"depth": s.depth, "delivered": s.stats.delivered,
                         "errors": s.stats.errors, "coalesced": s.stats.coalesced,
                         "overflowed": s.stats.overflowed, "high_water": s.stats.high_water}
                for s in daemon.bus.subscribers},
        "loop": {"lag_s": lag.last, "lag_max_s": lag.window_max()},
        "reconnects": reconnect_counts(feed if feed is not None else daemon.feed,
                                       daemon.venue),
        "reloads": dict(reloads),
    }


# -- rendering (client side) -----------------------------------------------------------------

def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.2%}" if signed else f"{x:.2%}"


def _money(x: float | None) -> str:
    return "-" if x is None else f"{x:,.2f}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def render(snap: dict[str, Any]) -> str:
    t, h, r = snap["trading"], snap["health"], snap["risk"]
    state = t["state"] + (f" ({t['reason']})" if t.get("reason") else "")
    lines = [
        f"tradingd  pid {snap['pid']}  mode {snap['mode']}  up {_age(snap['uptime_s'])}  "
        f"trading {state}  " + ("healthy" if h["ok"] else "UNHEALTHY: " + "; ".join(h["reasons"])),
        f"NAV {_money(snap['nav'])} {snap['quote']}   cash {_money(snap['cash'])} "
        f"({_pct(snap['cash_weight'])})   max drift {_pct(snap['max_drift'])}"
        + (f" {snap['max_drift_symbol']}" if snap["max_drift_symbol"] else "")
        + f" / band {_pct(snap['band'])}" + ("   solving" if snap["solving"] else ""),
        "",
        f"{'symbol':<12} {'quantity':>14} {'price':>12} {'value':>14} {'weight':>8} "
        f"{'target':>8} {'drift':>8}  {'last bar':<8} bar time",
    ]
    for pos in snap["positions"]:
        bar = snap["bars"].get(pos["symbol"], {})
        lines.append(
            # rounded: a sold-out position may keep float dust like 1e-13
            f"{pos['symbol']:<12} {round(pos['quantity'], 10):>14.8g} {_money(pos['price']):>12} "
            f"{_money(pos['value']):>14} {_pct(pos['weight']):>8} {_pct(pos['target']):>8} "
            f"{_pct(pos['drift'], signed=True):>8}  {_age(bar.get('age_s')) + ' ago':<8} "
            f"{bar.get('bar_ts') or '-'}")
    lines += ["", f"open orders ({len(snap['orders'])})"]
    for o in snap["orders"]:
        lines.append(f"  {o['client_order_id']:<30} {o['symbol']:<10} {o['side']:<4} "
                     f"{o['quantity']:>14.8g} filled {o['filled']:<14.8g} {o['state']:<16} "
                     f"{_age(o['age_s'])}")
    lines += ["", "risk (fraction of NAV: used / limit)"]
    for label, used, limit in (
            ("VaR", "var_fraction", "var_limit_fraction"),
            ("CVaR", "cvar_fraction", "cvar_limit_fraction"),
            ("gross exposure", "gross_exposure", "max_gross_exposure"),
            ("net exposure", "net_exposure", "max_net_exposure"),
            ("largest asset", "largest_asset", "max_asset_fraction"),
            ("drawdown", "drawdown", "max_drawdown"),
            ("daily loss", "daily_loss", "max_daily_loss")):
        u, lim = r.get(used), r.get(limit)
        if u is None and lim is None:
            continue
        share = f"  ({u / lim:.0%} of limit)" if u is not None and u > 0 and lim else ""
        lines.append(f"  {label:<16} {_pct(u):>8} / {_pct(lim):<8}{share}")
    if r.get("var_unavailable"):
        lines.append(f"  VaR unavailable: {r['var_unavailable']}")
    if r.get("max_order_notional") is not None:
        lines.append(f"  max order        {_money(r['max_order_notional'])} {snap['quote']}")
    rejections = snap["rejections"]
    lines += ["", f"recent rejections ({len(rejections)})"]
    for rej in rejections[:10]:
        lines.append(f"  {rej['ts'][:19]}  {rej['kind']:<5} {rej['symbol']:<10} "
                     f"{rej['detail'][:90]}")
    return "\n".join(lines)
