"""Performance statistics of an equity curve: pure numpy, no I/O.

Conventions, chosen for a market that trades 24/7:

* A year is 365 days. Per-bar statistics are annualised with `periods_per_year(interval_s)` bars
  (8,760 for hourly bars); the compound annual return uses the elapsed calendar time instead, so
  a few missing bars (exchange maintenance) do not distort it.
* Returns are simple per-bar returns of the equity curve, E[t] / E[t-1] - 1.
* Volatility and Sharpe use the sample standard deviation (ddof = 1); Sharpe and Sortino subtract
  the risk-free rate converted to one bar, (1 + rf) ** (1 / periods_per_year) - 1.
* Sortino's downside deviation is sqrt(mean(min(r - rf_bar, 0) ** 2)) over every bar, gains
  counted as zero (Sortino and Price, 1994), not the standard deviation of the losses alone.
* Drawdown is E / running max(E) - 1 (<= 0); `max_drawdown` is its depth as a positive fraction.
  Calmar is the compound annual return over the maximum drawdown.
* Turnover is one-way: traded notional / 2 / mean NAV, so selling the whole book and buying
  another one of the same size counts 1.0. Annualised by the elapsed years.
* A statistic that is undefined on the data (one bar, zero volatility, no drawdown) is NaN;
  serialisers turn NaN into null.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from risk.var import VarConfig, VarModel
from risk.var_backtest import evaluate

SECONDS_PER_YEAR = 365.0 * 86_400.0
NS_PER_S = 1_000_000_000


def periods_per_year(interval_s: float) -> float:
    """Bars in a 365-day year. (Same rule as risk.allocation.periods_per_year, kept here so the
    report does not import the optimiser stack.)"""
    if interval_s <= 0:
        raise ValueError(f"interval_s = {interval_s}: must be > 0")
    return SECONDS_PER_YEAR / interval_s


def simple_returns(equity: np.ndarray) -> np.ndarray:
    e = np.asarray(equity, dtype=float)
    if e.size < 2:
        return np.empty(0)
    return e[1:] / e[:-1] - 1.0


def drawdown(equity: np.ndarray) -> np.ndarray:
    """E / running peak - 1 per point: 0 at a new high, negative below it."""
    e = np.asarray(equity, dtype=float)
    if e.size == 0:
        return np.empty(0)
    return e / np.maximum.accumulate(e) - 1.0


@dataclass(frozen=True)
class Drawdown:
    depth: float  # positive fraction of the peak, 0.0 if the curve never fell
    peak: int  # index of the peak before the deepest trough
    trough: int
    recovered: int | None  # first index back at or above the peak, None if never


def max_drawdown(equity: np.ndarray) -> Drawdown:
    e = np.asarray(equity, dtype=float)
    if e.size == 0:
        return Drawdown(math.nan, 0, 0, None)
    dd = drawdown(e)
    trough = int(np.argmin(dd))
    peak = int(np.argmax(e[: trough + 1]))
    after = np.flatnonzero(e[trough:] >= e[peak])
    recovered = trough + int(after[0]) if after.size and trough > peak else None
    return Drawdown(float(-dd[trough]), peak, trough, recovered)


def years_between(first_ns: int, last_ns: int) -> float:
    return (last_ns - first_ns) / NS_PER_S / SECONDS_PER_YEAR


def annualised_return(start: float, end: float, years: float) -> float:
    """Compound annual growth rate from `start` to `end` over `years`."""
    if years <= 0 or start <= 0 or end <= 0:
        return math.nan
    return (end / start) ** (1.0 / years) - 1.0


def _rf_per_bar(rf_annual: float, ppy: float) -> float:
    return (1.0 + rf_annual) ** (1.0 / ppy) - 1.0


def annualised_volatility(returns: np.ndarray, ppy: float) -> float:
    r = np.asarray(returns, dtype=float)
    if r.size < 2:
        return math.nan
    return float(np.std(r, ddof=1) * math.sqrt(ppy))


def sharpe_ratio(returns: np.ndarray, ppy: float, rf_annual: float = 0.0) -> float:
    r = np.asarray(returns, dtype=float)
    if r.size < 2:
        return math.nan
    sd = float(np.std(r, ddof=1))
    if sd == 0.0:
        return math.nan
    return float((r.mean() - _rf_per_bar(rf_annual, ppy)) / sd * math.sqrt(ppy))


def sortino_ratio(returns: np.ndarray, ppy: float, rf_annual: float = 0.0) -> float:
    r = np.asarray(returns, dtype=float)
    if r.size < 2:
        return math.nan
    excess = r - _rf_per_bar(rf_annual, ppy)
    downside = math.sqrt(float(np.mean(np.minimum(excess, 0.0) ** 2)))
    if downside == 0.0:
        return math.nan
    return float(excess.mean() / downside * math.sqrt(ppy))


def calmar_ratio(cagr: float, max_dd: float) -> float:
    if not max_dd or math.isnan(max_dd) or math.isnan(cagr):
        return math.nan
    return cagr / max_dd


def buy_and_hold(closes: np.ndarray, initial: float) -> np.ndarray:
    """Equity of an equal-weight buy-and-hold: `initial` / N put into each of the N columns at
    its first close (held as cash until then, for symbols listed later), never rebalanced, no
    fees. `closes` is bars x symbols with NaN where a symbol has no bar; a gap after the first
    bar keeps the last close."""
    c = np.asarray(closes, dtype=float)
    if c.ndim != 2 or c.shape[1] == 0:
        raise ValueError(f"closes must be 2-D with at least one column, got {c.shape}")
    t, n = c.shape
    filled = forward_fill(c)
    alloc = initial / n
    out = np.zeros(t)
    for j in range(n):
        seen = np.flatnonzero(~np.isnan(filled[:, j]))
        if not seen.size:
            out += alloc  # never listed in the window: the slice stays cash
            continue
        first = int(seen[0])
        out[:first] += alloc
        out[first:] += alloc * filled[first:, j] / filled[first, j]
    return out


def forward_fill(a: np.ndarray) -> np.ndarray:
    """Forward-fill NaN down each column of a 2-D array (leading NaN stay)."""
    idx = np.where(np.isnan(a), 0, np.arange(a.shape[0])[:, None])
    np.maximum.accumulate(idx, axis=0, out=idx)
    out = a[idx, np.arange(a.shape[1])]
    return out


def daily_closes(ts_ns: np.ndarray, equity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The last equity value of each UTC day that has one, with that day's start (ns)."""
    ts = np.asarray(ts_ns, dtype=np.int64)
    day = ts // (86_400 * NS_PER_S)
    if day.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0)
    last = np.flatnonzero(np.diff(day, append=day[-1] + 1) != 0)
    return day[last] * 86_400 * NS_PER_S, np.asarray(equity, dtype=float)[last]


