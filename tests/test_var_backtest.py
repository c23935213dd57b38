"""VaR backtests (risk/var_backtest.py): statistics against hand-computed values, edge cases, and
the model validation on real Binance daily data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from risk.var import MODELS, VarConfig
from risk.var_backtest import (
    CHI2_1DOF_95,
    CHI2_2DOF_95,
    backtest_var,
    basel_zone,
    chi2_sf,
    christoffersen_ind,
    evaluate,
    format_table,
    kupiec_pof,
    rolling_forecasts,
    transition_counts,
)

# ------------------------------------------------------------------- Kupiec


def test_kupiec_hand_computed() -> None:
    # T=250, x=5, p=1%: LR = 2 [5 ln(0.02/0.01) + 245 ln(0.98/0.99)] = 2 [3.465736 - 2.487331]
    assert kupiec_pof(250, 5, 0.01) == pytest.approx(1.956810, abs=1e-6)


def test_kupiec_zero_exceptions() -> None:
    # the alternative likelihood is 1**T * 0**0 = 1: LR = -2 T ln(1 - p) = -500 ln 0.99
    assert kupiec_pof(250, 0, 0.01) == pytest.approx(5.025168, abs=1e-6)
    # ...which rejects: a 99% VaR with no exception in 250 days is too conservative
    assert kupiec_pof(250, 0, 0.01) > CHI2_1DOF_95


def test_kupiec_all_exceptions() -> None:
    # LR = -2 T ln p = -20 ln 0.01
    assert kupiec_pof(10, 10, 0.01) == pytest.approx(92.103404, abs=1e-6)


def test_kupiec_exact_rate_is_zero_and_rejects_bad_input() -> None:
    assert kupiec_pof(500, 5, 0.01) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        kupiec_pof(0, 0, 0.01)
    with pytest.raises(ValueError):
        kupiec_pof(10, 11, 0.01)


# ------------------------------------------------------------------- Christoffersen


def test_transition_counts() -> None:
    # pairs: 00 01 11 10 00 00 01 10 00
    assert transition_counts([0, 0, 1, 1, 0, 0, 0, 1, 0, 0]) == (4, 2, 2, 1)


def test_christoffersen_equal_transition_rates_is_zero() -> None:
    # n = (4, 2, 2, 1): pi01 = 2/6 = pi11 = 1/3 = pi, so the Markov model adds nothing
    assert christoffersen_ind([0, 0, 1, 1, 0, 0, 0, 1, 0, 0]) == pytest.approx(0.0, abs=1e-12)


def test_christoffersen_clustered_hand_computed() -> None:
    # pairs 00 00 00 01 11 11 10 00 00: n00=5 n01=1 n10=1 n11=2; pi01=1/6 pi11=2/3 pi=1/3
    # ln L0 = 6 ln(2/3) + 3 ln(1/3)                               = -5.728627
    # ln L1 = 5 ln(5/6) + ln(1/6) + ln(1/3) + 2 ln(2/3)            = -4.612909
    # LR = 2 (ln L1 - ln L0)                                       =  2.231436
    hits = [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert transition_counts(hits) == (5, 1, 1, 2)
    assert christoffersen_ind(hits) == pytest.approx(2.231436, abs=1e-6)


def test_christoffersen_edge_cases_are_finite() -> None:
    assert christoffersen_ind([0] * 100) == 0.0  # no exceptions
    assert christoffersen_ind([1] * 100) == 0.0  # all exceptions
    assert christoffersen_ind([0] * 99 + [1]) == pytest.approx(0.0, abs=1e-12)  # last bar only
    assert christoffersen_ind([1]) == 0.0  # no transition at all
    # one isolated exception in the middle: n01=1, n10=1, n11=0; pi01 = 1/98 vs pi = 1/99
    v = christoffersen_ind([0] * 50 + [1] + [0] * 49)
    assert math.isfinite(v) and v >= 0.0


def test_evaluate_all_exceptions_and_cc_is_the_sum() -> None:
    out = evaluate(np.ones(10, dtype=bool), 0.99)
    assert out["exceptions"] == 10 and out["expected"] == pytest.approx(0.1)
    assert out["lr_pof"] == pytest.approx(92.103404, abs=1e-6)
    assert out["lr_ind"] == 0.0
    hits = np.array([0, 0, 0, 0, 1, 1, 1, 0, 0, 0], dtype=bool)
    out = evaluate(hits, 0.95)
    assert out["lr_cc"] == pytest.approx(kupiec_pof(10, 3, 0.05) + 2.231436, abs=1e-6)


# ------------------------------------------------------------------- chi2 and Basel


def test_chi2_critical_values() -> None:
    assert chi2_sf(CHI2_1DOF_95, 1) == pytest.approx(0.05, abs=1e-12)
    assert chi2_sf(CHI2_2DOF_95, 2) == pytest.approx(0.05, abs=1e-12)
    assert chi2_sf(0.0, 1) == 1.0 and chi2_sf(0.0, 2) == 1.0


def test_chi2_against_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for x in (0.01, 0.5, 2.0, 3.841, 7.5, 30.0):
        assert chi2_sf(x, 1) == pytest.approx(stats.chi2.sf(x, 1), rel=1e-10)
        assert chi2_sf(x, 2) == pytest.approx(stats.chi2.sf(x, 2), rel=1e-10)


@pytest.mark.parametrize(("exceptions", "zone"), [
    (0, "green"), (4, "green"), (5, "yellow"), (9, "yellow"), (10, "red"), (40, "red")])
def test_basel_zones(exceptions: int, zone: str) -> None:
    assert basel_zone(exceptions) == zone


# ------------------------------------------------------------------- rolling backtest


def test_rolling_forecasts_are_out_of_sample() -> None:
    rng = np.random.default_rng(0)
    r = rng.standard_t(4, size=(300, 3)) * 0.02
    w = np.array([0.5, 0.25, 0.25])
    cfg = VarConfig(model="historical", window_bars=250, confidence=0.95)
    var, _, loss = rolling_forecasts(r, w, cfg)
    assert var.size == 50
    for i, t in enumerate(range(250, 300)):
        # the forecast for bar t sees bars t-250 .. t-1 only
        assert var[i] == pytest.approx(-np.quantile(r[t - 250:t] @ w, 0.05), rel=1e-12)
        assert loss[i] == pytest.approx(-(r[t] @ w))


def test_backtest_zero_exceptions_end_to_end() -> None:
    # a steady +1% a day: VaR is a 1% gain, the realised "loss" equals it, never exceeds it
    r = np.full((300, 2), 0.01)
    res = backtest_var(r, np.array([0.5, 0.5]), VarConfig(model="historical", window_bars=50))
    assert res.exceptions == 0 and res.observations == 250
    assert res.lr_pof == pytest.approx(-2 * 250 * math.log(0.99))
    assert res.lr_ind == 0.0 and res.basel_zone == "green" and math.isnan(res.es_ratio)


def test_backtest_all_exceptions_end_to_end() -> None:
    # losses that grow every day: each is worse than anything in its window
    r = -0.001 * np.arange(1, 321, dtype=float)[:, None] * np.ones((1, 2))
    res = backtest_var(r, np.array([0.5, 0.5]), VarConfig(model="historical", window_bars=50))
    assert res.exceptions == res.observations == 270
    assert res.lr_pof == pytest.approx(-2 * 270 * math.log(0.01))
    assert res.lr_ind == 0.0 and res.reject_pof and res.reject_cc
    assert res.basel_exceptions == 250 and res.basel_zone == "red"


def test_backtest_rejects_multi_bar_horizon_and_bad_shapes() -> None:
    r = np.zeros((300, 2))
    with pytest.raises(ValueError, match="1-bar"):
        backtest_var(r, np.array([0.5, 0.5]), VarConfig(horizon_bars=5))
    with pytest.raises(ValueError, match="do not match"):
        backtest_var(r, np.ones(3), VarConfig())
    with pytest.raises(ValueError, match="window_bars"):
        backtest_var(r[:250], np.array([0.5, 0.5]), VarConfig())


# ------------------------------------------------------------------- real data validation

ASSETS = ("BTC", "ETH", "BNB", "XRP", "ADA", "LTC")
START, END = "2019-07-05", "2022-10-10"


def daily_returns(shared_data: Path) -> pd.DataFrame:
    closes = pd.concat(
        {a: pd.read_csv(shared_data / "binance-spot" / "1d" / f"{a}-USDT.csv",
                        index_col="timestamp", parse_dates=True)["close"] for a in ASSETS},
        axis=1).loc[START:END]
    assert not closes.isna().any().any(), "a gap in the shared daily closes"
    return closes.pct_change().iloc[1:]


def test_model_validation_on_binance_daily(shared_data: Path) -> None:
    returns = daily_returns(shared_data)
    weights = np.full(len(ASSETS), 1.0 / len(ASSETS))
    results = [backtest_var(returns, weights, VarConfig(model=m, confidence=c, window_bars=250))
               for m in MODELS for c in (0.95, 0.99)]
    print(f"\nequal-weight {', '.join(ASSETS)}; 1-day VaR, window 250 daily bars, "
          f"EWMA lambda 0.94, MC 2000 paths")
    print(format_table(results))
    n = len(returns) - 250
    for res in results:
        assert res.observations == n and res.expected == pytest.approx(n * (1 - res.confidence))
        assert (res.basel_zone is not None) == (res.confidence == 0.99)
    by_key = {(r.model, r.confidence): r for r in results}
    # the gate's defaults must not be in the red zone on the most recent 250 days
    assert by_key[("parametric_ewma", 0.99)].basel_zone != "red"
    assert by_key[("historical", 0.99)].basel_zone != "red"
