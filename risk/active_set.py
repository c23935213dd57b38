"""A dense primal active-set solver for small strictly convex QPs, warm-started.

    min 1/2 x'Hx   s.t.   E x = f,   G x <= d,   lb <= x <= ub         (H positive definite)

The solver cache (`risk/solver_cache.py`) re-solves the same problem shape bar after bar with a
slightly moved covariance; the optimal active set (which weights sit at a bound, which group cap
binds) barely changes between bars. An interior-point solver cannot use that; an active-set
method started from the previous solution and working set needs one linear solve when the set is
unchanged and one more per change (Nocedal & Wright, Numerical Optimization, Algorithm 16.3).

Bounds are handled apart from the general rows: a variable at a bound is fixed and eliminated,
so each iteration factors only the free block of H (Cholesky) plus a Schur complement as small
as the number of equality and active general rows.

The answer is trusted only after `kkt_error` checks it from scratch (primal feasibility,
multiplier signs, stationarity, complementarity); anything else raises `ActiveSetFailure`, and
the caller falls back to a general solver. For a strictly convex QP the KKT point is the unique
optimum, so a checked answer is the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.linalg.lapack import dtrtrs

# Iterations beyond this mean cycling on a degenerate vertex or a badly posed problem: give up
# rather than loop (each iteration changes the working set by one, so a well-posed solve from a
# cold start needs at most about the number of constraints that end up active).
MAX_ITER_FACTOR = 3
KKT_TOL = 1e-9


class ActiveSetFailure(Exception):
    """The active-set iteration did not reach a verified optimum; use another solver."""


@dataclass
class QP:
    """Data of one problem; H should be scaled so its diagonal is about 1 (tolerances are
    absolute)."""

    h: np.ndarray
    e: np.ndarray  # (me, n) equality rows
    f: np.ndarray  # (me,)
    g: np.ndarray  # (mi, n) general inequality rows
    d: np.ndarray  # (mi,)
    lb: np.ndarray  # (n,), -inf where unbounded
    ub: np.ndarray  # (n,), +inf where unbounded


@dataclass
class WorkingSet:
    """Which inequalities are held as equalities: variables fixed at a bound, general rows."""

    at_lb: np.ndarray
    at_ub: np.ndarray
    rows: list[int] = field(default_factory=list)

    @classmethod
    def empty(cls, n: int) -> WorkingSet:
        return cls(np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), [])

    def copy(self) -> WorkingSet:
        return WorkingSet(self.at_lb.copy(), self.at_ub.copy(), list(self.rows))


@dataclass
class Result:
    x: np.ndarray
    working: WorkingSet
    iterations: int
    kkt_error: float
    # some constraint is active with a zero multiplier: x is then the unique optimum only if H
    # is positive definite on more than the free block (the caller checks; see `degenerate`)
    degenerate: bool


@dataclass
class _Multipliers:
    eq: np.ndarray  # any sign
    rows: np.ndarray  # (mi,), >= 0 at an optimum, zero off the working set
    lb: np.ndarray  # (n,), >= 0, zero off the working set
    ub: np.ndarray


def solve(qp: QP, x0: np.ndarray, working: WorkingSet, max_iter: int | None = None) -> Result:
    """Minimise from the feasible point `x0`, whose active constraints include `working`
    (which must be linearly independent together with E: true of any working set this
    function returned for the same constraint data)."""
    n = qp.h.shape[0]
    # the linear algebra below skips scipy's finite checks and wrappers (a third of a
    # re-solve's time): finite data keep every step finite, so they are checked once here
    if not (np.isfinite(qp.h).all() and np.isfinite(qp.e).all() and np.isfinite(qp.f).all()
            and np.isfinite(qp.g).all() and np.isfinite(qp.d).all()
            and np.isfinite(x0).all() and not np.isnan(qp.lb).any()
            and not np.isnan(qp.ub).any()):
        raise ActiveSetFailure("non-finite problem data")
    x = x0.astype(float, copy=True)
    ws = working.copy()
    limit = max_iter if max_iter is not None else MAX_ITER_FACTOR * (n + qp.g.shape[0]) + 10
    for it in range(1, limit + 1):
        x_hat, mult = _equality_qp(qp, ws)
        p = x_hat - x
        alpha, block = _ratio_test(qp, x, p, ws)
        x = x + alpha * p
        if block is not None:
            kind, j = block
            if kind == "row":
                ws.rows.append(j)
            elif kind == "lb":
                ws.at_lb[j] = True
                x[j] = qp.lb[j]  # exactly on the bound: the variable is eliminated from now on
            else:
                ws.at_ub[j] = True
                x[j] = qp.ub[j]
            continue
        # x is the minimiser on the working set: optimal unless a multiplier has the wrong sign
        worst, where = _most_negative(mult)
        if worst >= -KKT_TOL:
            err = kkt_error(qp, x, mult)
            if err > KKT_TOL:
                raise ActiveSetFailure(f"KKT check failed ({err:.2e})")
            return Result(x=x, working=ws, iterations=it, kkt_error=err,
                          degenerate=degenerate(qp, x, mult))
        kind, j = where
        if kind == "row":
            ws.rows.remove(j)
        elif kind == "lb":
            ws.at_lb[j] = False
        else:
            ws.at_ub[j] = False
    raise ActiveSetFailure(f"no optimum after {limit} iterations")


def _equality_qp(qp: QP, ws: WorkingSet) -> tuple[np.ndarray, _Multipliers]:
    """Minimiser of 1/2 x'Hx with the working set as equalities, and its multipliers."""
    fixed = ws.at_lb | ws.at_ub
    free = ~fixed
    xf = np.where(ws.at_lb, qp.lb, np.where(ws.at_ub, qp.ub, 0.0))
    c = np.vstack([qp.e, qp.g[ws.rows]]) if ws.rows else qp.e
    r = np.concatenate([qp.f, qp.d[ws.rows]]) if ws.rows else qp.f
    h_ff = qp.h[np.ix_(free, free)]
    c_f = c[:, free]
    rhs = -qp.h[np.ix_(free, fixed)] @ xf[fixed]
    r_f = r - c[:, fixed] @ xf[fixed]
    try:
        chol = np.linalg.cholesky(h_ff)  # lower: H_FF = L L'
    except np.linalg.LinAlgError as exc:
        raise ActiveSetFailure("free block of H is not positive definite") from exc
    # x_F = H_FF^-1 (rhs - C_F' lam), C_F x_F = r_F  =>  (K'K) lam = K'u - r_F, K = L^-1 C_F'
    k = _solve_triangular(chol, c_f.T, lower=True)
    u = _solve_triangular(chol, rhs, lower=True)
    lam = np.zeros(c.shape[0])
    if c.shape[0]:
        try:
            lam = cho_solve(cho_factor(k.T @ k, check_finite=False), k.T @ u - r_f,
                            check_finite=False)
        except np.linalg.LinAlgError as exc:
            raise ActiveSetFailure("working set is linearly dependent") from exc
    x_new = xf.copy()
    x_new[free] = _solve_triangular(chol.T, u - k @ lam, lower=False)
    # stationarity on the fixed variables gives their bound multipliers:
    # H x + C'lam - nu_lb + nu_ub = 0
    grad = qp.h @ x_new + c.T @ lam
    me = qp.e.shape[0]
    rows = np.zeros(qp.g.shape[0])
    rows[ws.rows] = lam[me:]
    nu_lb = np.where(ws.at_lb, grad, 0.0)
    nu_ub = np.where(ws.at_ub, -grad, 0.0)
    return x_new, _Multipliers(eq=lam[:me], rows=rows, lb=nu_lb, ub=nu_ub)


