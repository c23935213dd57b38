"""Position-sizing overlays on solved weights (`[allocation.sizing]`), applied by
`risk.allocation.solve` after the method and the volatility target.

Each overlay is a per-asset cap on |weight|; it only ever shrinks a weight towards zero, and what
it takes away stays in cash (it is not handed to other assets, which would undo their caps):

- `fixed_fractional`: a stop `stop_distance` (fraction of price) away from entry loses at most
  `risk_fraction` (R) of equity: |w| * stop_distance <= R, so |w| <= R / stop_distance.
- `kelly`: continuous-time Kelly, |w| <= kelly_fraction * mu / sigma^2, with mu the expected
  excess return per bar in the weight's direction (a long needs mu > 0, a short mu < 0; no edge
  caps the weight at 0) and sigma^2 the asset's variance per bar; the ratio does not depend on
  the period as long as both use the same one.

Both are also held to `cap`. `none` leaves the weights alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from risk.sizing import SizingConfig, fixed_fractional, kelly_continuous


def sizing_limits(weights: np.ndarray, mu: np.ndarray, var: np.ndarray, cfg: SizingConfig
                  ) -> np.ndarray:
    """Largest |weight| per asset the overlay allows (inf when mode = none)."""
    n = len(weights)
    if cfg.mode == "none":
        return np.full(n, np.inf)
    if cfg.mode == "fixed_fractional":
        # fixed_fractional on a unit entry: R / stop_distance, held to the cap
        limit = fixed_fractional(1.0, cfg.risk_fraction, 1.0, 1.0 - cfg.stop_distance, cfg.cap)
        return np.full(n, limit)
    out = np.empty(n)
    for i in range(n):
        edge = mu[i] if weights[i] >= 0 else -mu[i]  # the return the weight's side earns
        out[i] = kelly_continuous(float(edge), float(var[i]), cfg.kelly_fraction, cfg.cap)
    return out


def apply_sizing(weights: np.ndarray, mu: np.ndarray, var: np.ndarray, cfg: SizingConfig,
                 assets: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(weights with |w_i| <= limit_i, notes naming each asset that was cut)."""
    w = np.asarray(weights, dtype=float)
    limits = sizing_limits(w, np.asarray(mu, dtype=float), np.asarray(var, dtype=float), cfg)
    sized = np.sign(w) * np.minimum(np.abs(w), limits)
    notes = [f"sizing {cfg.mode}: {a} {w[i]:.4f} -> {sized[i]:.4f} (limit {limits[i]:.4f})"
             for i, a in enumerate(assets) if abs(sized[i] - w[i]) > 1e-12]
    return sized, notes