def rolling_historical_var(returns: np.ndarray, window: int, confidence: float) -> np.ndarray:
    """Out-of-sample historical VaR forecasts: for each t >= window, -quantile(returns[t-window:t],
    1 - confidence) with linear interpolation (np.quantile's default), a positive loss fraction.
    Entry i is the forecast for returns[window + i]."""
    r = np.asarray(returns, dtype=float)
    n = r.size - window
    if window < 2 or n < 1:
        return np.empty(0)
    windows = np.lib.stride_tricks.sliding_window_view(r[:-1], window)
    return -np.quantile(windows, 1.0 - confidence, axis=1)


@dataclass(frozen=True)
class VarBacktest:
    method: str  # what was forecast, in words: the report prints it
    confidence: float
    window: int
    horizon: str
    observations: int
    exceptions: int
    expected: float
    lr_pof: float  # Kupiec proportion-of-failures likelihood ratio, chi2(1): reject > 3.84
    lr_cc: float  # Christoffersen conditional coverage, chi2(2): reject > 5.99
    full_sample_var: float  # VaR of the whole sample of returns (not a forecast)


def historical_equity_var(ts_ns: np.ndarray, equity: np.ndarray, confidence: float = 0.99,
                          window_days: int = 250) -> VarBacktest:
    """1-day historical VaR of the realised equity curve, backtested out of sample: each day's
    loss is compared with the VaR of the previous `window_days` daily returns. An exception is
    a loss strictly greater than the forecast."""
    _, daily = daily_closes(ts_ns, equity)
    r = simple_returns(daily)
    forecasts = rolling_historical_var(r, window_days, confidence)
    realised = -r[window_days:]
    hits = realised > forecasts
    stats = evaluate(hits, confidence) if hits.size else {
        "observations": 0, "exceptions": 0, "expected": 0.0, "lr_pof": math.nan,
        "lr_cc": math.nan}
    full = float(-np.quantile(r, 1.0 - confidence)) if r.size else math.nan
    return VarBacktest(
        method=f"historical {confidence:.0%} 1-day VaR of the realised equity curve "
               f"(rolling {window_days} days)",
        confidence=confidence, window=window_days, horizon="1 day",
        observations=int(stats["observations"]), exceptions=int(stats["exceptions"]),
        expected=float(stats["expected"]), lr_pof=float(stats["lr_pof"]),
        lr_cc=float(stats["lr_cc"]), full_sample_var=full)


