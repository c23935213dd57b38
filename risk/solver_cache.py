"""Steady-state re-solves of the three hot objectives, warm-started from the previous solve.

riskfolio-lib rebuilds and re-canonicalises its whole model on every call and solves it with an
interior-point method, which cannot reuse the previous answer. The rebalancer re-solves the same
problem shape bar after bar on a window that moved by a bar or a few, so the previous solution
is nearly right. The formulations are riskfolio-lib's, so the weights are the same:

* mv_min:    min w'Sw                  s.t. sum w = B, lo <= w <= hi, A w <= b
* mv_sharpe: min y'Sy s.t. (mu - rf)'y = 1, sum y = B k, lo k <= y <= hi k, A y <= b k,
             k >= 0; w = y / k (Cornuejols-Tutuncu homogenisation, as riskfolio's 'Sharpe')
* cvar_min:  min VaR + sum(z) / (alpha T)  s.t. z >= -R w - VaR, z >= 0, and the w constraints

Engines, tried in order; each answer is checked, a failure falls through to the next:

1. mv_min / mv_sharpe: a dense active-set QP (`risk/active_set.py`) started from the previous
   solution and its active set (which weights sit at a bound, which group caps bind). For
   mv_sharpe, k = sum(y) / B is eliminated, leaving a strictly convex QP in y with homogeneous
   rows. The answer is returned only after a KKT check; S positive definite makes it unique.
   cvar_min: a HiGHS LP kept between solves. A window that moved by s bars changes s scenario
   rows (written in place, ring-buffer order), and the dual simplex restarts from the kept
   basis. A vertex is returned only when its weights are provably the only optimal ones
   (`_unique_weights`); otherwise an LP optimum need not be the one riskfolio-lib's interior
   point lands on (the centre of the optimal face), so the next engine decides.
2. A parameterised cvxpy problem (Clarabel), built once per shape: cvxpy's compilation is
   skipped, the solve is not.
3. `try_solve` returns None and the caller runs riskfolio-lib itself.

Everything kept is per shape and per solver worker process; nothing here does I/O.
"""

from __future__ import annotations

import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from risk import active_set
from risk.active_set import QP, ActiveSetFailure, WorkingSet
from risk.constraints import LinearConstraints
from risk.errors import SolveError
from risk.estimators import Estimates, cov_factor

if TYPE_CHECKING:
    from risk.allocation import AllocationConfig

MAX_PROBLEMS = 16
_PROBLEMS: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
# which engine answered, per solve (tests and the bench read it to see the fast path was taken)
ENGINES: Counter[str] = Counter()
LAST_ENGINE: list[str] = [""]


def kind_for(cfg: AllocationConfig, lc: LinearConstraints) -> str | None:
    """Which cached formulation serves this config, or None for the riskfolio-lib path."""
    if lc.allow_short:
        return None
    rm = "MV" if cfg.method == "min_variance" else cfg.risk_measure
    if cfg.method in ("min_variance", "min_risk") and rm == "MV":
        return "mv_min"
    if cfg.method == "max_sharpe" and rm == "MV":
        return "mv_sharpe"
    if cfg.method == "min_risk" and rm == "CVaR":
        return "cvar_min"
    return None


def try_solve(returns: pd.DataFrame | np.ndarray, est: Estimates, cfg: AllocationConfig,
              lc: LinearConstraints, ppy: float) -> np.ndarray | None:
    kind = kind_for(cfg, lc)
    if kind is None:
        return None
    rf = cfg.risk_free_rate / ppy
    if kind == "mv_sharpe" and not np.any(est.mu - rf > 0):
        return None  # riskfolio-lib switches formulation when no asset beats rf: let it
    try:
        return solve_kind(kind, np.asarray(returns, dtype=float), est.mu, est.cov, lc, rf=rf,
                          alpha=cfg.cvar_alpha)
    except SolveError:
        return None  # the cache only accelerates: riskfolio-lib gets the final word


