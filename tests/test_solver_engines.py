"""The solver cache's fast engines (warm-started active-set QP, HiGHS LP) on real daily returns:
the same weights as riskfolio-lib, optimal by an independent certificate, exact after a stale
warm start, and never an answer they cannot vouch for (infeasible sets, cycling, ties).

riskfolio-lib is the reference here at tighter Clarabel tolerances than the engine runs it with
(`tight_riskfolio`): at the engine's own (risk.methods.CLARABEL_TIGHT) its MV Sharpe weights sit
up to ~4e-6 off the optimum on these windows, with a lower Sharpe ratio than the cache's, whose
weights the KKT certificate below confirms to ~1e-15.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linprog, lsq_linear

from risk import active_set, solver_cache
from risk.active_set import QP, WorkingSet
from risk.allocation import AllocationConfig, SolveError, solve
from risk.constraints import ConstraintsConfig, build
from risk.estimators import EstimatorConfig, estimate

DAY = 86_400
# every daily file with history from 2020-10-16 on (APE and FLOW list later)
SYMBOLS = ("AAVE", "ADA", "ALGO", "ATOM", "AVAX", "BCH", "BNB", "BTC", "CHZ", "DOGE", "DOT",
           "EGLD", "EOS", "ETC", "ETH", "FTM", "FTT", "LINK", "LTC", "MANA", "MATIC", "NEAR",
           "SAND", "SOL", "THETA", "TRX", "VET", "XLM", "XMR", "XRP", "XTZ")
KINDS = {"mv_min": ("min_variance", "MV"), "mv_sharpe": ("max_sharpe", "MV"),
         "cvar_min": ("min_risk", "CVaR")}
FAST = {"mv_min": "active_set", "mv_sharpe": "active_set", "cvar_min": "highs"}
CONS = {
    "plain": ConstraintsConfig(),
    # caps that bind: per asset (max_weight below), a group cap on the big caps, a cash buffer
    "binding": ConstraintsConfig(groups={"majors": ["BTC/USDT", "ETH/USDT", "BNB/USDT",
                                                    "XMR/USDT", "TRX/USDT"]},
                                 group_max={"majors": 0.15}, cash_buffer=0.05),
    # floors on every asset (general rows of the homogenised Sharpe problem)
    "floors": ConstraintsConfig(asset_min={f"{s}/USDT": 0.005 for s in SYMBOLS[:10]}),
}


@pytest.fixture(scope="module")
def real(shared_data: Path) -> pd.DataFrame:
    d = shared_data / "binance-spot" / "1d"
    closes = {f"{s}/USDT": pd.read_csv(d / f"{s}-USDT.csv", index_col="timestamp",
                                       parse_dates=True)["close"] for s in SYMBOLS}
    r = pd.concat(closes, axis=1, sort=True).loc["2020-10-16":].pct_change().dropna()
    assert r.shape[1] == 31 and len(r) > 700 and np.isfinite(r.to_numpy()).all()
    return r


@pytest.fixture
def tight_riskfolio(monkeypatch: pytest.MonkeyPatch) -> None:
    import risk.methods

    monkeypatch.setattr(risk.methods, "CLARABEL_TIGHT", {
        "tol_gap_abs": 1e-13, "tol_gap_rel": 1e-13, "tol_feas": 1e-13, "tol_ktratio": 1e-11,
        "max_iter": 400})


def config(kind: str, cons: str, lookback: int) -> AllocationConfig:
    method, rm = KINDS[kind]
    return AllocationConfig(method=method, risk_measure=rm, lookback_bars=lookback,
                            max_weight=0.1 if cons == "binding" else 1.0,
                            constraints=CONS[cons])


def certificate(gradient: np.ndarray, w: np.ndarray, cfg: AllocationConfig,
                assets: list[str]) -> float:
    """Residual of -gradient = lam 1 + sum nu_i a_i over the constraints active at w (nu >= 0,
    lam free), by bounded least squares: ~0 proves w a KKT point of min f (f convex, or
    pseudo-convex as minus the Sharpe ratio) independently of the solver's bookkeeping."""
    lc = build(assets, cfg.constraints, cfg.min_weight, cfg.max_weight)
    cols = [np.ones(len(w))]
    cols += [np.eye(len(w))[i] for i in np.flatnonzero(w >= lc.hi - 1e-9)]
    cols += [-np.eye(len(w))[i] for i in np.flatnonzero(w <= lc.lo + 1e-9)]
    cols += [row for row, b in zip(lc.a, lc.b, strict=True) if row @ w >= b - 1e-9]
    m = np.column_stack(cols)
    lower = np.r_[-np.inf, np.zeros(m.shape[1] - 1)]
    fit = lsq_linear(m, -gradient, bounds=(lower, np.full(m.shape[1], np.inf)), tol=1e-14)
    return float(np.abs(m @ fit.x + gradient).max() / np.abs(gradient).max())


