"""The configurations the replay equivalence tests run: `config.toml` as shipped, or with its
daily-loss and drawdown limits out of reach, so that a window trades throughout instead of
halting (bench/bench_replay.py's `relax_loss_limits` is the same for the benchmark)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from daemon.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent


def replay_config(limits: str) -> Config:
    """`limits`: "config.toml" (as shipped) or "relaxed"."""
    cfg = load_config(ROOT / "config.toml")
    if limits == "config.toml":
        return cfg
    if limits != "relaxed":
        raise ValueError(f"limits: {limits!r}")
    state = dataclasses.replace(cfg.risk.state, max_daily_loss_fraction=1.0,
                                max_drawdown_fraction=1.0)
    return dataclasses.replace(cfg, risk=dataclasses.replace(cfg.risk, state=state))