def solve_kind(kind: str, x: np.ndarray, mu: np.ndarray, cov: np.ndarray,
               lc: LinearConstraints, rf: float = 0.0, alpha: float = 0.05) -> np.ndarray:
    """Long-only weights for `kind` on this window; SolveError when no engine succeeds."""
    w: np.ndarray | None = None
    engine = "clarabel"
    try:
        if kind in ("mv_min", "mv_sharpe"):
            w = _solve_active_set(kind, mu, cov, lc, rf)
            engine = "active_set"
        elif kind == "cvar_min":
            w = _solve_highs(x, lc, alpha)
            engine = "highs"
    except Exception:  # the fast engines only accelerate: any surprise goes to the next one
        _forget(kind)
        w = None
    if w is None:
        w = _solve_cvxpy(kind, x, mu, cov, lc, rf, alpha)
        engine = "clarabel"
    ENGINES[f"{kind}:{engine}"] += 1
    LAST_ENGINE[0] = engine
    # riskfolio-lib returns |w| / sum|w| * budget for long-only; do the same so both agree
    w = np.abs(w)
    return w / w.sum() * lc.budget


def _keep(key: tuple[Any, ...], state: Any) -> None:
    _PROBLEMS[key] = state
    _PROBLEMS.move_to_end(key)
    while len(_PROBLEMS) > MAX_PROBLEMS:
        _PROBLEMS.popitem(last=False)


def _forget(kind: str) -> None:
    """Drop the fast engine's kept state for `kind` (it may be what failed)."""
    for key in [k for k in _PROBLEMS if k[0] != "cvxpy" and k[1] == kind]:
        del _PROBLEMS[key]


def _same_constraints(a: LinearConstraints, b: LinearConstraints) -> bool:
    return (a.budget == b.budget and np.array_equal(a.lo, b.lo) and np.array_equal(a.hi, b.hi)
            and np.array_equal(a.a, b.a) and np.array_equal(a.b, b.b))


# --- 1a. MV: active-set QP ------------------------------------------------------------------

@dataclass
class _QPState:
    lc: LinearConstraints
    x: np.ndarray | None = None  # last solution, in the QP's variables (w, or y for Sharpe)
    working: WorkingSet | None = None
    solves: int = 0
    warm: int = 0  # solves finished from the previous working set
    iterations: int = 0  # of the last solve


def _solve_active_set(kind: str, mu: np.ndarray, cov: np.ndarray, lc: LinearConstraints,
                      rf: float) -> np.ndarray | None:
    """Weights, or None when the active-set engine cannot vouch for an answer."""
    n = len(lc.assets)
    key = ("active_set", kind, n, lc.a.shape[0])
    state = _PROBLEMS.get(key)
    if not isinstance(state, _QPState) or not _same_constraints(state.lc, lc):
        state = _QPState(lc=lc)
    _keep(key, state)
    qp = _qp(kind, mu, cov, lc, rf)
    if qp is None:
        return None
    for warm in (True, False):
        if warm:
            if state.x is None or state.working is None:
                continue
            x0: np.ndarray | None = state.x
            ws = state.working
            if kind == "mv_sharpe":  # homogeneous rows: rescaling keeps the working set active
                s = float(qp.e[0] @ state.x)
                x0 = state.x / s if s > 1e-12 else None
        else:
            x0, ws = _feasible_start(kind, qp, lc), WorkingSet.empty(n)
        if x0 is None:
            continue
        try:
            res = active_set.solve(qp, x0, ws)
        except ActiveSetFailure:
            continue
        state.x, state.working, state.iterations = res.x, res.working, res.iterations
        state.solves += 1
        state.warm += warm
        if res.degenerate and not _positive_definite(qp.h):
            return None  # possibly one optimum of many: let an interior point pick riskfolio's
        if kind == "mv_min":
            return res.x
        k = res.x.sum() / lc.budget
        return res.x / k if k > 1e-12 else None
    state.x = state.working = None  # nothing to warm-start from next time
    return None