def _solve_triangular(a: np.ndarray, b: np.ndarray, lower: bool) -> np.ndarray:
    """`scipy.linalg.solve_triangular(a, b, lower=lower, check_finite=False)` for float64
    data: the same LAPACK call (dtrtrs, on `a` or on its transpose as scipy picks by memory
    order), without the wrappers that cost ten times the 6x6 solve itself."""
    if b.size == 0:
        return np.empty_like(b, dtype=np.float64)
    if a.flags.f_contiguous:
        x, info = dtrtrs(a, b, lower=lower, trans=0)
    else:  # dtrtrs expects Fortran order: solve the transposed system, as scipy does
        x, info = dtrtrs(a.T, b, lower=not lower, trans=1)
    if info > 0:  # scipy's errors, so a caller sees what it saw before
        raise np.linalg.LinAlgError(f"singular matrix: resolution failed at diagonal {info-1}")
    if info < 0:
        raise ValueError(f"illegal value in {-info}-th argument of internal trtrs")
    return x


def _ratio_test(qp: QP, x: np.ndarray, p: np.ndarray, ws: WorkingSet
                ) -> tuple[float, tuple[str, int] | None]:
    """Longest step in [0, 1] along p that keeps every constraint off the working set
    satisfied, and the constraint that blocks it (None when the full step is feasible)."""
    alpha, block = 1.0, None
    scale = max(1.0, float(np.abs(p).max(initial=0.0)))
    eps = 1e-13 * scale  # directions this flat never reach a constraint: skip them
    if qp.g.shape[0]:
        gp = qp.g @ p
        cand = gp > eps
        if ws.rows:
            cand[ws.rows] = False
        if cand.any():
            idx = np.flatnonzero(cand)
            steps = np.maximum(qp.d[idx] - qp.g[idx] @ x, 0.0) / gp[idx]
            i = int(np.argmin(steps))
            if steps[i] < alpha:
                alpha, block = float(steps[i]), ("row", int(idx[i]))
    free = ~(ws.at_lb | ws.at_ub)
    for kind, mask, bound in (("lb", free & (p < -eps), qp.lb), ("ub", free & (p > eps), qp.ub)):
        if mask.any():
            idx = np.flatnonzero(mask)
            steps = np.maximum((bound[idx] - x[idx]) / p[idx], 0.0)
            i = int(np.argmin(steps))
            if steps[i] < alpha:
                alpha, block = float(steps[i]), (kind, int(idx[i]))
    return alpha, block


