"""Each method's defining property on real Binance daily returns (10 assets, 365 bars)."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import cvxpy as cp
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

from risk.allocation import (
    AllocationConfig,
    InsufficientHistory,
    SolveError,
    fallback_equal_weight,
    solve,
)
from risk.constraints import ConstraintsConfig
from risk.estimators import EstimatorConfig, estimate
from risk.vol_target import VolTargetConfig

DAY = 86_400
SYMBOLS = ("BTC", "ETH", "BNB", "ADA", "XRP", "LTC", "LINK", "TRX", "XLM", "DOGE")


def load_returns(shared_data: Path, start: str, end: str) -> pd.DataFrame:
    d = shared_data / "binance-spot" / "1d"
    closes = {f"{s}/USDT": pd.read_csv(d / f"{s}-USDT.csv", index_col="timestamp",
                                       parse_dates=True)["close"] for s in SYMBOLS}
    return pd.concat(closes, axis=1).loc[start:end].pct_change().dropna()


@pytest.fixture(scope="module")
def rets(shared_data: Path) -> pd.DataFrame:
    # a window in which most assets have positive mean: max Sharpe is a real mix
    r = load_returns(shared_data, "2020-06-30", "2021-06-30")
    assert r.shape == (365, 10) and np.isfinite(r.to_numpy()).all()
    return r


def cfg(**kw) -> AllocationConfig:
    kw.setdefault("lookback_bars", 365)
    return AllocationConfig(**kw)


def w_of(a) -> np.ndarray:
    return np.array(list(a.weights.values()))


def stats(r: pd.DataFrame, c: AllocationConfig):
    e = estimate(r.iloc[-c.lookback_bars:], c.estimators)
    return e.mu, e.cov


def random_feasible(n: int, k: int, hi: float, seed: int = 1) -> np.ndarray:
    """Uniform points of the simplex, kept where every weight is <= hi."""
    p = np.random.default_rng(seed).dirichlet(np.ones(n), size=k * 20)
    p = p[(p <= hi).all(axis=1)]
    assert len(p) >= k
    return p[:k]


@pytest.mark.parametrize("cache", [True, False])
def test_min_variance_beats_random_and_matches_independent_qp(rets, cache):
    c = cfg(method="min_variance", max_weight=0.4, use_solver_cache=cache)
    a = solve(rets, c, DAY)
    w = w_of(a)
    assert ("solver_cache" in a.notes) is cache
    _, cov = stats(rets, c)
    var = w @ cov @ w
    rand = random_feasible(10, 1000, 0.4)
    assert var <= np.einsum("ij,jk,ik->i", rand, cov, rand).min()
    x = cp.Variable(10)
    cp.Problem(cp.Minimize(cp.quad_form(x, cp.psd_wrap(cov))),
               [cp.sum(x) == 1, x >= 0, x <= 0.4]).solve(solver=cp.CLARABEL)
    assert np.abs(w - x.value).max() < 1e-4
    assert abs(w.sum() - 1) < 1e-8 and w.min() >= -1e-12 and w.max() <= 0.4 + 1e-8


@pytest.mark.parametrize("cache", [True, False])
def test_max_sharpe_matches_scipy(rets, cache):
    c = cfg(method="max_sharpe", use_solver_cache=cache)
    a = solve(rets, c, DAY)
    mu, cov = stats(rets, c)

    def neg_sharpe(x):
        return -(x @ mu) / np.sqrt(x @ cov @ x)

    res = minimize(neg_sharpe, np.full(10, 0.1), method="SLSQP", bounds=[(0, 1)] * 10,
                   constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
                   options={"ftol": 1e-15, "maxiter": 1000})
    assert np.abs(w_of(a) - res.x).max() < 1e-4
    assert a.sharpe == pytest.approx(-res.fun * np.sqrt(365), rel=1e-6)
    assert (w_of(a) > 1e-3).sum() >= 2  # a real mix, not a corner


def test_max_utility_matches_independent_qp(rets):
    c = cfg(method="max_utility", risk_aversion=5.0)
    w = w_of(solve(rets, c, DAY))
    mu, cov = stats(rets, c)
    x = cp.Variable(10)
    cp.Problem(cp.Maximize(mu @ x - 5.0 * cp.quad_form(x, cp.psd_wrap(cov))),
               [cp.sum(x) == 1, x >= 0]).solve(solver=cp.CLARABEL)
    assert np.abs(w - x.value).max() < 1e-4


def test_max_return_fills_best_assets_up_to_cap(rets):
    c = cfg(method="max_return", max_weight=0.3)
    w = w_of(solve(rets, c, DAY))
    mu, _ = stats(rets, c)
    order = np.argsort(-mu)
    assert np.allclose(w[order[:4]], [0.3, 0.3, 0.3, 0.1], atol=1e-7)


def test_frontier_points_hit_targets(rets):
    a = solve(rets, cfg(method="target_risk", target_risk=1.5), DAY)
    assert a.volatility == pytest.approx(1.5, rel=1e-6)
    a = solve(rets, cfg(method="target_return", target_return=5.0), DAY)
    assert a.expected_return == pytest.approx(5.0, rel=1e-6)
    mv = solve(rets, cfg(method="min_variance"), DAY)
    assert a.volatility >= mv.volatility  # a frontier point, above the minimum-variance one


@pytest.mark.parametrize("rm", ["CVaR", "CDaR"])
def test_min_risk_tail_measures_beat_random(rets, rm):
    import riskfolio as rp

    measure = {"CVaR": lambda x: rp.RiskFunctions.CVaR_Hist(x, 0.05),
               "CDaR": lambda x: rp.RiskFunctions.CDaR_Abs(x, 0.05)}[rm]
    w = w_of(solve(rets, cfg(method="min_risk", risk_measure=rm), DAY))
    x = rets.to_numpy()
    best = measure(x @ w)
    assert all(best <= measure(x @ p) + 1e-10 for p in random_feasible(10, 1000, 1.0))


def test_cvar_cache_equals_riskfolio(rets):
    c = cfg(method="min_risk", risk_measure="CVaR")
    a, b = solve(rets, c, DAY), solve(rets, replace(c, use_solver_cache=False), DAY)
    assert "solver_cache" in a.notes and "solver_cache" not in b.notes
    assert np.abs(w_of(a) - w_of(b)).max() < 1e-6


def risk_contributions(w, cov):
    rc = w * (cov @ w)
    return rc / rc.sum()


def test_risk_parity_equal_contributions(rets):
    c = cfg(method="risk_parity")
    w = w_of(solve(rets, c, DAY))
    rc = risk_contributions(w, stats(rets, c)[1])
    assert np.abs(rc / 0.1 - 1).max() < 1e-4


def test_risk_budgeting_contributions_follow_budgets(rets):
    budgets = {"BTC/USDT": 3.0, "ETH/USDT": 2.0}
    c = cfg(method="risk_budgeting", risk_budgets=budgets)
    w = w_of(solve(rets, c, DAY))
    b = np.array([budgets.get(s, 1.0) for s in rets.columns])
    b /= b.sum()
    rc = risk_contributions(w, stats(rets, c)[1])
    assert np.abs(rc / b - 1).max() < 1e-4


def test_hrp_two_assets_is_inverse_variance(rets):
    two = rets[["BTC/USDT", "DOGE/USDT"]]
    c = cfg(method="hrp", hc_linkage="single")
    w = w_of(solve(two, c, DAY))
    var = np.diag(stats(two, c)[1])
    assert np.allclose(w, (1 / var) / (1 / var).sum(), atol=1e-10)


@pytest.mark.parametrize("method", ["hrp", "herc", "equal_weight", "inverse_volatility"])
def test_heuristics_fully_invested_long_only(rets, method):
    w = w_of(solve(rets, cfg(method=method), DAY))
    assert abs(w.sum() - 1) < 1e-10 and w.min() > 0


def test_inverse_volatility(rets):
    c = cfg(method="inverse_volatility")
    inv = 1 / np.sqrt(np.diag(stats(rets, c)[1]))
    assert np.allclose(w_of(solve(rets, c, DAY)), inv / inv.sum())


GROUPS = ConstraintsConfig(
    asset_min={"BTC/USDT": 0.1}, asset_max={"DOGE/USDT": 0.05},
    groups={"smart_contract": ["ETH/USDT", "BNB/USDT", "ADA/USDT"], "payments": [
        "XRP/USDT", "XLM/USDT", "LTC/USDT"]},
    group_max={"smart_contract": 0.3}, group_min={"payments": 0.2}, cash_buffer=0.1)


@pytest.mark.parametrize("method,rm", [("min_variance", "MV"), ("max_sharpe", "MV"),
                                       ("min_risk", "CVaR"), ("min_risk", "CDaR"),
                                       ("max_utility", "MV"), ("risk_parity", "MV")])
def test_constraints_hold(rets, method, rm):
    a = solve(rets, cfg(method=method, risk_measure=rm, max_weight=0.35,
                        constraints=GROUPS), DAY)
    w = a.weights
    tol = 1e-8
    assert abs(sum(w.values()) - 0.9) < tol and a.cash == pytest.approx(0.1, abs=tol)
    assert all(-tol <= v <= 0.35 + tol for v in w.values())
    assert w["BTC/USDT"] >= 0.1 - tol and w["DOGE/USDT"] <= 0.05 + tol
    assert w["ETH/USDT"] + w["BNB/USDT"] + w["ADA/USDT"] <= 0.3 + tol
    assert w["XRP/USDT"] + w["XLM/USDT"] + w["LTC/USDT"] >= 0.2 - tol


@pytest.mark.parametrize("method", ["min_variance", "max_sharpe"])
def test_bounded_shorts(shared_data, method):
    bear = load_returns(shared_data, "2021-10-01", "2022-09-30")  # hedging pays: shorts used
    cons = ConstraintsConfig(allow_short=True, max_short=0.1, max_gross_short=0.2)
    w = w_of(solve(bear, cfg(method=method, max_weight=0.5, constraints=cons), DAY))
    assert abs(w.sum() - 1) < 1e-8
    assert w.min() >= -0.1 - 1e-8 and -w[w < 0].sum() <= 0.2 + 1e-8 and w.max() <= 0.5 + 1e-8
    assert (w < -1e-4).any()  # shorting is used, so the bounds were tested


def test_turnover_cap_against_previous(rets):
    prev = {s: 0.1 for s in rets.columns}
    c = cfg(method="min_variance", constraints=ConstraintsConfig(max_turnover=0.2))
    a = solve(rets, c, DAY, previous=prev)
    assert a.turnover == pytest.approx(0.2, abs=1e-10)
    assert sum(a.weights.values()) == pytest.approx(1.0, abs=1e-10)
    free = solve(rets, cfg(method="min_variance"), DAY, previous=prev)
    assert free.turnover > 0.2  # the cap bound


def test_vol_target_scales_and_caps(rets):
    vt = VolTargetConfig(enabled=True, target_vol=0.3, floor=0.1, cap=1.0)
    base = solve(rets, cfg(method="equal_weight"), DAY)
    a = solve(rets, cfg(method="equal_weight", vol_target=vt), DAY)
    realised = float(np.std(rets.to_numpy() @ w_of(base), ddof=1) * np.sqrt(365))
    assert a.leverage == pytest.approx(0.3 / realised)
    assert sum(a.weights.values()) == pytest.approx(a.leverage)
    assert a.cash == pytest.approx(1 - a.leverage)
    hot = solve(rets, cfg(method="equal_weight", vol_target=replace(vt, target_vol=5.0)), DAY)
    assert hot.leverage == 1.0  # spot: never above 1


def test_allocation_reports_span_and_stats(rets):
    c = cfg(method="min_variance", lookback_bars=100)
    a = solve(rets, c, DAY)
    assert a.span == (str(rets.index[-100]), str(rets.index[-1]))
    mu, cov = stats(rets, c)
    w = w_of(a)
    assert a.expected_return == pytest.approx(365 * w @ mu)
    assert a.volatility == pytest.approx(np.sqrt(365 * w @ cov @ w))
    assert a.solve_seconds > 0 and a.method == "min_variance"
    assert pickle.loads(pickle.dumps(a)) == a


def test_bad_inputs_raise_solve_error(rets, monkeypatch):
    bad = rets.copy()
    bad.iloc[-1, 2] = np.nan
    with pytest.raises(SolveError, match="non-finite"):
        solve(bad, cfg(), DAY)
    bad.iloc[-1, 2] = np.inf
    with pytest.raises(SolveError, match="non-finite"):
        solve(bad, cfg(), DAY)
    with pytest.raises(SolveError, match="infeasible"):
        solve(rets, cfg(min_weight=0.2), DAY)
    with pytest.raises(SolveError, match="cannot satisfy"):
        solve(rets, cfg(method="equal_weight", constraints=ConstraintsConfig(
            asset_max={"BTC/USDT": 0.05})), DAY)
    tight = ConstraintsConfig(groups={"g": list(rets.columns[:3])}, group_min={"g": 0.9})
    with pytest.raises(SolveError):
        solve(rets, cfg(max_weight=0.25, constraints=tight), DAY)


@pytest.mark.parametrize("method", ["min_variance", "max_sharpe", "equal_weight", "hrp",
                                    "risk_parity"])
def test_caps_below_budget_hold_every_asset_at_its_cap(rets, method):
    """Two listed coins at max_weight 0.4 (2017): the caps are the only portfolio left; the
    rest is cash, said in the notes, instead of refusing to solve and holding 100% cash."""
    two = rets[["BTC/USDT", "ETH/USDT"]]
    a = solve(two, cfg(method=method, max_weight=0.4), DAY)
    assert a.weights == pytest.approx({"BTC/USDT": 0.4, "ETH/USDT": 0.4}, abs=1e-12)
    assert a.cash == pytest.approx(0.2) and any("every asset at its cap" in n for n in a.notes)
    buffered = solve(two, cfg(method=method, max_weight=0.4, constraints=ConstraintsConfig(
        cash_buffer=0.05, asset_max={"ETH/USDT": 0.3})), DAY)
    assert buffered.weights == pytest.approx({"BTC/USDT": 0.4, "ETH/USDT": 0.3}, abs=1e-12)
    # a group cap the caps themselves break is still infeasible: nothing is invented
    grouped = ConstraintsConfig(groups={"g": ["BTC/USDT", "ETH/USDT"]}, group_max={"g": 0.5})
    with pytest.raises(SolveError, match=r"infeasible|cannot satisfy"):
        solve(two, cfg(method=method, max_weight=0.4, constraints=grouped), DAY)


def test_non_psd_covariance_refused_unless_repair(rets, monkeypatch):
    import risk.allocation as alloc
    from risk.estimators import Estimates

    def broken(x, c):
        e = estimate(x, c)
        return Estimates(mu=e.mu, cov=e.cov - 2 * np.eye(10) * np.diag(e.cov).min())

    monkeypatch.setattr(alloc, "estimate", broken)
    with pytest.raises(SolveError, match="not PSD"):
        solve(rets, cfg(), DAY)
    a = solve(rets, cfg(estimators=EstimatorConfig(repair_covariance=True)), DAY)
    assert any("repaired" in n for n in a.notes)


def test_insufficient_history_is_distinct_and_pickles(rets):
    with pytest.raises(InsufficientHistory) as exc:
        solve(rets.iloc[:20], cfg(min_history_bars=30), DAY)
    assert (exc.value.needed, exc.value.got) == (30, 20)
    again = pickle.loads(pickle.dumps(exc.value))
    assert isinstance(again, SolveError) and again.needed == 30
    fb = fallback_equal_weight(list(rets.columns), cfg(constraints=ConstraintsConfig(
        cash_buffer=0.2)))
    assert all(v == pytest.approx(0.08) for v in fb.weights.values())


def test_equal_weight_fallback_keeps_the_caps():
    """on_short_history = equal_weight must not break max_weight, asset_max or group_max:
    what the caps cut stays in cash."""
    two = fallback_equal_weight(["BTC/USDT", "ETH/USDT"], cfg(max_weight=0.4))
    assert two.weights == {"BTC/USDT": pytest.approx(0.4), "ETH/USDT": pytest.approx(0.4)}
    assert two.cash == pytest.approx(0.2) and any("caps hold" in n for n in two.notes)
    four = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT"]
    grouped = fallback_equal_weight(four, cfg(max_weight=1.0, constraints=ConstraintsConfig(
        groups={"l1": ["ETH/USDT", "SOL/USDT"]}, group_max={"l1": 0.3},
        asset_max={"XRP/USDT": 0.1})))
    assert grouped.weights == pytest.approx({"BTC/USDT": 0.25, "ETH/USDT": 0.15,
                                             "SOL/USDT": 0.15, "XRP/USDT": 0.1})
    assert grouped.cash == pytest.approx(0.35)
    free = fallback_equal_weight(four, cfg(max_weight=1.0))  # nothing binds: plain 1/N
    assert free.weights == pytest.approx(dict.fromkeys(four, 0.25)) and free.cash == 0.0
    assert free.notes == ("on_short_history: equal_weight",)


def test_estimator_choices_change_the_solve(rets):
    outs = {cov: w_of(solve(rets, cfg(estimators=EstimatorConfig(cov=cov)), DAY))
            for cov in ("sample", "ledoit", "ewma")}
    assert np.abs(outs["sample"] - outs["ewma"]).max() > 1e-3
