"""The pure policy mathematics: drift rules, calendar and cooldown, the re-solve schedule, the
trade policies (target, band edge, partial) and the cost test."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from daemon.config import load_config, parse_config
from daemon.rebalancer import RebalanceConfig
from daemon.settings import ConfigError
from risk import rebalance_policy as policy
from risk import triggers
from risk.resolve_schedule import ScheduleConfig, realised_vol, resolve_reason
from risk.triggers import TriggerConfig

TARGETS = {"A": 0.40, "B": 0.30, "C": 0.20, "D": 0.10}


def check(drifts: dict[str, float], rules: list[str], te: float | None = None,
          **kw: float) -> triggers.TriggerCheck:
    cfg = TriggerConfig(rules=rules, **kw)  # type: ignore[arg-type]
    bands = triggers.asset_bands(TARGETS, rules, 0.05, cfg.relative_band)
    return triggers.check_drift(drifts, bands, cfg, te)


# -- drift rules ---------------------------------------------------------------------------

def test_absolute_band_fires_only_outside_it() -> None:
    assert not check({"A": 0.049, "B": -0.049}, ["absolute"]).fired
    hit = check({"A": 0.051, "B": -0.051}, ["absolute"])
    assert hit.fired and set(hit.breaches) == {"A", "B"}
    assert "band: A" in hit.reasons[0] or "band: B" in hit.reasons[0]


def test_relative_band_scales_with_the_target() -> None:
    # 25% of 0.10 is 0.025: a 3 pp drift on D breaches, the same on A (band 0.10) does not
    assert check({"D": 0.03}, ["relative"]).breaches.keys() == {"D"}
    assert not check({"A": 0.03}, ["relative"]).fired


def test_five_twenty_five_is_absolute_above_20pct_and_relative_below() -> None:
    bands = triggers.asset_bands(TARGETS, ["five_twenty_five"], 0.05, 0.25)
    assert bands == pytest.approx({"A": 0.05, "B": 0.05, "C": 0.05, "D": 0.025})
    assert check({"A": 0.06}, ["five_twenty_five"]).fired  # absolute: 6 pp > 5 pp
    assert not check({"A": 0.045}, ["five_twenty_five"]).fired  # < 5 pp although > 10%
    assert check({"D": 0.03}, ["five_twenty_five"]).fired  # relative: 30% > 25%


def test_combined_rules_take_the_tightest_band() -> None:
    bands = triggers.asset_bands(TARGETS, ["absolute", "relative"], 0.05, 0.25)
    assert bands["D"] == pytest.approx(0.025) and bands["A"] == pytest.approx(0.05)
    assert math.isinf(triggers.asset_bands(TARGETS, ["portfolio"], 0.05, 0.25)["A"])


def test_zero_target_holdings_breach_a_relative_band_but_not_float_noise() -> None:
    bands = triggers.asset_bands({"Z": 0.0}, ["relative"], 0.05, 0.25)
    cfg = TriggerConfig(rules=["relative"])
    assert triggers.check_drift({"Z": 0.001}, bands, cfg).fired
    assert not triggers.check_drift({"Z": 1e-15}, bands, cfg).fired


def test_portfolio_rule_on_sum_of_absolute_drift() -> None:
    drifts = {"A": 0.03, "B": -0.03, "C": 0.03, "D": -0.03}  # no asset past 5 pp
    assert not check(drifts, ["absolute"]).fired
    hit = check(drifts, ["absolute", "portfolio"], portfolio_threshold=0.10)
    assert hit.fired and hit.sum_abs_drift == pytest.approx(0.12)
    assert hit.reasons[0].startswith("portfolio: sum_abs 0.1200")


def test_tracking_error_is_annualised_drift_volatility() -> None:
    cov = np.diag([0.02**2, 0.03**2])  # per-bar variances
    te = triggers.tracking_error({"A": 0.1, "B": -0.1}, ["A", "B"], cov, 365.0)
    assert te == pytest.approx(math.sqrt((0.1**2 * 0.02**2 + 0.1**2 * 0.03**2) * 365.0))
    # perfectly correlated equal-vol assets: swapping one for the other has no tracking error
    same = np.full((2, 2), 0.02**2)
    assert triggers.tracking_error({"A": 0.1, "B": -0.1}, ["A", "B"], same, 365.0) == \
        pytest.approx(0.0, abs=1e-12)


def test_portfolio_rule_on_tracking_error_needs_a_covariance() -> None:
    kw = {"portfolio_measure": "tracking_error", "portfolio_threshold": 0.02}
    assert check({"A": 0.01}, ["portfolio"], te=0.03, **kw).fired  # type: ignore[arg-type]
    assert not check({"A": 0.01}, ["portfolio"], te=0.01, **kw).fired  # type: ignore[arg-type]
    assert not check({"A": 0.01}, ["portfolio"], te=None, **kw).fired  # type: ignore[arg-type]


def test_no_rules_never_fire() -> None:
    assert not check({"A": 0.5, "B": -0.5}, []).fired


def test_calendar_needs_time_and_some_drift() -> None:
    cfg = TriggerConfig(calendar_days=30.0, calendar_min_drift=0.001)
    assert triggers.calendar_due(30.0, 0.01, cfg)
    assert not triggers.calendar_due(29.9, 0.01, cfg)
    assert not triggers.calendar_due(45.0, 0.0005, cfg)  # nothing drifted
    assert not triggers.calendar_due(1e9, 1.0, TriggerConfig())  # off by default


def test_cooldown_counts_bars_since_the_last_rebalance() -> None:
    cfg = TriggerConfig(cooldown_bars=5)
    assert triggers.cooldown_left(None, cfg) == 0
    assert triggers.cooldown_left(2, cfg) == 3
    assert triggers.cooldown_left(5, cfg) == 0


def test_trigger_config_is_validated_with_its_dotted_key() -> None:
    with pytest.raises(ConfigError, match=r"rebalance\.trigger\.rules.*must be one of"):
        parse_config('[rebalance.trigger]\nrules = ["absolute", "wobbly"]\n')
    with pytest.raises(ConfigError, match=r"rebalance\.trigger\.rules.*repeat"):
        parse_config('[rebalance.trigger]\nrules = ["absolute", "absolute"]\n')
    with pytest.raises(ConfigError, match=r"rebalance\.policy\.mode"):
        parse_config('[rebalance.policy]\nmode = "sideways"\n')
    cfg = parse_config('[rebalance]\nband = 0.04\n[rebalance.trigger]\nrules = ["five_twenty_five",'
                       ' "portfolio"]\ncooldown_bars = 3\n[rebalance.policy]\nmode = "edge"\n')
    assert cfg.rebalance.band == 0.04 and cfg.rebalance.trigger.cooldown_bars == 3
    assert cfg.rebalance.policy.mode == "edge"


def test_shipped_config_shows_every_rebalance_key_with_its_default() -> None:
    path = Path(__file__).resolve().parent.parent / "config.toml"
    assert load_config(path).rebalance == RebalanceConfig()
    table = tomllib.loads(path.read_text())["rebalance"]
    for f in dataclasses.fields(RebalanceConfig):
        assert f.name in table, f"rebalance.{f.name} missing from config.toml"
        if dataclasses.is_dataclass(f.type) or isinstance(table[f.name], dict):
            sub = table[f.name]
            nested = type(getattr(RebalanceConfig(), f.name))
            assert set(sub) == {g.name for g in dataclasses.fields(nested)}, f.name


# -- re-solve schedule -----------------------------------------------------------------------

def test_schedule_every_n_bars_and_window_moved() -> None:
    cfg = ScheduleConfig(every_bars=10)
    assert resolve_reason(cfg, None, None, False) is None  # nothing attempted yet
    assert resolve_reason(cfg, 9, 9, False) is None
    assert "10 bars" in (resolve_reason(cfg, 10, 10, False) or "")
    moved = ScheduleConfig(every_bars=0, window_moved_bars=5)
    assert resolve_reason(moved, 4, 4, False) is None
    assert "window moved 5" in (resolve_reason(moved, 5, 5, False) or "")


def test_failed_solves_are_retried_after_a_pause() -> None:
    cfg = ScheduleConfig(every_bars=1, retry_after_bars=10)
    assert resolve_reason(cfg, 3, 50, True) is None
    assert resolve_reason(cfg, 10, 50, True) is not None


def test_regime_change_on_realised_volatility() -> None:
    cfg = ScheduleConfig(every_bars=0, vol_change=0.5)
    assert resolve_reason(cfg, 3, 3, False, vol_now=0.70, vol_at_solve=0.50) is None  # +40%
    why = resolve_reason(cfg, 3, 3, False, vol_now=0.80, vol_at_solve=0.50)  # +60%
    assert why is not None and why.startswith("regime") and "+60.0%" in why
    assert resolve_reason(cfg, 3, 3, False, vol_now=0.20, vol_at_solve=0.50) is not None
    assert resolve_reason(cfg, 3, 3, False, vol_now=math.nan, vol_at_solve=0.5) is None


def test_realised_vol_of_a_fixed_weight_portfolio() -> None:
    r = np.array([[0.01, 0.03], [-0.01, -0.01], [0.02, 0.0]])
    w = np.array([0.5, 0.5])
    expected = np.std(r @ w, ddof=1) * math.sqrt(365)
    assert realised_vol(r, w, 365.0) == pytest.approx(expected)
    assert math.isnan(realised_vol(r[:1], w, 365.0))


# -- trade policies --------------------------------------------------------------------------

def test_to_target_sells_what_the_target_does_not_hold() -> None:
    out = policy.to_target({"A": 0.5, "B": 0.5}, {"A": 0.6, "B": 0.3, "Z": 0.1})
    assert out == {"A": 0.5, "B": 0.5, "Z": 0.0}


def test_partial_moves_a_fraction_of_the_way() -> None:
    out = policy.partial({"A": 0.6, "B": 0.4}, {"A": 0.5, "B": 0.5}, 0.25)
    assert out == pytest.approx({"A": 0.575, "B": 0.425})


def test_band_edge_lands_breaches_on_the_edge_and_keeps_the_budget() -> None:
    targets = {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25}
    current = {"A": 0.33, "B": 0.23, "C": 0.22, "D": 0.22}  # A is 8 pp over
    bands = dict.fromkeys(targets, 0.05)
    out = policy.to_band_edge(current, targets, bands)
    assert out["A"] == pytest.approx(0.30)  # exactly on the edge, not back to target
    assert sum(out.values()) == pytest.approx(1.0)
    for s in targets:
        assert abs(out[s] - targets[s]) <= 0.05 + 1e-12
    # the 3 pp sold go to the others by their distance below target (2, 3, 3 pp of 8)
    assert out["B"] == pytest.approx(0.23 + 0.03 * 2 / 8)
    assert out["C"] == pytest.approx(0.22 + 0.03 * 3 / 8) == pytest.approx(out["D"])
    turnover = sum(abs(out[s] - current[s]) for s in targets)
    assert turnover == pytest.approx(0.06)  # vs 0.16 going all the way to target


def test_band_edge_never_pushes_an_asset_away_from_its_target() -> None:
    targets = dict.fromkeys("ABCDE", 0.2)
    current = {"A": 0.12, "B": 0.24, "C": 0.22, "D": 0.21, "E": 0.16}  # A 8 pp under; cash 5%
    out = policy.to_band_edge(current, targets, dict.fromkeys(targets, 0.05))
    assert sum(out.values()) == pytest.approx(1.0)  # cash back to its (zero) target
    for s in targets:
        assert abs(out[s] - 0.2) <= abs(current[s] - 0.2) + 1e-12  # nobody drifts further
        assert abs(out[s] - 0.2) <= 0.05 + 1e-12
    assert out["B"] == current["B"] and out["C"] == current["C"]  # over target: untouched
    # A is lifted to its edge (0.15, 3 pp), then A and E share the 2 pp of cash still spare,
    # by shortfall (5 and 4 pp)
    assert out["A"] == pytest.approx(0.15 + 0.02 * 0.05 / 0.09)
    assert out["E"] == pytest.approx(0.16 + 0.02 * 0.04 / 0.09)


def test_band_edge_leaves_a_portfolio_inside_its_bands_alone() -> None:
    targets = {"A": 0.5, "B": 0.5}
    current = {"A": 0.53, "B": 0.47}
    assert policy.to_band_edge(current, targets, {"A": 0.05, "B": 0.05}) == \
        pytest.approx(current)


def test_band_edge_sells_untargeted_holdings_and_stays_long_only() -> None:
    targets = {"A": 0.02, "B": 0.98}
    current = {"A": 0.20, "B": 0.70, "Z": 0.10}
    out = policy.to_band_edge(current, targets, {"A": 0.05, "B": 0.05, "Z": 0.05})
    assert out["Z"] == 0.0 and out["A"] == pytest.approx(0.07)
    assert min(out.values()) >= 0.0 and sum(out.values()) == pytest.approx(1.0)
    assert out["B"] == pytest.approx(0.93)


def test_shrink_to_threshold_puts_the_portfolio_measure_on_its_edge() -> None:
    targets = {"A": 0.5, "B": 0.5}
    current = {"A": 0.6, "B": 0.4}

    def measure(d: dict[str, float]) -> float:  # type: ignore[type-arg]
        return sum(abs(x) for x in d.values())

    out = policy.shrink_to_threshold(current, targets, measure, 0.08)
    assert out == pytest.approx({"A": 0.54, "B": 0.46})
    assert policy.shrink_to_threshold(current, targets, measure, 0.5) == pytest.approx(current)


def test_cost_is_fees_and_slippage_over_nav() -> None:
    cost = policy.estimated_cost([1_000.0, -3_000.0], 100_000.0, 0.001, 5.0)
    assert cost == pytest.approx(4_000.0 * 0.0015 / 100_000.0)  # 0.6 bps of NAV


def test_cost_test_compares_cost_with_a_share_of_the_tracking_error_removed() -> None:
    # removes 100 bps of annualised TE (150 -> 50); share 0.1 allows 10 bps of cost
    assert policy.cost_test(0.0009, 0.015, 0.005, 0.1).passed
    verdict = policy.cost_test(0.0011, 0.015, 0.005, 0.1)
    assert not verdict.passed and verdict.te_removed == pytest.approx(0.01)
    assert "11.00 bps" in verdict.reason and "100.00 bps" in verdict.reason
    assert policy.cost_test(1.0, 0.015, 0.005, 0.0).passed  # off
    assert policy.cost_test(1.0, None, None, 0.1).passed  # no covariance: cannot judge
    assert not policy.cost_test(0.0001, 0.01, 0.01, 0.1).passed  # removes nothing