def _most_negative(m: _Multipliers) -> tuple[float, tuple[str, int]]:
    """The most negative inequality multiplier and its constraint (the one to drop)."""
    worst, where = 0.0, ("row", -1)
    for kind, values in (("row", m.rows), ("lb", m.lb), ("ub", m.ub)):
        if values.size:
            i = int(np.argmin(values))
            if values[i] < worst:
                worst, where = float(values[i]), (kind, i)
    return worst, where


def degenerate(qp: QP, x: np.ndarray, m: _Multipliers, tol: float = 1e-9) -> bool:
    """Whether a constraint holds with equality but carries a (near) zero multiplier.

    Without such a constraint (strict complementarity) a positive definite free block of H
    makes x the unique minimiser; with one, a direction that leaves that constraint could keep
    the objective flat when H is singular, so uniqueness needs H itself positive definite."""
    if qp.g.shape[0] and np.any((qp.d - qp.g @ x <= tol) & (m.rows <= tol)):
        return True
    with np.errstate(invalid="ignore"):
        at_lb = x - qp.lb <= tol
        at_ub = qp.ub - x <= tol
    return bool(np.any(at_lb & (m.lb <= tol)) or np.any(at_ub & (m.ub <= tol)))


def kkt_error(qp: QP, x: np.ndarray, m: _Multipliers) -> float:
    """Largest violation of the KKT conditions at (x, multipliers), recomputed from the data."""
    slack_rows = qp.d - qp.g @ x if qp.g.shape[0] else np.zeros(0)
    resid = qp.h @ x + qp.e.T @ m.eq + qp.g.T @ m.rows - m.lb + m.ub
    with np.errstate(invalid="ignore"):  # inf bounds times zero multipliers
        comp_lb = np.where(m.lb != 0.0, m.lb * (x - qp.lb), 0.0)
        comp_ub = np.where(m.ub != 0.0, m.ub * (qp.ub - x), 0.0)
    parts = [
        np.abs(qp.e @ x - qp.f),                              # equalities
        np.maximum(-slack_rows, 0.0),                         # G x <= d
        np.maximum(qp.lb - x, 0.0), np.maximum(x - qp.ub, 0.0),  # bounds
        np.maximum(-m.rows, 0.0), np.maximum(-m.lb, 0.0), np.maximum(-m.ub, 0.0),  # signs
        np.abs(resid),                                        # stationarity
        np.abs(m.rows * slack_rows), np.abs(comp_lb), np.abs(comp_ub),  # complementarity
    ]
    return max(float(v.max()) if v.size else 0.0 for v in parts)