def hist_cvar(x: np.ndarray, w: np.ndarray, alpha: float) -> float:
    """Historical CVaR straight from the sorted losses (no LP)."""
    losses = np.sort(-(x @ w))[::-1]
    k = alpha * len(losses)
    whole = int(np.floor(k))
    return float((losses[:whole].sum() + (k - whole) * losses[min(whole, len(losses) - 1)]) / k)


def cvar_by_linprog(x: np.ndarray, cfg: AllocationConfig, assets: list[str]) -> np.ndarray:
    """The Rockafellar-Uryasev LP on unscaled data through scipy (interior point)."""
    lc = build(assets, cfg.constraints, cfg.min_weight, cfg.max_weight)
    t, n = x.shape
    a = cfg.cvar_alpha
    c = np.r_[np.zeros(n), 1.0, np.full(t, 1 / (a * t))]
    a_ub = np.vstack([np.hstack([-x, -np.ones((t, 1)), -np.eye(t)]),
                      np.hstack([lc.a, np.zeros((lc.a.shape[0], 1 + t))])])
    res = linprog(c, A_ub=a_ub, b_ub=np.r_[np.zeros(t), lc.b],
                  A_eq=np.r_[np.ones(n), 0.0, np.zeros(t)][None, :], b_eq=[lc.budget],
                  bounds=[*zip(lc.lo, lc.hi, strict=True), (None, None), *[(0, None)] * t],
                  method="highs-ipm")
    assert res.status == 0
    return res.x[:n]


def weights(a) -> np.ndarray:
    return np.array(list(a.weights.values()))


