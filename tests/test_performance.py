"""Performance statistics against values worked out by hand."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from risk import performance as perf
from risk.var import VarConfig

HOUR_NS = 3600 * perf.NS_PER_S
DAY_NS = 24 * HOUR_NS


def test_a_year_is_365_days_of_bars() -> None:
    assert perf.periods_per_year(3600) == 8760
    assert perf.periods_per_year(86_400) == 365
    with pytest.raises(ValueError):
        perf.periods_per_year(0)


def test_drawdown_depth_peak_trough_and_recovery() -> None:
    e = np.array([100.0, 120.0, 90.0, 110.0, 130.0, 125.0])
    assert perf.drawdown(e) == pytest.approx([0, 0, -0.25, 110 / 120 - 1, 0, 125 / 130 - 1])
    dd = perf.max_drawdown(e)
    assert (dd.depth, dd.peak, dd.trough, dd.recovered) == (pytest.approx(0.25), 1, 2, 4)
    # never recovered, and a curve that only rises has no drawdown
    assert perf.max_drawdown(np.array([100.0, 80.0, 90.0])).recovered is None
    flat = perf.max_drawdown(np.array([1.0, 2.0, 3.0]))
    assert flat.depth == 0.0 and flat.recovered is None


def test_compound_annual_return_uses_calendar_time() -> None:
    assert perf.annualised_return(100.0, 121.0, 2.0) == pytest.approx(0.10)
    assert math.isnan(perf.annualised_return(100.0, 121.0, 0.0))
    assert perf.years_between(0, 365 * DAY_NS) == pytest.approx(1.0)


def test_volatility_sharpe_and_sortino() -> None:
    r = np.array([0.01, -0.01, 0.02, 0.0])
    ppy = 8760.0
    sd = statistics.stdev(r.tolist())
    assert perf.annualised_volatility(r, ppy) == pytest.approx(sd * math.sqrt(ppy))
    assert perf.sharpe_ratio(r, ppy) == pytest.approx(0.005 / sd * math.sqrt(ppy))
    # downside deviation over all four bars: sqrt(0.01**2 / 4) = 0.005
    assert perf.sortino_ratio(r, ppy) == pytest.approx(0.005 / 0.005 * math.sqrt(ppy))
    # the risk-free rate is taken per bar: 5% a year on daily bars
    rf_bar = 1.05 ** (1 / 365) - 1
    assert perf.sharpe_ratio(r, 365.0, 0.05) == pytest.approx(
        (0.005 - rf_bar) / sd * math.sqrt(365))
    # undefined cases are NaN, not a crash or infinity
    assert math.isnan(perf.sharpe_ratio(np.array([0.01, 0.01]), ppy))
    assert math.isnan(perf.sortino_ratio(np.array([0.01, 0.02]), ppy))
    assert math.isnan(perf.sharpe_ratio(np.array([0.01]), ppy))
    assert math.isnan(perf.calmar_ratio(0.3, 0.0))
    assert perf.calmar_ratio(0.3, 0.15) == pytest.approx(2.0)


def test_curve_stats_of_a_simple_curve() -> None:
    ts = np.arange(5) * DAY_NS
    e = np.array([100.0, 110.0, 99.0, 108.9, 119.79])
    s = perf.curve_stats(ts, e, 86_400)
    assert s.total_return == pytest.approx(0.1979)
    assert s.max_drawdown == pytest.approx(0.1)
    assert (s.max_drawdown_peak, s.max_drawdown_trough, s.max_drawdown_recovered) == (1, 2, 4)
    assert s.annualised_return == pytest.approx(1.1979 ** (365 / 4) - 1)
    assert s.calmar == pytest.approx(s.annualised_return / 0.1)


def test_equal_weight_buy_and_hold_with_a_late_listing_and_a_gap() -> None:
    nan = math.nan
    closes = np.array([[10.0, nan], [20.0, nan], [nan, 5.0], [10.0, 10.0]])
    # column 0: 50 in at 10 -> 100 at 20, held through the gap, 50 at 10
    # column 1: 50 in cash until its first bar at 5, then 100 at 10
    assert perf.buy_and_hold(closes, 100.0) == pytest.approx([100, 150, 150, 150])
    # a symbol never listed in the window stays cash
    assert perf.buy_and_hold(np.array([[1.0, nan], [2.0, nan]]), 10.0) == pytest.approx([10, 15])


def test_daily_closes_take_the_last_value_of_each_utc_day() -> None:
    ts = np.array([0, 12, 23, 24, 30, 72]) * HOUR_NS  # day 2 is missing entirely
    days, values = perf.daily_closes(ts, np.array([1.0, 2, 3, 4, 5, 6]))
    assert days.tolist() == [0, DAY_NS, 3 * DAY_NS]
    assert values.tolist() == [3.0, 5.0, 6.0]


def test_rolling_historical_var_is_out_of_sample() -> None:
    rng = np.random.default_rng(3)
    r = rng.normal(0, 0.02, 60)
    f = perf.rolling_historical_var(r, 20, 0.95)
    assert f.size == 40
    for i in (0, 17, 39):
        assert f[i] == pytest.approx(-np.quantile(r[i:i + 20], 0.05))


def test_historical_equity_var_matches_a_pandas_rolling_quantile() -> None:
    rng = np.random.default_rng(5)
    daily = rng.normal(0.001, 0.01, 80)
    daily[60] = -0.10  # a crash no 20-day window foresaw
    equity = 1000.0 * np.cumprod(np.concatenate([[1.0], 1.0 + daily]))
    ts = np.arange(equity.size) * DAY_NS + 23 * HOUR_NS  # one close per day, at 23:00
    bt = perf.historical_equity_var(ts, equity, confidence=0.95, window_days=20)
    r = pd.Series(equity).pct_change().dropna().reset_index(drop=True)
    forecast = -r.rolling(20).quantile(0.05, interpolation="linear").shift(1)
    hits = (-r > forecast)[20:]
    assert bt.observations == 60
    assert bt.exceptions == int(hits.sum()) >= 1
    assert bool(hits[60])  # the crash is one of them
    assert bt.expected == pytest.approx(3.0)
    assert bt.full_sample_var == pytest.approx(-np.quantile(r, 0.05))
    assert "equity curve" in bt.method


def test_model_var_forecast_uses_only_earlier_bars_and_the_weights_held() -> None:
    r = np.full(70, 0.01)
    r[40] = -0.05
    asset = r[:, None]
    weights = np.ones((70, 1))
    cfg = VarConfig(model="historical", confidence=0.95, window_bars=20)
    bt = perf.model_var_backtest(asset, weights, r, cfg)
    # forecasts for bars 20..69; before bar 40 the window holds only gains (VaR < 0) and the
    # realised "loss" equals it, never strictly above; bar 40's crash is the one exception
    assert bt.observations == 50
    assert bt.exceptions == 1
    # holding nothing forecasts no loss, so every losing bar of the book is an exception
    flat = perf.model_var_backtest(asset, np.zeros((70, 1)), -np.abs(r), cfg)
    assert flat.exceptions == 50
