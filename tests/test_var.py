"""VaR/CVaR models (risk/var.py): closed forms, np.quantile, MC convergence, the gate rule."""

from __future__ import annotations

import dataclasses
import math
import pickle
import tomllib

import numpy as np
import pandas as pd
import pytest

from daemon.settings import load
from risk.var import (
    MODELS,
    ParametricRisk,
    ScenarioRisk,
    VarConfig,
    VarError,
    VarModel,
    ewma_covariance,
    horizon_returns,
    portfolio_var,
    var_check,
)

Z99 = 2.3263478740408408  # standard normal quantile at 0.99
ES99 = 2.665214220345808  # phi(Z99) / 0.01
Z95 = 1.6448536269514715
ES95 = 2.0627128075074306


def fat_tailed(t: int, n: int, seed: int = 1) -> np.ndarray:
    """Student-t(3) daily returns with some common factor, about crypto-sized (3-5% vol)."""
    rng = np.random.default_rng(seed)
    common = rng.standard_t(3, size=(t, 1))
    own = rng.standard_t(3, size=(t, n))
    return 0.015 * common + 0.02 * own


# ------------------------------------------------------------------- parametric (closed form)


def test_ewma_covariance_hand_computed() -> None:
    # weights lam**age renormalised: (0.25, 0.5, 1) / 1.75, zero mean
    r = np.array([[0.01], [-0.02], [0.03]])
    expected = (0.25 * 1e-4 + 0.5 * 4e-4 + 1.0 * 9e-4) / 1.75
    assert ewma_covariance(r, 0.5)[0, 0] == pytest.approx(expected, rel=1e-12)


def test_ewma_covariance_matches_riskmetrics_recursion() -> None:
    r = fat_tailed(250, 4)
    cov = np.outer(r[0], r[0])
    for row in r[1:]:
        cov = 0.94 * cov + 0.06 * np.outer(row, row)
    # the recursion gives the first row weight lam**249 instead of (1-lam) lam**249: ~1e-7 rel
    np.testing.assert_allclose(ewma_covariance(r, 0.94), cov, rtol=1e-5)


def test_parametric_var_closed_form() -> None:
    # sigma_a = 4%, sigma_b = 2%, rho = 0.5: var(a + b) = 16 + 4 + 2*0.5*4*2 = 28 (x 1e-4)
    cov = np.array([[0.0016, 0.0004], [0.0004, 0.0004]])
    p = ParametricRisk("parametric_ewma", 0.99, 1, (), covariance=cov)
    var, cvar = p.var(np.array([1.0, 1.0]))
    sd = math.sqrt(0.0028)
    assert var == pytest.approx(Z99 * sd, rel=1e-12)
    assert cvar == pytest.approx(ES99 * sd, rel=1e-12)
    # horizon of 4 bars: sqrt-time doubles both
    p4 = ParametricRisk("parametric_ewma", 0.99, 4, (), covariance=cov)
    assert p4.var(np.array([1.0, 1.0])) == pytest.approx((2 * Z99 * sd, 2 * ES99 * sd))


def test_parametric_prepare_uses_last_window_and_ewma() -> None:
    r = fat_tailed(400, 3)
    cfg = VarConfig(model="parametric_ewma", window_bars=250, ewma_lambda=0.97, confidence=0.95)
    w = np.array([0.5, 0.3, 0.2])
    var, cvar = VarModel(cfg).prepare(r).var(w)
    window = r[-250:]
    weights = 0.97 ** np.arange(249, -1, -1)
    weights /= weights.sum()
    port_var = float(sum(wt * (row @ w) ** 2 for wt, row in zip(weights, window, strict=True)))
    assert var == pytest.approx(Z95 * math.sqrt(port_var), rel=1e-10)
    assert cvar == pytest.approx(ES95 * math.sqrt(port_var), rel=1e-10)


# ------------------------------------------------------------------- historical (np.quantile)


@pytest.mark.parametrize("window", [250, 500, 1000])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.975, 0.99, 0.995])
def test_historical_var_equals_np_quantile(window: int, confidence: float) -> None:
    r = fat_tailed(window, 5, seed=window)
    exposures = np.array([1000.0, -250.0, 400.0, 0.0, 2500.0])
    cfg = VarConfig(model="historical", window_bars=window, confidence=confidence)
    var, cvar = VarModel(cfg).prepare(r).var(exposures)
    pnl = r @ exposures
    assert var == pytest.approx(-np.quantile(pnl, 1 - confidence), rel=1e-12)
    # Acerbi-Tasche by brute force: the worst m = S(1-c) outcomes, the boundary one fractionally
    losses = np.sort(-pnl)[::-1]
    m = window * (1 - confidence)
    k = math.floor(m)
    expected_es = (losses[:k].sum() + (m - k) * losses[k]) / m
    assert cvar == pytest.approx(expected_es, rel=1e-12)