@pytest.mark.parametrize("cons", list(CONS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_rolling_window_matches_riskfolio_and_is_optimal(real, tight_riskfolio, kind, cons):
    """The daemon's steady state: the window moves on by a bar (and once by five); every
    re-solve is the fast engine's, warm, equal to riskfolio-lib's and certified optimal."""
    cfg = config(kind, cons, 250)
    solver_cache.clear()
    assets = list(real.columns)
    for k, end in enumerate((400, 401, 402, 403, 408)):
        r = real.iloc[:end]
        window = r.iloc[-250:]
        fast = solve(r, cfg, DAY)
        assert solver_cache.LAST_ENGINE[0] == FAST[kind], (end, solver_cache.ENGINES)
        slow = solve(r, replace(cfg, use_solver_cache=False), DAY)
        w = weights(fast)
        assert np.abs(w - weights(slow)).max() < 1e-6
        if kind == "cvar_min":
            state = next(s for key, s in solver_cache._PROBLEMS.items() if key[0] == "highs")
            assert state.rows_written == (250 if k == 0 else 5 if end == 408 else 1)
            x = window.to_numpy()
            ref = cvar_by_linprog(x, cfg, assets)
            assert hist_cvar(x, w, cfg.cvar_alpha) <= hist_cvar(x, ref, cfg.cvar_alpha) + 1e-12
            assert np.abs(w - ref).max() < 1e-6
            continue
        state = next(s for key, s in solver_cache._PROBLEMS.items() if key[0] == "active_set")
        assert state.warm == k  # every solve after the first started from the last one
        est = estimate(window, cfg.estimators)
        if kind == "mv_min":
            grad = 2 * est.cov @ w
        else:
            ret, var = est.mu @ w, w @ est.cov @ w
            grad = -(est.mu / np.sqrt(var) - ret * (est.cov @ w) / var**1.5)  # -d Sharpe
        assert certificate(grad, w, cfg, assets) < 1e-7
    if cons == "binding":  # the caps this case is about did bind
        assert np.isclose(w.max(), 0.1, atol=1e-9) or kind == "cvar_min"
        majors = [assets.index(a) for a in CONS["binding"].groups["majors"]]
        assert w[majors].sum() <= 0.15 + 1e-9


def test_cvar_integer_alpha_t_uses_the_lp(real, tight_riskfolio):
    """alpha * T = 10: the VaR is any value between two order statistics (a dual-degenerate
    vertex), yet the weights are unique: the LP's answer stands and equals riskfolio-lib's."""
    cfg = config("cvar_min", "plain", 200)
    solver_cache.clear()
    for end in (500, 501):
        fast = solve(real.iloc[:end], cfg, DAY)
        assert solver_cache.LAST_ENGINE[0] == "highs"
        slow = solve(real.iloc[:end], replace(cfg, use_solver_cache=False), DAY)
        assert np.abs(weights(fast) - weights(slow)).max() < 1e-6


@pytest.mark.parametrize("kind", ["mv_min", "mv_sharpe"])
def test_stale_warm_start_still_exact(real, kind):
    """A working set from another regime (2021's bull market, then the 2022 drawdown) is
    corrected by the iteration: the warm answer equals a cold one."""
    cfg = config(kind, "binding", 250)
    if kind == "mv_sharpe":  # 2022's means are negative: a risk-free rate below them all
        cfg = replace(cfg, risk_free_rate=-5.0)
    solver_cache.clear()
    solve(real.loc[:"2021-09-30"], cfg, DAY)
    warm = solve(real.loc[:"2022-09-30"], cfg, DAY)
    state = next(s for key, s in solver_cache._PROBLEMS.items() if key[0] == "active_set")
    assert state.warm == 1 and state.iterations > 1  # warm, and the set had to change
    solver_cache.clear()
    cold = solve(real.loc[:"2022-09-30"], cfg, DAY)
    assert np.abs(weights(warm) - weights(cold)).max() < 1e-10


def test_wrong_working_set_is_corrected(real):
    """Directly: start with the assets the optimum holds pinned at zero."""
    est = estimate(real.iloc[-365:], EstimatorConfig())
    n = est.cov.shape[0]
    h = est.cov / np.mean(np.diag(est.cov))
    qp = QP(h=h, e=np.ones((1, n)), f=np.array([1.0]), g=np.zeros((0, n)), d=np.zeros(0),
            lb=np.zeros(n), ub=np.ones(n))
    cold = active_set.solve(qp, np.full(n, 1 / n), WorkingSet.empty(n))
    held = cold.x > 1e-9
    ws = WorkingSet.empty(n)
    ws.at_lb[held] = True
    x0 = np.where(held, 0.0, 1.0 / (~held).sum())
    res = active_set.solve(qp, x0, ws)
    assert res.iterations > held.sum()  # every wrong bound had to be released
    assert np.abs(res.x - cold.x).max() < 1e-12 and res.kkt_error < 1e-12


@pytest.mark.parametrize("kind", list(KINDS))
def test_infeasible_groups_raise(real, kind):
    """The box and budget pass the precheck but the group floor cannot be met under the caps:
    no engine returns weights, and the allocation fails with the reason."""
    cons = ConstraintsConfig(groups={"g": ["BTC/USDT", "ETH/USDT"]}, group_min={"g": 0.5})
    method, rm = KINDS[kind]
    cfg = AllocationConfig(method=method, risk_measure=rm, lookback_bars=250, max_weight=0.2,
                           constraints=cons)
    window = real.iloc[-250:]
    lc = build(list(real.columns), cons, 0.0, 0.2)
    est = estimate(window, cfg.estimators)
    solver_cache.clear()
    with pytest.raises(SolveError):
        solver_cache.solve_kind(kind, window.to_numpy(), est.mu, est.cov, lc)
    with pytest.raises(SolveError):
        solve(real, cfg, DAY)


@pytest.mark.parametrize("knob", ["iterations", "kkt"])
def test_failed_active_set_falls_back(real, tight_riskfolio, monkeypatch, knob):
    """No converged, checked optimum: the answer comes from Clarabel, still riskfolio-lib's."""
    if knob == "iterations":
        monkeypatch.setattr(active_set, "MAX_ITER_FACTOR", 0)  # 10 iterations: too few cold
    else:
        monkeypatch.setattr(active_set, "KKT_TOL", 0.0)  # no answer passes the check
    cfg = config("mv_min", "plain", 250)
    solver_cache.clear()
    fast = solve(real, cfg, DAY)
    assert solver_cache.LAST_ENGINE[0] == "clarabel"
    slow = solve(real, replace(cfg, use_solver_cache=False), DAY)
    assert np.abs(weights(fast) - weights(slow)).max() < 1e-6


@pytest.mark.parametrize("cov", ["ledoit", "sample"])
def test_twin_assets(real, tight_riskfolio, cov):
    """BTC listed twice. MV with a shrunk (definite) covariance: the optimum is unique and
    splits BTC's weight evenly; the active set answers, riskfolio-lib agrees. MV with the
    sample covariance (singular) and CVaR: every split of BTC's weight between the twins is
    optimal. The fast engines refuse such an optimum (the active set cannot vouch for one of
    many, the LP's vertex puts it all on one twin) and Clarabel answers with an even split.
    riskfolio-lib's interior point picks an uneven one (by ~1e-4), so only the objective can
    be compared: no solver promises its pick on a non-unique optimum."""
    r = real.iloc[-300:].copy()
    r["BTC2/USDT"] = r["BTC/USDT"]
    x = r.to_numpy()
    est_cfg = EstimatorConfig(cov=cov)
    est = estimate(r, est_cfg)
    for kind in ("mv_min", "cvar_min"):
        unique = kind == "mv_min" and cov == "ledoit"
        method, rm = KINDS[kind]
        cfg = AllocationConfig(method=method, risk_measure=rm, lookback_bars=300,
                               estimators=est_cfg)
        solver_cache.clear()
        fast = solve(r, cfg, DAY)
        assert solver_cache.LAST_ENGINE[0] == ("active_set" if unique else "clarabel")
        w = fast.weights
        assert w["BTC/USDT"] > 0.1 and abs(w["BTC/USDT"] - w["BTC2/USDT"]) < 1e-6
        slow = solve(r, replace(cfg, use_solver_cache=False), DAY)
        if unique:
            assert np.abs(weights(fast) - weights(slow)).max() < 1e-6
        elif kind == "mv_min":
            a, b = weights(fast), weights(slow)
            assert a @ est.cov @ a == pytest.approx(b @ est.cov @ b, rel=1e-8)
        else:
            a, b = (hist_cvar(x, weights(v), cfg.cvar_alpha) for v in (fast, slow))
            assert a == pytest.approx(b, rel=1e-8)


def test_lp_rows_rewritten_only_on_a_shift(real):
    """A window moved by 3 bars rewrites 3 scenario rows; unrelated data of the same shape
    rebuilds the LP; each answer equals a freshly built LP's."""
    cfg = config("cvar_min", "plain", 250)
    lc = build(list(real.columns), cfg.constraints, 0.0, 1.0)
    x = real.to_numpy()
    solver_cache.clear()
    key_state = None
    for start, rows in ((0, 250), (3, 3), (400, 250)):
        window = x[start:start + 250]
        w = solver_cache.solve_kind("cvar_min", window, x.mean(0), np.eye(31), lc)
        key_state = next(s for k, s in solver_cache._PROBLEMS.items() if k[0] == "highs")
        assert key_state.rows_written == rows
        saved = dict(solver_cache._PROBLEMS)
        solver_cache.clear()
        fresh = solver_cache.solve_kind("cvar_min", window, x.mean(0), np.eye(31), lc)
        solver_cache._PROBLEMS.update(saved)
        assert np.abs(w - fresh).max() < 1e-9


@pytest.mark.parametrize("seed", range(12))
def test_active_set_on_random_qps(seed):
    """No market data needed: random definite H, boxes, group caps and floors. The answer
    satisfies the constraints, passes an independent KKT certificate, and no feasible point
    cvxpy finds does better; a warm re-solve after a perturbation equals a cold one."""
    import cvxpy as cp

    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 40))
    f = rng.normal(size=(n + 5, n))
    h = f.T @ f / (n + 5) + 0.05 * np.eye(n)
    h /= np.mean(np.diag(h))
    lo = np.where(rng.random(n) < 0.3, rng.uniform(0, 0.5 / n, n), 0.0)
    hi = rng.uniform(2.0 / n, 0.6, n)
    members = rng.random((2, n)) < 0.4
    g = np.vstack([members[0], -1.0 * members[1]])
    d = np.array([0.5, -0.1 * members[1].sum() / n])
    qp = QP(h=h, e=np.ones((1, n)), f=np.array([1.0]), g=g, d=d, lb=lo, ub=hi)
    x = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(cp.quad_form(x, cp.psd_wrap(h))),
                      [cp.sum(x) == 1, x >= lo, x <= hi, g @ x <= d])
    prob.solve(solver=cp.CLARABEL)
    if prob.status != "optimal":
        pytest.skip(f"random constraints infeasible ({prob.status})")
    from risk.constraints import LinearConstraints
    from risk.solver_cache import _lp_point

    lc = LinearConstraints(assets=tuple(map(str, range(n))), lo=lo, hi=hi, a=g, b=d,
                           budget=1.0, allow_short=False, max_gross_short=0.0)
    x0 = _lp_point(lc, None)
    res = active_set.solve(qp, x0, WorkingSet.empty(n))
    w = res.x
    assert abs(w.sum() - 1) < 1e-12 and np.all(w >= lo) and np.all(w <= hi)
    assert np.all(g @ w <= d + 1e-12)
    assert w @ h @ w <= x.value @ h @ x.value + 1e-12
    assert np.abs(w - x.value).max() < 1e-5  # Clarabel at its default tolerances
    # the certificate, from the data alone
    cols = [np.ones(n)] + [np.eye(n)[i] for i in np.flatnonzero(w >= hi - 1e-12)]
    cols += [-np.eye(n)[i] for i in np.flatnonzero(w <= lo + 1e-12)]
    cols += [row for row, b in zip(g, d, strict=True) if row @ w >= b - 1e-12]
    m = np.column_stack(cols)
    lower = np.r_[-np.inf, np.zeros(m.shape[1] - 1)]
    fit = lsq_linear(m, -2 * h @ w, bounds=(lower, np.full(m.shape[1], np.inf)), tol=1e-14)
    assert np.abs(m @ fit.x + 2 * h @ w).max() < 1e-9
    # warm: a perturbed H from the previous answer and working set
    h2 = h + 0.05 * np.diag(rng.uniform(0, 1, n))
    qp2 = QP(h=h2, e=qp.e, f=qp.f, g=g, d=d, lb=lo, ub=hi)
    warm = active_set.solve(qp2, w, res.working)
    cold = active_set.solve(qp2, x0, WorkingSet.empty(n))
    assert np.abs(warm.x - cold.x).max() < 1e-10


def test_engine_exception_falls_through(monkeypatch):
    """An unexpected error inside a fast engine costs speed, not the solve."""
    def boom(*args, **kwargs):
        raise RuntimeError("simulated engine fault")

    rng = np.random.default_rng(5)
    r = pd.DataFrame(rng.normal(0.001, 0.02, size=(120, 6)),
                     columns=[f"A{i}/USDT" for i in range(6)],
                     index=pd.date_range("2022-01-01", periods=120, freq="D", tz="UTC"))
    for kind, name in (("cvar_min", "_solve_highs"), ("mv_min", "_solve_active_set")):
        method, rm = KINDS[kind]
        cfg = AllocationConfig(method=method, risk_measure=rm, lookback_bars=120)
        solver_cache.clear()
        expected = solve(r, cfg, DAY)
        assert solver_cache.LAST_ENGINE[0] == FAST[kind]
        with monkeypatch.context() as m:
            m.setattr(solver_cache, name, boom)
            got = solve(r, cfg, DAY)
        assert solver_cache.LAST_ENGINE[0] == "clarabel" and "solver_cache" in got.notes
        assert np.abs(weights(got) - weights(expected)).max() < 1e-6