def _positive_definite(h: np.ndarray) -> bool:
    """Smallest eigenvalue clear of rounding (h is scaled to a unit mean diagonal)."""
    return bool(np.linalg.eigvalsh(h)[0] > 1e-10)


def _qp(kind: str, mu: np.ndarray, cov: np.ndarray, lc: LinearConstraints, rf: float
        ) -> QP | None:
    n = len(lc.assets)
    # scaled so diag(H) ~ 1: the active-set tolerances are absolute (argmin unchanged)
    h = cov / np.mean(np.diag(cov))
    h = 0.5 * (h + h.T)
    if kind == "mv_min":
        return QP(h=h, e=np.ones((1, n)), f=np.array([lc.budget]), g=lc.a, d=lc.b,
                  lb=lc.lo.astype(float), ub=lc.hi.astype(float))
    excess = mu - rf
    top = np.abs(excess).max()
    if not top > 0:
        return None
    budget = lc.budget  # > 0: 1 - cash_buffer
    ones = np.ones(n)
    # k = sum(y) / B; lo >= 0 on this path, so y >= 0 (a plain bound) and k >= 0 follows
    rows: list[np.ndarray] = []
    for i in np.flatnonzero(lc.hi < budget):  # y_i <= hi_i k; redundant when hi_i >= B
        r = -lc.hi[i] / budget * ones
        r[i] += 1.0
        rows.append(r)
    for i in np.flatnonzero(lc.lo > 0):  # lo_i k <= y_i
        r = lc.lo[i] / budget * ones
        r[i] -= 1.0
        rows.append(r)
    if lc.has_rows:
        rows.extend(lc.a - np.outer(lc.b / budget, ones))  # A y <= b k
    g = np.vstack(rows) if rows else np.zeros((0, n))
    return QP(h=h, e=(excess / top)[None, :], f=np.array([1.0]), g=g, d=np.zeros(len(g)),
              lb=np.zeros(n), ub=np.full(n, np.inf))


def _feasible_start(kind: str, qp: QP, lc: LinearConstraints) -> np.ndarray | None:
    """A feasible point for a cold start: the budget spread over the box in proportion to each
    asset's room (interior where the box allows), or an LP's vertex when group rows cut it off.
    For mv_sharpe the point must also have a positive mean, so it is moved towards the best
    mean the constraints allow, then scaled onto (mu - rf)'y = 1."""
    room = lc.hi - lc.lo
    spare = lc.budget - lc.lo.sum()
    w = lc.lo + (spare * room / room.sum() if room.sum() > 0 else 0.0)
    ok = not lc.has_rows or bool(np.all(lc.a @ w <= lc.b + 1e-12))
    if kind == "mv_min":
        return w if ok else _lp_point(lc, None)
    mu = qp.e[0]
    if ok and mu @ w > 1e-9:
        return w / (mu @ w)
    best = _greedy_best_mean(lc, mu) if not lc.has_rows else _lp_point(lc, mu)
    if best is None or mu @ best <= 1e-9:
        return None
    if ok and mu @ (w + best) > 1e-9:  # halfway keeps the start off most bounds
        best = 0.5 * (w + best)
    return best / (mu @ best)


def _greedy_best_mean(lc: LinearConstraints, mu: np.ndarray) -> np.ndarray:
    """argmax mu'w on the box and budget alone: fill the best assets up to their caps."""
    w = lc.lo.astype(float, copy=True)
    spare = lc.budget - w.sum()
    for i in np.argsort(-mu):
        add = min(lc.hi[i] - w[i], spare)
        w[i] += add
        spare -= add
        if spare <= 0:
            break
    return w


def _lp_point(lc: LinearConstraints, maximise: np.ndarray | None) -> np.ndarray | None:
    from scipy.optimize import linprog

    n = len(lc.assets)
    c = np.zeros(n) if maximise is None else -maximise
    res = linprog(c, A_ub=lc.a if lc.has_rows else None, b_ub=lc.b if lc.has_rows else None,
                  A_eq=np.ones((1, n)), b_eq=[lc.budget],
                  bounds=np.column_stack([lc.lo, lc.hi]), method="highs")
    return np.asarray(res.x, dtype=float) if res.status == 0 else None