def test_historical_horizon_uses_overlapping_compounded_returns() -> None:
    r = fat_tailed(260, 3)
    h = 5
    cfg = VarConfig(model="historical", window_bars=260, horizon_bars=h, confidence=0.95)
    p = VarModel(cfg).prepare(r)
    assert isinstance(p, ScenarioRisk)
    explicit = np.array([np.prod(1 + r[i:i + h], axis=0) - 1 for i in range(260 - h + 1)])
    np.testing.assert_allclose(p.scenarios, explicit, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(horizon_returns(r, 1), r)
    w = np.array([0.2, 0.3, 0.5])
    assert p.var(w)[0] == pytest.approx(-np.quantile(explicit @ w, 0.05), rel=1e-12)


# ------------------------------------------------------------------- Monte Carlo


def test_monte_carlo_converges_to_parametric() -> None:
    r = np.random.default_rng(3).multivariate_normal(
        [0, 0, 0], [[9e-4, 3e-4, 1e-4], [3e-4, 16e-4, 2e-4], [1e-4, 2e-4, 4e-4]], size=250)
    n = 100_000
    mc = VarModel(VarConfig(model="monte_carlo", mc_paths=n, seed=11)).prepare(r)
    pa = VarModel(VarConfig(model="parametric_ewma")).prepare(r)
    assert isinstance(pa, ParametricRisk)
    w = np.array([0.5, 0.2, 0.3])
    sd = pa.sigma(w)
    var_mc, cvar_mc = mc.var(w)
    var_pa, cvar_pa = pa.var(w)
    # Asymptotic standard errors of the empirical estimators from n i.i.d. normal draws:
    # quantile: sqrt(p(1-p)/n) / phi(z); ES: sqrt((Var(L|L>VaR) + c (ES-VaR)^2) / (n p)),
    # with Var(L|L>z) = 1 + z*ES - ES**2 for a standard normal. 4 s.e. = a 6e-5 false-alarm rate
    # had the seed been random; the seed is fixed, so the test is deterministic.
    p, c = 0.01, 0.99
    se_var = math.sqrt(p * (1 - p) / n) / (ES99 * p) * sd
    se_es = math.sqrt((1 + Z99 * ES99 - ES99**2 + c * (ES99 - Z99) ** 2) / (n * p)) * sd
    assert abs(var_mc - var_pa) < 4 * se_var
    assert abs(cvar_mc - cvar_pa) < 4 * se_es
    # and with the default 2000 paths the error is of the size that theory says (~3.6% at 99%)
    mc_default = VarModel(VarConfig(model="monte_carlo", seed=11)).prepare(r)
    assert abs(mc_default.var(w)[0] - var_pa) < 4 * se_var * math.sqrt(n / 2000)


def test_monte_carlo_is_seeded_and_sample_covariance_option() -> None:
    r = fat_tailed(250, 4)
    w = np.full(4, 0.25)
    a = VarModel(VarConfig(model="monte_carlo", seed=5)).prepare(r).var(w)
    b = VarModel(VarConfig(model="monte_carlo", seed=5)).prepare(r).var(w)
    c = VarModel(VarConfig(model="monte_carlo", seed=6)).prepare(r).var(w)
    assert a == b and a != c
    sample = VarModel(VarConfig(model="monte_carlo", mc_covariance="sample", mc_paths=100_000,
                                seed=5)).prepare(r)
    sd = math.sqrt(w @ np.cov(r, rowvar=False) @ w)
    assert sample.var(w)[0] == pytest.approx(Z99 * sd, rel=0.03)


def test_monte_carlo_handles_singular_covariance() -> None:
    r = fat_tailed(250, 2)
    r = np.column_stack([r, r[:, 0]])  # a duplicated asset: covariance has rank 2
    p = VarModel(VarConfig(model="monte_carlo")).prepare(r)
    assert np.isfinite(p.var(np.array([1.0, 1.0, 1.0]))).all()
    # long the asset and short its duplicate: no risk at all
    # (eigenvalue round-off leaves ~1e-9 of noise, against a single-asset VaR of ~0.1)
    assert abs(p.var(np.array([1.0, 0.0, -1.0]))[0]) < 1e-8


# ------------------------------------------------------------------- properties of every model


@pytest.mark.parametrize("model", MODELS)
def test_cvar_at_least_var(model: str) -> None:
    r = fat_tailed(250, 6)
    rng = np.random.default_rng(9)
    for confidence in (0.5, 0.8, 0.9, 0.95, 0.975, 0.99, 0.995, 0.999):
        p = VarModel(VarConfig(model=model, confidence=confidence)).prepare(r)
        for _ in range(50):
            e = rng.normal(0, 1000, 6)  # long/short books too
            var, cvar = p.var(e)
            assert cvar >= var - 1e-12 * abs(var), (confidence, var, cvar)


@pytest.mark.parametrize("model", MODELS)
def test_monotone_in_confidence(model: str) -> None:
    r = fat_tailed(250, 5)
    w = np.array([0.3, 0.1, 0.2, 0.25, 0.15])
    levels = np.linspace(0.5, 0.999, 60)
    out = np.array([VarModel(VarConfig(model=model, confidence=float(c))).prepare(r).var(w)
                    for c in levels])
    assert (np.diff(out[:, 0]) >= -1e-15).all()
    assert (np.diff(out[:, 1]) >= -1e-15).all()


@pytest.mark.parametrize("model", MODELS)
def test_homogeneous_money_and_fraction(model: str) -> None:
    r = pd.DataFrame(fat_tailed(250, 3), columns=["BTC/USDT", "ETH/USDT", "SOL/USDT"])
    p = VarModel(VarConfig(model=model)).prepare(r)
    assert p.assets == ("BTC/USDT", "ETH/USDT", "SOL/USDT") and p.n_assets == 3
    w = np.array([0.5, 0.3, 0.2])
    nav = 12_345.0
    frac = p.var(w)
    money = p.var(w * nav)
    assert money == pytest.approx((frac[0] * nav, frac[1] * nav), rel=1e-12)
    assert p.var_fraction(w * nav, nav) == pytest.approx(frac, rel=1e-12)
    assert p.var(np.zeros(3)) == (0.0, 0.0)
    assert portfolio_var(r, w, VarConfig(model=model)) == pytest.approx(frac)
    # the gate pickles nothing across processes today, but risk/ promises picklable results
    again = pickle.loads(pickle.dumps(p))
    assert again.var(w) == p.var(w)


def test_prepare_rejects_unusable_windows() -> None:
    model = VarModel(VarConfig(window_bars=250))
    with pytest.raises(VarError, match="window_bars"):
        model.prepare(fat_tailed(249, 3))
    bad = fat_tailed(250, 3)
    bad[100, 1] = np.nan
    with pytest.raises(VarError, match="non-finite"):
        model.prepare(pd.DataFrame(bad, columns=["A", "B", "C"]))
    with pytest.raises(ValueError, match="shape"):
        model.prepare(fat_tailed(250, 3)).var(np.ones(4))


# ------------------------------------------------------------------- config


def test_config_documents_every_field_and_validates() -> None:
    for f in dataclasses.fields(VarConfig):
        assert f.metadata.get("doc"), f.name
    cfg = VarConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.confidence = 0.5  # type: ignore[misc]
    for bad in ({"model": "garch"}, {"confidence": 1.0}, {"confidence": 0.4},
                {"ewma_lambda": 1.0}, {"window_bars": 5}, {"max_var_fraction": 0.0},
                {"model": "historical", "window_bars": 20, "horizon_bars": 5}):
        with pytest.raises(ValueError):
            VarConfig(**bad)  # type: ignore[arg-type]


TOML_SNIPPET = """
[risk.var]
model = "parametric_ewma"     # historical | parametric_ewma | monte_carlo
confidence = 0.99             # VaR/CVaR confidence level, in [0.5, 1)
horizon_bars = 1              # sqrt-time (parametric, MC); overlapping returns (historical)
window_bars = 250             # bars of returns each estimate sees (>= 20)
ewma_lambda = 0.94            # RiskMetrics decay, in (0, 1)
mc_paths = 2000               # Monte Carlo scenarios (>= 100)
mc_covariance = "ewma"        # ewma | sample: covariance the Monte Carlo draws from
seed = 20240601               # Monte Carlo seed, reused every bar (common random numbers)
max_var_fraction = 0.15       # reject an order that raises VaR above 15% of NAV
max_cvar_fraction = 0.20      # reject an order that raises CVaR above 20% of NAV
always_allow_reductions = true  # orders that only shrink positions toward zero always pass
"""


def test_toml_snippet_loads_through_the_settings_loader() -> None:
    data = tomllib.loads(TOML_SNIPPET)["risk"]["var"]
    assert load(VarConfig, data, "risk.var") == VarConfig()


# ------------------------------------------------------------------- the gate rule


def _book() -> tuple[ParametricRisk, np.ndarray]:
    # two 5%-vol assets, correlation 0.5
    cov = np.array([[0.0025, 0.00125], [0.00125, 0.0025]])
    return ParametricRisk("parametric_ewma", 0.99, 1, ("A", "B"), covariance=cov), \
        np.array([6000.0, 4000.0])


def test_order_raising_var_above_limit_is_rejected_with_context() -> None:
    p, before = _book()
    nav = 10_000.0
    cfg = VarConfig(max_var_fraction=0.12, max_cvar_fraction=1.0)
    assert p.var(before)[0] / nav < 0.12
    assert var_check(p, before, before + np.array([1000.0, 0.0]), nav, cfg) is None  # still below
    after = before + np.array([5000.0, 0.0])
    out = var_check(p, before, after, nav, cfg)
    assert out is not None
    code, ctx = out
    assert code == "VAR_ABOVE_LIMIT"
    assert ctx["var"] == pytest.approx(p.var(after)[0]) and ctx["var"] > ctx["limit"]
    assert ctx["limit"] == pytest.approx(1200.0)
    assert ctx["nav"] == nav and ctx["model"] == "parametric_ewma" and ctx["confidence"] == 0.99
    # the caller may pass the book's risk instead of having it recomputed
    assert var_check(p, before, after, nav, cfg, risk_before=p.var(before)) == out


def test_order_raising_cvar_above_limit_is_rejected() -> None:
    p, before = _book()
    cfg = VarConfig(max_var_fraction=10.0, max_cvar_fraction=0.12)
    out = var_check(p, before, before + np.array([5000.0, 0.0]), 10_000.0, cfg)
    assert out is not None and out[0] == "CVAR_ABOVE_LIMIT"
    assert {"cvar", "var", "limit", "nav", "model", "confidence"} <= out[1].keys()


@pytest.mark.parametrize("allow_reductions", [True, False])
@pytest.mark.parametrize("model", MODELS)
def test_risk_reducing_order_always_passes(model: str, allow_reductions: bool) -> None:
    r = fat_tailed(250, 3)
    p = VarModel(VarConfig(model=model)).prepare(r)
    nav = 10_000.0
    # a book far above a tight limit
    cfg = VarConfig(model=model, max_var_fraction=0.001, max_cvar_fraction=0.001,
                    always_allow_reductions=allow_reductions)
    before = np.array([9000.0, 8000.0, 7000.0])
    assert p.var(before)[0] > 0.001 * nav
    rng = np.random.default_rng(4)
    reducing = 0
    for _ in range(300):
        after = before + rng.normal(0, 2000, 3)  # buys, sells, even new shorts
        (var_b, cvar_b), (var_a, cvar_a) = p.var(before), p.var(after)
        result = var_check(p, before, after, nav, cfg)
        shrinks = bool(np.all(np.abs(after) <= before) and np.all(after >= 0))
        if var_a <= var_b and cvar_a <= cvar_b:
            reducing += 1
            assert result is None
        elif allow_reductions and shrinks:
            assert result is None
        else:
            assert result is not None
    assert 20 < reducing < 280  # both branches exercised


def test_closing_a_hedge_is_a_reduction_only_if_configured() -> None:
    # B is a perfect hedge of A: long both is riskless, selling B adds risk
    cov = np.array([[0.0025, -0.0025], [-0.0025, 0.0025]])
    p = ParametricRisk("parametric_ewma", 0.99, 1, (), covariance=cov)
    before, after = np.array([5000.0, 5000.0]), np.array([5000.0, 1000.0])
    assert p.var(after)[0] > p.var(before)[0]
    nav = 10_000.0
    assert var_check(p, before, after, nav, VarConfig(max_var_fraction=0.01)) is None
    strict = VarConfig(max_var_fraction=0.01, always_allow_reductions=False)
    out = var_check(p, before, after, nav, strict)
    assert out is not None and out[0] == "VAR_ABOVE_LIMIT"
    # flipping a position through zero is not a reduction
    flip = np.array([5000.0, -1000.0])
    out = var_check(p, before, flip, nav, VarConfig(max_var_fraction=0.01))
    assert out is not None and out[0] == "VAR_ABOVE_LIMIT"


def test_non_finite_exposures_fail_closed() -> None:
    p, before = _book()
    out = var_check(p, before, np.array([np.nan, 1.0]), 10_000.0, VarConfig())
    assert out is not None and out[0] == "VAR_NOT_FINITE"
    out = var_check(p, before, before * 10, math.nan, VarConfig())
    assert out is not None and out[0] == "VAR_NOT_FINITE"
    # a NaN book must not make an order above the limit look risk-reducing
    out = var_check(p, np.array([np.nan, 0.0]), before * 10, 10_000.0,
                    VarConfig(always_allow_reductions=False))
    assert out is not None and out[0] == "VAR_ABOVE_LIMIT"
