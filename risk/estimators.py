"""Per-bar estimates of expected returns and covariance from a window of bar returns.

Everything here works in per-bar units; `annualise_*` converts with `periods_per_year`, which
counts 365 days of bars because crypto trades 24/7. Estimators are plain numpy so the same numbers
feed riskfolio-lib, the solver cache and the statistics reported to the user.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

MeanMethod = Literal["hist", "ewma"]
CovMethod = Literal["sample", "ledoit", "ewma"]


@dataclass(frozen=True)
class EstimatorConfig:
    mean: MeanMethod = field(default="hist", metadata={
        "doc": "expected-return estimator: hist (arithmetic mean) or ewma (exponentially "
               "weighted mean, decay mean_lambda)", "choices": ("hist", "ewma")})
    cov: CovMethod = field(default="ledoit", metadata={
        "doc": "covariance estimator: sample, ledoit (Ledoit-Wolf shrinkage to scaled identity) "
               "or ewma (RiskMetrics, decay cov_lambda)", "choices": ("sample", "ledoit", "ewma")})
    mean_lambda: float = field(default=0.97, metadata={
        "doc": "EWMA decay of the mean estimator: weight of bar t-1 relative to bar t",
        "min": 0.0, "max": 1.0, "exclusive_min": True, "exclusive_max": True})
    cov_lambda: float = field(default=0.94, metadata={
        "doc": "RiskMetrics EWMA decay of the covariance (0.94 is RiskMetrics' daily value)",
        "min": 0.0, "max": 1.0, "exclusive_min": True, "exclusive_max": True})
    repair_covariance: bool = field(default=False, metadata={
        "doc": "clip negative eigenvalues of a non-PSD covariance instead of refusing to solve"})


@dataclass(frozen=True)
class Estimates:
    """Per-bar mean vector and covariance matrix, in the column order of the returns."""

    mu: np.ndarray
    cov: np.ndarray
    repaired: bool = False


def ewma_weights(n: int, lam: float) -> np.ndarray:
    """Weights lam**(n-1-t), normalised: the newest bar weighs most."""
    w = lam ** np.arange(n - 1, -1, -1, dtype=float)
    return w / w.sum()


def mean_hist(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=0)


def mean_ewma(x: np.ndarray, lam: float) -> np.ndarray:
    return ewma_weights(x.shape[0], lam) @ x


def cov_sample(x: np.ndarray) -> np.ndarray:
    return np.atleast_2d(np.cov(x, rowvar=False, ddof=1))


def cov_ledoit(x: np.ndarray) -> np.ndarray:
    """Ledoit & Wolf (2004) shrinkage of the (ML) sample covariance towards mu*I, with the
    optimal intensity; the same estimator riskfolio-lib's method_cov='ledoit' uses."""
    t, _ = x.shape
    xc = x - x.mean(axis=0)
    s = xc.T @ xc / t
    m = np.trace(s) / s.shape[0]
    d2 = float(np.sum((s - m * np.eye(s.shape[0])) ** 2))
    # b2: how noisy s is, sum_t ||x_t x_t' - s||_F^2 / t^2, expanded to avoid n x n per bar
    b2 = (float(np.sum(np.sum(xc**2, axis=1) ** 2)) - t * float(np.sum(s**2))) / t**2
    shrink = 0.0 if d2 == 0 else min(b2, d2) / d2
    return shrink * m * np.eye(s.shape[0]) + (1.0 - shrink) * s


def cov_ewma(x: np.ndarray, lam: float) -> np.ndarray:
    """RiskMetrics: sigma_t = lam*sigma_{t-1} + (1-lam) r_t r_t', zero mean, over the window
    (finite-window weights renormalised to sum to one)."""
    w = ewma_weights(x.shape[0], lam)
    return (x * w[:, None]).T @ x


def estimate(returns: pd.DataFrame | np.ndarray, cfg: EstimatorConfig) -> Estimates:
    x = np.asarray(returns, dtype=float)
    mu = mean_ewma(x, cfg.mean_lambda) if cfg.mean == "ewma" else mean_hist(x)
    if cfg.cov == "ledoit":
        cov = cov_ledoit(x)
    elif cfg.cov == "ewma":
        cov = cov_ewma(x, cfg.cov_lambda)
    else:
        cov = cov_sample(x)
    cov = (cov + cov.T) / 2.0
    return Estimates(mu=mu, cov=cov)


def min_eigenvalue(cov: np.ndarray) -> float:
    return float(np.linalg.eigvalsh(cov)[0])


def is_psd(cov: np.ndarray, rel_tol: float = 1e-10) -> bool:
    """PSD up to rounding: the smallest eigenvalue is not below -rel_tol * the largest."""
    eig = np.linalg.eigvalsh(cov)
    return bool(eig[0] >= -rel_tol * max(abs(eig[-1]), 1e-300))


def nearest_psd(cov: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Eigenvalue clipping: the closest PSD matrix in Frobenius norm (floor=0)."""
    eig, vec = np.linalg.eigh((cov + cov.T) / 2.0)
    out = (vec * np.maximum(eig, floor)) @ vec.T
    return (out + out.T) / 2.0


def cov_factor(cov: np.ndarray) -> np.ndarray:
    """F with F'F = cov: Cholesky when positive definite, else a symmetric square root."""
    try:
        return np.linalg.cholesky(cov).T
    except np.linalg.LinAlgError:
        eig, vec = np.linalg.eigh(cov)
        return (vec * np.sqrt(np.maximum(eig, 0.0))) @ vec.T


def annualise_mu(mu: np.ndarray | float, ppy: float) -> np.ndarray | float:
    return mu * ppy


def annualise_vol(vol: float, ppy: float) -> float:
    return vol * math.sqrt(ppy)