# --- 1b. CVaR: HiGHS LP, dual simplex from the kept basis --------------------------------------

# HiGHS' defaults are 1e-7; the weights are compared with riskfolio-lib's to 1e-6
_HIGHS_TOL = 1e-9
# a reduced cost or row dual below this counts as zero when testing the optimum for uniqueness
_DEGENERATE = 1e-9


@dataclass
class _LPState:
    highs: Any
    lc: LinearConstraints
    window: np.ndarray  # raw returns in time order, as last written
    scale: float  # the LP holds window / scale (fixed, so an unchanged row stays unchanged)
    head: int  # LP row holding the oldest bar of `window`
    solves: int = 0
    rows_written: int = 0  # scenario rows rewritten in place by the last solve


def _solve_highs(x: np.ndarray, lc: LinearConstraints, alpha: float) -> np.ndarray | None:
    """Weights, or None when the LP cannot vouch for riskfolio-lib's answer."""
    import highspy

    t, n = x.shape
    key = ("highs", "cvar_min", n, t, lc.a.shape[0], alpha)
    state = _PROBLEMS.get(key)
    std = float(x.std())
    if not std > 0:
        return None
    if (not isinstance(state, _LPState) or not _same_constraints(state.lc, lc)
            or not 0.25 < std / state.scale < 4.0):
        state = _build_lp(x, lc, alpha, std)
    else:
        shift = _shift(state.window, x)
        if shift is None or shift > t // 3:  # rewriting most rows costs more than a rebuild
            state = _build_lp(x, lc, alpha, std)
        else:
            _write_rows(state, x, shift)
    _keep(key, state)
    h = state.highs
    h.run()
    state.solves += 1
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        _PROBLEMS.pop(key, None)  # a basis that led nowhere is not worth keeping
        return None
    info = h.getInfo()
    if max(info.max_primal_infeasibility, info.max_dual_infeasibility) > 10 * _HIGHS_TOL:
        return None
    if not _unique_weights(h, n):
        return None
    return np.asarray(h.getSolution().col_value[:n], dtype=float)


def _shift(old: np.ndarray, new: np.ndarray) -> int | None:
    """s such that `new` is `old` moved on by s bars (0: unchanged), else None."""
    if old.shape != new.shape:
        return None
    if np.array_equal(old, new):
        return 0
    # rows of the old window equal to the new window's first bar: candidate offsets
    for s in np.flatnonzero((old == new[0]).all(axis=1)):
        s = int(s)
        if s > 0 and np.array_equal(old[s:], new[:-s]):
            return s
    return None


def _write_rows(state: _LPState, x: np.ndarray, shift: int) -> None:
    """The `shift` oldest scenario rows become the newest bars; the basis is kept."""
    t = x.shape[0]
    h = state.highs
    for j in range(shift):
        row = (state.head + j) % t
        values = (x[t - shift + j] / state.scale).tolist()
        for col, v in enumerate(values):
            h.changeCoeff(row, col, v)
    state.head = (state.head + shift) % t
    state.window = x.copy()
    state.rows_written = shift