def model_var_backtest(asset_returns: np.ndarray, weights: np.ndarray,
                       portfolio_returns: np.ndarray, var_cfg: VarConfig,
                       every: int = 1) -> VarBacktest:
    """The daemon's own VaR model backtested on what the portfolio held: the forecast for bar t
    uses the asset returns of the `window_bars` bars before t and the weights at the close of
    t - 1 (the holdings over bar t, except on the few bars that open with fills); the realised
    loss is the portfolio's return on bar t, fees and slippage of those fills included.
    `every` > 1 forecasts only every `every`-th bar, for long hourly runs where a model fit per
    bar costs more than the report is worth.

    `asset_returns` and `weights` are bars x assets (row t = return over bar t, weights at
    the close of t); NaN returns (before a listing, in a gap) count as 0, the asset's weight
    is 0 there anyway."""
    window, confidence = var_cfg.window_bars, var_cfg.confidence
    model = VarModel(var_cfg)
    r = np.nan_to_num(np.asarray(asset_returns, dtype=float), nan=0.0)
    w = np.asarray(weights, dtype=float)
    pr = np.asarray(portfolio_returns, dtype=float)
    ts = list(range(max(window, 1), r.shape[0], max(every, 1)))
    forecasts = np.array([model.prepare(r[t - window:t]).var(w[t - 1])[0] for t in ts])
    realised = -pr[ts] if ts else np.empty(0)
    hits = realised > forecasts
    stats = evaluate(hits, confidence) if hits.size else {
        "observations": 0, "exceptions": 0, "expected": 0.0, "lr_pof": math.nan,
        "lr_cc": math.nan}
    return VarBacktest(
        method=f"daemon VaR model {var_cfg.model} at {confidence:.0%}, "
               f"{var_cfg.horizon_bars}-bar horizon, window {window} bars"
               + (f", every {every} bars" if every > 1 else ""),
        confidence=confidence, window=window, horizon="1 bar",
        observations=int(stats["observations"]), exceptions=int(stats["exceptions"]),
        expected=float(stats["expected"]), lr_pof=float(stats["lr_pof"]),
        lr_cc=float(stats["lr_cc"]),
        full_sample_var=float(-np.quantile(pr, 1.0 - confidence)) if pr.size else math.nan)


@dataclass(frozen=True)
class CurveStats:
    start_value: float
    end_value: float
    total_return: float
    annualised_return: float
    annualised_volatility: float
    sharpe: float
    sortino: float
    max_drawdown: float
    max_drawdown_peak: int
    max_drawdown_trough: int
    max_drawdown_recovered: int | None
    calmar: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def curve_stats(ts_ns: np.ndarray, equity: np.ndarray, interval_s: float,
                rf_annual: float = 0.0) -> CurveStats:
    """Every statistic of one equity curve sampled at bar closes `ts_ns`."""
    e = np.asarray(equity, dtype=float)
    if e.size == 0:
        raise ValueError("empty equity curve")
    ppy = periods_per_year(interval_s)
    r = simple_returns(e)
    years = years_between(int(ts_ns[0]), int(ts_ns[-1])) if e.size > 1 else 0.0
    cagr = annualised_return(float(e[0]), float(e[-1]), years)
    dd = max_drawdown(e)
    return CurveStats(
        start_value=float(e[0]), end_value=float(e[-1]),
        total_return=float(e[-1] / e[0] - 1.0) if e[0] else math.nan,
        annualised_return=cagr, annualised_volatility=annualised_volatility(r, ppy),
        sharpe=sharpe_ratio(r, ppy, rf_annual), sortino=sortino_ratio(r, ppy, rf_annual),
        max_drawdown=dd.depth, max_drawdown_peak=dd.peak, max_drawdown_trough=dd.trough,
        max_drawdown_recovered=dd.recovered, calmar=calmar_ratio(cagr, dd.depth))


def one_way_turnover(traded_notional: float, mean_nav: float) -> float:
    if mean_nav <= 0:
        return math.nan
    return traded_notional / 2.0 / mean_nav
