"""The replay report: `metrics.json`, PNG charts and one self-contained `report.html`.

The HTML inlines its CSS and embeds every chart as a base64 PNG, so the single file opens
offline, attached to an email or on another machine; the PNGs are also written beside it.
Charts are drawn with matplotlib's Agg renderer on `Figure` objects (no pyplot), so nothing
global changes and no display is needed.

Long runs are thinned for drawing only (about `MAX_POINTS` points per line): equity keeps the
last value of each bucket, drawdown its deepest point and drift its largest, so a spike or a
trough never disappears from a chart. Metrics are always computed on every bar.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from daemon.replay import ReplayResult, build_metrics, dumps_metrics
from risk import performance as perf

MAX_POINTS = 3000
CHARTS = ("equity", "drawdown", "weights", "drift", "turnover")
_PNG_META = {"Software": None}  # no version stamp: the same replay draws the same bytes


def write_report(result: ReplayResult, out_dir: Path) -> dict[str, Path]:
    """Write metrics.json, the charts and report.html into `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = build_metrics(result)
    paths: dict[str, Path] = {"metrics": out_dir / "metrics.json"}
    paths["metrics"].write_text(dumps_metrics(metrics), encoding="utf-8")
    pngs = render_charts(result, metrics)
    for name, data in pngs.items():
        paths[name] = out_dir / f"{name}.png"
        paths[name].write_bytes(data)
    paths["html"] = out_dir / "report.html"
    paths["html"].write_text(render_html(result, metrics, pngs), encoding="utf-8")
    return paths


# --------------------------------------------------------------------------- charts


def _buckets(n: int) -> np.ndarray:
    step = max(1, math.ceil(n / MAX_POINTS))
    return np.arange(0, n, step)


def _last(a: np.ndarray, starts: np.ndarray) -> np.ndarray:
    ends = np.append(starts[1:], len(a)) - 1
    return a[ends]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata=_PNG_META)
    return buf.getvalue()


def _figure(title: str, height: float = 3.6) -> tuple[Figure, Any]:
    fig = Figure(figsize=(10.5, height), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize=11)
    ax.grid(True, alpha=0.3)
    return fig, ax


def render_charts(result: ReplayResult, metrics: dict[str, Any]) -> dict[str, bytes]:
    rec = result.recording
    starts = _buckets(len(rec))
    when = _last(rec.ts_ns.astype("datetime64[ns]"), starts)
    bench = perf.buy_and_hold(rec.closes, float(rec.nav[0]))
    out: dict[str, bytes] = {}

    fig, ax = _figure("Equity: strategy vs equal-weight buy and hold (log scale)")
    ax.plot(when, _last(rec.nav, starts), label="strategy", color="#1f5fa8", lw=1.2)
    ax.plot(when, _last(bench, starts), label="equal-weight buy and hold", color="#999999",
            lw=1.0)
    ax.set_yscale("log")
    ax.set_ylabel(result.config.market.quote)
    _mark_states(ax, rec)
    ax.legend(loc="upper left")
    out["equity"] = _png(fig)

    fig, ax = _figure("Drawdown from the running peak")
    dd = np.minimum.reduceat(perf.drawdown(rec.nav), starts) * 100
    ax.fill_between(when, dd, 0, alpha=0.35, color="#b03030", label="strategy", step="post")
    ax.plot(when, np.minimum.reduceat(perf.drawdown(bench), starts) * 100, color="#666666",
            lw=0.8, label="equal-weight buy and hold", drawstyle="steps-post")
    ax.set_ylabel("% below peak")
    ax.legend(loc="lower left")
    out["drawdown"] = _png(fig)

    fig, ax = _figure("Weights at each close (stacked; the rest is cash)", 4.2)
    w = np.clip(_last(rec.weights, starts), 0.0, None)
    cash = np.clip(1.0 - w.sum(axis=1), 0.0, None)
    ax.stackplot(when, *(w.T * 100), cash * 100, labels=[*rec.symbols, "cash"],
                 colors=[*_palette(len(rec.symbols)), "#dddddd"])
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of NAV")
    _mark_states(ax, rec)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    out["weights"] = _png(fig)

    fig, ax = _figure("Drift: largest |weight - target| at each close, against the band")
    drift = np.abs(rec.drift())
    with np.errstate(invalid="ignore"):
        worst = np.where(np.isnan(drift).all(axis=1), np.nan, np.nanmax(
            np.where(np.isnan(drift), -np.inf, drift), axis=1))
    ax.plot(when, np.fmax.reduceat(worst, starts) * 100, color="#6a3d9a", lw=0.8,
            label="max |drift|")
    band = result.config.rebalance.band * 100
    ax.axhline(band, color="#e31a1c", ls="--", lw=1.0, label=f"band {band:g}%")
    sent = np.flatnonzero(rec.decisions > 0)
    if sent.size:
        ax.plot(rec.ts_ns[sent].astype("datetime64[ns]"), np.full(sent.size, band),
                "|", color="#33a02c", ms=8, label=f"closes after which orders were sent "
                                                  f"({sent.size:,})")
    filled = np.flatnonzero(rec.traded > 0)
    if filled.size:
        ax.plot(rec.ts_ns[filled].astype("datetime64[ns]"), np.zeros(filled.size), "|",
                color="#1f78b4", ms=8, label=f"bars with fills ({filled.size:,})")
    ax.set_ylabel("% of NAV")
    ax.legend(loc="upper right")
    out["drift"] = _png(fig)

    out["turnover"] = _turnover_chart(result)
    return out


def _mark_states(ax: Any, rec: Any) -> None:
    """A vertical line where the risk gate's trading state changed, named once per state."""
    named: set[str] = set()
    colors = {"ACTIVE": "#33a02c", "REDUCING": "#ff7f00", "HALTED": "#e31a1c"}
    for row, state, _previous, _reason, _by in rec.state_changes:
        ax.axvline(rec.ts_ns[row].astype("datetime64[ns]"), color=colors.get(state, "#000000"),
                   ls=":", lw=1.2, label=None if state in named else f"trading state {state}")
        named.add(state)


def _turnover_chart(result: ReplayResult) -> bytes:
    rec = result.recording
    span_days = (rec.ts_ns[-1] - rec.ts_ns[0]) / perf.NS_PER_S / 86_400 if len(rec) else 0
    period, label = (30, "30 days") if span_days > 720 else \
        (7, "week") if span_days > 120 else (1, "day")
    bucket = (rec.ts_ns - rec.ts_ns[0]) // (period * 86_400 * perf.NS_PER_S)
    edges = np.flatnonzero(np.diff(bucket, prepend=-1))
    traded = np.add.reduceat(rec.traded, edges)
    fees = np.cumsum(rec.fees)
    fig, ax = _figure(f"Turnover per {label} and cumulative fees")
    when = rec.ts_ns[edges].astype("datetime64[ns]")
    width = np.timedelta64(int(period * 86_400 * 0.8), "s")
    ax.bar(when, traded, width=width, align="edge", color="#a6cee3",
           label=f"traded notional per {label}")
    ax.set_ylabel(f"traded, {result.config.market.quote}")
    ax2 = ax.twinx()
    starts = _buckets(len(rec))
    ax2.plot(_last(rec.ts_ns.astype("datetime64[ns]"), starts), _last(fees, starts),
             color="#e6550d", lw=1.2, label="cumulative fees")
    ax2.set_ylabel(f"fees, {result.config.market.quote}")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left")
    return _png(fig)


def _palette(n: int) -> list[str]:
    base = ["#1f78b4", "#33a02c", "#ff7f00", "#6a3d9a", "#e31a1c", "#b15928", "#a6cee3",
            "#b2df8a", "#fdbf6f", "#cab2d6", "#fb9a99", "#ffff99"]
    return [base[i % len(base)] for i in range(n)]


# --------------------------------------------------------------------------- html


def _pct(x: Any, digits: int = 2) -> str:
    return "—" if not _finite(x) else f"{x * 100:,.{digits}f}%"


def _num(x: Any, digits: int = 2) -> str:
    return "—" if not _finite(x) else f"{x:,.{digits}f}"


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


_CSS = """
body{font:14px/1.45 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;
border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.6em 0}th,td{padding:.25em .8em;text-align:right;
border-bottom:1px solid #eee}th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:.8em}.card{border:1px solid #ddd;border-radius:6px;
padding:.5em 1em;min-width:9em}.card b{display:block;font-size:1.35em}
.card span{color:#666;font-size:.85em}
img{max-width:100%;display:block;margin:.4em 0 1em}
.note{color:#555;font-size:.9em}code{background:#f3f3f3;padding:0 .25em}
"""


def render_html(result: ReplayResult, metrics: dict[str, Any], pngs: dict[str, bytes]) -> str:
    m, s, b, v = metrics["window"], metrics["strategy"], metrics["benchmark"], metrics["var"]
    esc = html.escape
    quote = esc(result.config.market.quote)
    cards = [
        (_pct(s["total_return"]), "total return"),
        (_pct(s["annualised_return"]), "annualised return"),
        (_num(s["sharpe"]), "Sharpe"),
        (_pct(s["max_drawdown"]), "max drawdown"),
        (f"{s['rebalances']:,}", "rebalances"),
        (f"{_num(s['fees'])} {quote}", "fees"),
    ]
    perf_rows = [
        ["Start → end NAV", f"{_num(s['start_value'])} → {_num(s['end_value'])}",
         f"{_num(b['start_value'])} → {_num(b['end_value'])}"],
        ["Total return", _pct(s["total_return"]), _pct(b["total_return"])],
        ["Annualised return (CAGR)", _pct(s["annualised_return"]),
         _pct(b["annualised_return"])],
        ["Annualised volatility", _pct(s["annualised_volatility"]),
         _pct(b["annualised_volatility"])],
        ["Sharpe", _num(s["sharpe"]), _num(b["sharpe"])],
        ["Sortino", _num(s["sortino"]), _num(b["sortino"])],
        ["Max drawdown", _pct(s["max_drawdown"]), _pct(b["max_drawdown"])],
        ["… peak → trough", f"{_d(s['max_drawdown_peak_at'])} → "
                            f"{_d(s['max_drawdown_trough_at'])}",
         f"{_d(b['max_drawdown_peak_at'])} → {_d(b['max_drawdown_trough_at'])}"],
        ["… recovered", _d(s["max_drawdown_recovered_at"]) or "not in the window",
         _d(b["max_drawdown_recovered_at"]) or "not in the window"],
        ["Calmar", _num(s["calmar"]), _num(b["calmar"])],
    ]
    codes = ", ".join(f"{esc(k)} {n}" for k, n in s["risk_rejections_by_code"].items())
    changes = s["trading_state_changes"]
    trade_rows = [
        ["Trading state (risk gate's kill switch)",
         "ACTIVE throughout" if not changes else "<br>".join(
             f"{_d(c['at'])}: {esc(c['previous'])} → <b>{esc(c['state'])}</b> "
             f"({esc(c['reason'])}, by {esc(c['by'])})" for c in changes)],
        ["Rebalances (decisions that sent orders)", f"{s['rebalances']:,}"],
        ["Target updates (solves installed)", f"{s['target_updates']:,}"],
        ["Failed solves (last targets kept)", f"{s['solve_failures']:,}"],
        ["Orders / fills", f"{s['orders']:,} / {s['fills']:,}"],
        ["Traded notional", f"{_num(s['traded_notional'])} {quote}"],
        ["Turnover (one-way, over the run / per year)",
         f"{_num(s['turnover'])}× / {_num(s['turnover_per_year'])}×"],
        ["Fees (total / as share of mean NAV)",
         f"{_num(s['fees'])} {quote} / {_pct(s['fees_to_mean_nav'])}"],
        ["Risk rejections", f"{s['risk_rejections']:,}" + (f" ({codes})" if codes else "")],
        ["Venue rejections", f"{s['venue_rejections']:,}"],
        ["Handler errors", f"{s['handler_errors']:,}"],
        ["Largest |drift| seen at a close", _pct(s["max_abs_drift"])],
    ]
    var_rows = [
        ["Method", esc(v["method"])],
        ["Forecasts / exceptions / expected",
         f"{v['observations']:,} / {v['exceptions']:,} / {_num(v['expected'], 1)}"],
        ["Kupiec LR (reject > 3.84)", _num(v["lr_pof"])],
        ["Conditional coverage LR (reject > 5.99)", _num(v["lr_cc"])],
        [f"{_pct(v['confidence'], 0)} VaR of the whole sample ({esc(v['horizon'])})",
         _pct(v["full_sample_var"])],
    ]
    weight_rows = [[esc(k), _pct(s["final_weights"].get(k)), _pct(s["final_targets"].get(k))]
                   for k in m["symbols"]]
    data_rows = []
    for sym, d in metrics["data"].items():
        dropped = ", ".join(f"{esc(k)} {n}" for k, n in d["dropped_rows"].items()) or "none"
        data_rows.append([esc(sym), f"{d['bars']:,}", _d(d["first"]) or "—",
                          _d(d["last"]) or "—", "yes" if d["late_start"] else "",
                          f"{d['gaps']:,}", f"{d['missing_bars']:,}", dropped])
    run_rows = [
        ["Replay wall time", f"{result.elapsed_s:,.2f} s (data loading {result.load_s:,.2f} s)"],
        ["Speed", f"{result.bars_per_second:,.0f} bars/s"],
        ["Window requested", f"{esc(str(m['start'] or 'first bar'))} → "
                             f"{esc(str(m['end'] or 'last bar'))} (end exclusive)"],
        *([esc(k), esc(str(val))] for k, val in metrics["config"].items()),
    ]
    img = {k: base64.b64encode(v).decode("ascii") for k, v in pngs.items()}
    captions = {
        "equity": "NAV at every close. The benchmark puts 1/N of the starting NAV into each "
                  "symbol at its first bar (cash until a late listing) and never trades.",
        "drawdown": "Distance below the running peak of each curve.",
        "weights": "Holdings at each close as a share of NAV. Dotted lines: the risk gate's "
                   "trading state changed (REDUCING lets only risk-reducing orders through, "
                   "HALTED none).",
        "drift": "The largest distance of any asset from its target weight at each close. "
                 "Marks on the band line: closes after which the rebalancer sent orders "
                 "(the risk gate may have refused them); marks at zero: bars with fills.",
        "turnover": "Notional traded per period (bars) and the fees paid so far (line).",
    }
    charts = "".join(
        f'<h3>{esc(name.capitalize())}</h3><p class="note">{esc(captions[name])}</p>'
        f'<img alt="{name} chart" src="data:image/png;base64,{img[name]}">'
        for name in CHARTS if name in img)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>tradingd replay {esc(m['first_bar'][:10])} – {esc(m['last_bar'][:10])}</title>
<style>{_CSS}</style></head><body>
<h1>tradingd replay</h1>
<p class="sub">{esc(", ".join(m['symbols']))} · {esc(str(result.config.market.interval))} bars ·
{esc(m['first_bar'])} → {esc(m['last_bar'])} ({_num(m['years'])} years) ·
data <code>{esc(str(result.request.data_dir))}</code></p>
<div class="cards">{"".join(f'<div class="card"><b>{a}</b><span>{c}</span></div>'
                           for a, c in cards)}</div>
<h2>Performance</h2>
{_table(["", "strategy", esc(b["name"])], perf_rows)}
<p class="note">365-day years, {m['periods_per_year']:,.0f} bars a year. Returns are simple
per-bar returns of NAV at each close; CAGR uses calendar time; Sharpe and Sortino are per-bar
ratios × √(bars a year), risk-free rate {_pct(result.config.allocation.risk_free_rate)};
Sortino's downside deviation counts gains as zero. Calmar = CAGR / max drawdown.</p>
<h2>Trading</h2>
{_table(["", ""], trade_rows)}
<p class="note">Turnover is one-way: traded notional / 2 / mean NAV, so swapping the whole book
once counts 1×.</p>
<h2>Value at Risk backtest</h2>
{_table(["", ""], var_rows)}
<p class="note">An exception is a realised loss strictly greater than the VaR forecast made
before it, from earlier data only.</p>
<h2>Charts</h2>
{charts}
<h2>Final weights</h2>
{_table(["symbol", "weight", "target"], weight_rows)}
<h2>Data replayed</h2>
{_table(["symbol", "bars", "first", "last", "late start", "gaps", "missing bars",
         "dropped rows"], data_rows)}
<p class="note">{m['bars']:,} bars over {m['timestamps']:,} timestamps. A gap is a run of
missing bars inside a symbol's span; at such a timestamp the symbol simply has no bar, its last
close stays the mark, and the other symbols trade on. A late start is a symbol whose first bar
comes after the window's first timestamp: it is not held or solved for until it has history.
</p>
<h2>Run</h2>
{_table(["", ""], run_rows)}
<p class="note">The same data, config and seed give the same <code>metrics.json</code>, byte for
byte; wall times appear only here.</p>
</body></html>
"""


def _d(text: str | None) -> str:
    """ISO timestamp to a short date (the hour only when it is not midnight)."""
    if not text:
        return ""
    return text[:10] if text[11:16] == "00:00" else f"{text[:10]} {text[11:16]}"