def _build_lp(x: np.ndarray, lc: LinearConstraints, alpha: float, scale: float) -> _LPState:
    """Columns w (n), VaR (1), z (T); rows: T scenarios R_t w + VaR + z_t >= 0, the budget,
    the group rows. R is scaled by one number (argmin unchanged) to keep the LP well scaled."""
    import highspy
    import scipy.sparse as sp

    t, n = x.shape
    g = lc.a.shape[0]
    inf = highspy.kHighsInf
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)  # the solver worker runs one math thread
    h.setOptionValue("primal_feasibility_tolerance", _HIGHS_TOL)
    h.setOptionValue("dual_feasibility_tolerance", _HIGHS_TOL)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n + 1 + t, t + 1 + g
    lp.col_cost_ = np.concatenate([np.zeros(n), [1.0], np.full(t, 1.0 / (alpha * t))])
    lp.col_lower_ = np.concatenate([lc.lo, [-inf], np.zeros(t)])
    lp.col_upper_ = np.concatenate([lc.hi, [inf], np.full(t, inf)])
    lp.row_lower_ = np.concatenate([np.zeros(t), [lc.budget], np.full(g, -inf)])
    lp.row_upper_ = np.concatenate([np.full(t, inf), [lc.budget], lc.b])
    w_block = np.vstack([x / scale, np.ones((1, n)), lc.a])
    var_col = np.concatenate([np.ones(t), np.zeros(1 + g)])[:, None]
    z_block = sp.vstack([sp.identity(t, format="csc"), sp.csc_matrix((1 + g, t))])
    m = sp.hstack([sp.csc_matrix(w_block), sp.csc_matrix(var_col), z_block], format="csc")
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = lp.num_col_, lp.num_row_
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = m.indptr, m.indices, m.data
    h.passModel(lp)
    return _LPState(highs=h, lc=lc, window=x.copy(), scale=scale, head=0, rows_written=t)


def _unique_weights(h: Any, n: int) -> bool:
    """Whether every optimum of the LP has the weights of this vertex.

    With reduced costs d_j, every feasible point's objective is opt + sum_j d_j (x_j - x*_j)
    over the nonbasic j, each term >= 0; so the optimal face is the feasible set with every
    nonbasic variable of nonzero d_j held at its bound. Only the dual-degenerate nonbasics D
    (d_j = 0, bounds apart) may move on it, and the basic variables follow them linearly,
    x_B = x*_B - B^-1 N_D x_D. If no weight is in D and the weight rows of B^-1 N_D are zero,
    the weights are constant on the whole face. That is the common degeneracy here: with
    alpha * T an integer the VaR is any value between two order statistics, but the weights
    are unique. Otherwise they may not be, and an interior point (riskfolio-lib's choice,
    the centre of the face) is needed."""
    import highspy

    basic = highspy.HighsBasisStatus.kBasic
    basis, sol, lp = h.getBasis(), h.getSolution(), h.getLp()
    col_free = np.asarray(lp.col_upper_) > np.asarray(lp.col_lower_)
    row_free = np.asarray(lp.row_upper_) > np.asarray(lp.row_lower_)
    col_nonbasic = np.array([st != basic for st in basis.col_status])
    row_nonbasic = np.array([st != basic for st in basis.row_status])
    d_cols = np.flatnonzero(col_nonbasic & col_free
                            & (np.abs(np.asarray(sol.col_dual)) < _DEGENERATE))
    d_rows = np.flatnonzero(row_nonbasic & row_free
                            & (np.abs(np.asarray(sol.row_dual)) < _DEGENERATE))
    if d_cols.size == 0 and d_rows.size == 0:
        return True  # dual non-degenerate: the whole optimum is unique
    if np.any(d_cols < n):
        return False
    _, basic_vars = h.getBasicVariables()  # >= 0: column index; < 0: row -1 - index
    w_pos = np.flatnonzero((np.asarray(basic_vars) >= 0) & (np.asarray(basic_vars) < n))
    directions = [h.getReducedColumn(int(j))[1] for j in d_cols]
    for i in d_rows:
        e = np.zeros(lp.num_row_)
        e[i] = 1.0
        directions.append(h.getBasisSolve(e)[1])
    return all(np.abs(np.asarray(d)[w_pos]).max(initial=0.0) < _DEGENERATE for d in directions)


# --- 2. cvxpy / Clarabel, parameterised ------------------------------------------------------

@dataclass
class _Problem:
    problem: Any
    params: dict[str, Any]
    w: Any
    k: Any | None = None
    solves: int = 0


