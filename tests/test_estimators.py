from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from risk import estimators as est
from risk.allocation import periods_per_year


@pytest.fixture()
def x() -> np.ndarray:
    return np.random.default_rng(7).normal(0.001, 0.03, size=(200, 5))


def test_periods_per_year_counts_365_days():
    assert periods_per_year(86_400) == 365.0
    assert periods_per_year(3_600) == 365.0 * 24


def test_hist_mean_and_sample_cov(x):
    assert np.allclose(est.mean_hist(x), x.mean(axis=0))
    assert np.allclose(est.cov_sample(x), pd.DataFrame(x).cov().to_numpy())


def test_ewma_mean_weights_newest_most(x):
    w = est.ewma_weights(4, 0.5)
    assert np.allclose(w, np.array([1, 2, 4, 8]) / 15)
    assert np.allclose(est.mean_ewma(x, 0.9), est.ewma_weights(200, 0.9) @ x)


def test_ewma_cov_is_riskmetrics_recursion(x):
    lam, t = 0.94, x.shape[0]
    s = np.zeros((5, 5))
    for r in x:
        s = lam * s + (1 - lam) * np.outer(r, r)
    # seeded at zero the recursion's weights sum to 1 - lam^t; ours renormalise the window
    assert np.allclose(est.cov_ewma(x, lam), s / (1 - lam**t), rtol=1e-12)


def test_ledoit_wolf_matches_sklearn(x):
    from sklearn.covariance import ledoit_wolf

    assert np.allclose(est.cov_ledoit(x), ledoit_wolf(x)[0], rtol=1e-10, atol=1e-14)


def test_estimate_dispatch_and_symmetry(x):
    for cov in ("sample", "ledoit", "ewma"):
        e = est.estimate(x, est.EstimatorConfig(mean="ewma", cov=cov))
        assert np.array_equal(e.cov, e.cov.T) and est.is_psd(e.cov)
        assert e.mu.shape == (5,)


def test_psd_check_and_repair():
    bad = np.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3 and -1
    assert not est.is_psd(bad)
    fixed = est.nearest_psd(bad)
    assert est.is_psd(fixed) and np.allclose(np.linalg.eigvalsh(fixed), [0.0, 3.0])


def test_cov_factor_reproduces_cov(x):
    c = est.cov_sample(x)
    assert np.allclose(est.cov_factor(c).T @ est.cov_factor(c), c)
    singular = np.ones((3, 3))
    assert np.allclose(est.cov_factor(singular).T @ est.cov_factor(singular), singular)


def test_annualise():
    assert est.annualise_vol(0.01, 365.0) == pytest.approx(0.01 * math.sqrt(365))
    assert est.annualise_mu(0.001, 365.0) == pytest.approx(0.365)
