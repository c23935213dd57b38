"""The active-set solver skips scipy's per-call finite checks; non-finite data are refused
once, up front, so they still fall through to the next engine instead of an answer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from risk import active_set
from risk.active_set import QP, ActiveSetFailure, WorkingSet


def _qp() -> QP:
    return QP(h=np.array([[2.0, 0.5], [0.5, 1.0]]), e=np.ones((1, 2)), f=np.array([1.0]),
              g=np.array([[1.0, 0.0]]), d=np.array([0.6]), lb=np.zeros(2), ub=np.ones(2))


def test_a_finite_problem_solves() -> None:
    res = active_set.solve(_qp(), np.array([0.5, 0.5]), WorkingSet.empty(2))
    assert res.x.sum() == pytest.approx(1.0)
    assert res.kkt_error <= active_set.KKT_TOL


@pytest.mark.parametrize("name", ["h", "e", "f", "g", "d", "lb", "ub", "x0"])
def test_non_finite_data_are_refused(name: str) -> None:
    qp = _qp()
    x0 = np.array([0.5, 0.5])
    if name == "x0":
        x0[0] = np.nan
    else:
        bad = getattr(qp, name).copy()
        bad.flat[0] = np.nan
        qp = dataclasses.replace(qp, **{name: bad})
    with pytest.raises(ActiveSetFailure):
        active_set.solve(qp, x0, WorkingSet.empty(2))


def test_infinite_bounds_are_allowed() -> None:
    qp = dataclasses.replace(_qp(), ub=np.full(2, np.inf))
    res = active_set.solve(qp, np.array([0.5, 0.5]), WorkingSet.empty(2))
    assert res.x.sum() == pytest.approx(1.0)


def test_triangular_solves_are_scipys() -> None:
    from scipy.linalg import solve_triangular

    rng = np.random.default_rng(1)
    for n in (1, 2, 5, 9):
        m = rng.normal(size=(n, n))
        chol = np.linalg.cholesky(m @ m.T + n * np.eye(n))
        for b in (rng.normal(size=n), rng.normal(size=(n, 3)), np.zeros((n, 0))):
            for a, lower in ((chol, True), (chol.T, False)):
                want = solve_triangular(a, b, lower=lower)
                got = active_set._solve_triangular(a, b, lower)
                assert got.shape == want.shape and got.dtype == want.dtype
                np.testing.assert_array_equal(got, want)