def _solve_cvxpy(kind: str, x: np.ndarray, mu: np.ndarray, cov: np.ndarray,
                 lc: LinearConstraints, rf: float, alpha: float) -> np.ndarray:
    import cvxpy as cp

    n = len(lc.assets)
    t = x.shape[0] if kind == "cvar_min" else 0
    key = ("cvxpy", kind, n, t, lc.a.shape[0], alpha if kind == "cvar_min" else None)
    prob = _PROBLEMS.get(key)
    if not isinstance(prob, _Problem):
        prob = _build(kind, n, t, lc.a.shape[0], alpha)
    _keep(key, prob)
    p = prob.params
    p["lo"].value, p["hi"].value, p["budget"].value = lc.lo, lc.hi, lc.budget
    if lc.a.shape[0]:
        p["a"].value, p["b"].value = lc.a, lc.b
    # Rescaled data (argmin unchanged): near the optimum the objective is flat to second order,
    # so with raw variances ~1e-4 the solver's gap tolerance leaves weights loose by ~1e-5;
    # variance scaled to ~1e6 (as riskfolio-lib's x1000) pins them to ~1e-9
    if kind in ("mv_min", "mv_sharpe"):
        p["f"].value = cov_factor(cov / np.mean(np.diag(cov))) * 1e3
    if kind == "mv_sharpe":
        excess = mu - rf
        p["mu"].value = excess / np.abs(excess).max()
    if kind == "cvar_min":
        p["r"].value = x / x.std()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an inaccurate status is handled below
            prob.problem.solve(solver=cp.CLARABEL)  # default gaps suffice on scaled data
    except cp.SolverError as exc:
        raise SolveError(f"{kind}: solver failure: {exc}") from exc
    prob.solves += 1
    if prob.problem.status != "optimal" or prob.w.value is None:
        raise SolveError(f"{kind}: {prob.problem.status}")
    w = np.asarray(prob.w.value, dtype=float)
    if kind == "mv_sharpe":
        k = float(prob.k.value)
        if k <= 0:
            raise SolveError("mv_sharpe: degenerate homogenisation (k <= 0)")
        w = w / k
    return w


def _build(kind: str, n: int, t: int, g: int, alpha: float) -> _Problem:
    import cvxpy as cp

    p: dict[str, Any] = {"lo": cp.Parameter(n), "hi": cp.Parameter(n),
                         "budget": cp.Parameter(nonneg=True)}
    if g:
        p["a"], p["b"] = cp.Parameter((g, n)), cp.Parameter(g)
    w = cp.Variable(n)
    k = None
    if kind == "mv_sharpe":
        k = cp.Variable(nonneg=True)
        p["f"], p["mu"] = cp.Parameter((n, n)), cp.Parameter(n)
        cons = [p["mu"] @ w == 1, cp.sum(w) == p["budget"] * k,
                w >= p["lo"] * k, w <= p["hi"] * k]
        if g:
            cons.append(p["a"] @ w <= p["b"] * k)
        objective = cp.Minimize(cp.sum_squares(p["f"] @ w))
    else:
        cons = [cp.sum(w) == p["budget"], w >= p["lo"], w <= p["hi"]]
        if g:
            cons.append(p["a"] @ w <= p["b"])
        if kind == "mv_min":
            p["f"] = cp.Parameter((n, n))
            objective = cp.Minimize(cp.sum_squares(p["f"] @ w))
        else:
            p["r"] = cp.Parameter((t, n))
            var = cp.Variable()
            z = cp.Variable(t, nonneg=True)
            cons.append(z >= -(p["r"] @ w) - var)
            objective = cp.Minimize(var + cp.sum(z) / (alpha * t))
    problem = cp.Problem(objective, cons)
    if not problem.is_dcp(dpp=True):
        raise SolveError(f"{kind}: problem is not DPP; parameters would not be cached")
    return _Problem(problem=problem, params=p, w=w, k=k)


def clear() -> None:
    _PROBLEMS.clear()
    ENGINES.clear()
    LAST_ENGINE[0] = ""
