"""The `[risk]` configuration (risk/limits.py): documented, conservative, finite defaults; the
shipped config.toml shows every key at its default; bad values name the key."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

import pytest

from daemon.config import load_config, parse_config
from daemon.settings import ConfigError
from risk.limits import RiskLimits, StateLimits, ThrottleLimits
from risk.var import VarConfig

ROOT = Path(__file__).resolve().parent.parent
TABLES = {"risk": RiskLimits, "risk.throttle": ThrottleLimits, "risk.state": StateLimits,
          "risk.var": VarConfig}


@pytest.mark.parametrize("cls", [RiskLimits, ThrottleLimits, StateLimits])
def test_every_limit_is_documented_and_finite(cls: type) -> None:
    obj = cls()
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            continue
        assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"
        if isinstance(value, float):
            assert math.isfinite(value), f"{f.name} defaults to {value}: no 'unlimited'"


def test_config_toml_shows_every_risk_key_at_its_default() -> None:
    data = tomllib.loads((ROOT / "config.toml").read_text())
    for dotted, cls in TABLES.items():
        table = data
        for part in dotted.split("."):
            table = table[part]
        names = {f.name for f in dataclasses.fields(cls)}
        nested = {n for n in names if dataclasses.is_dataclass(getattr(cls(), n))}
        assert set(table) - nested == names - nested, dotted
    assert load_config(ROOT / "config.toml").risk == RiskLimits()


@pytest.mark.parametrize(("text", "key", "allowed"), [
    ("[risk.throttle]\norders_per_second = 0\n", "risk.throttle.orders_per_second", ">= 1"),
    ("[risk.state]\ndaily_loss_action = \"PANIC\"\n", "risk.state.daily_loss_action",
     "must be one of"),
    ("[risk.state]\nmax_drawdown_fraction = 0\n", "risk.state.max_drawdown_fraction", "> 0.0"),
    ("[risk]\nprice_collar_sell_pct = 150\n", "risk.price_collar_sell_pct", "<= 100.0"),
    ("[risk]\nmax_order_qty = { \"BTC/USDT\" = -1 }\n", "risk.max_order_qty", "> 0.0"),
    ("[risk]\ngroup_limits = { majors = 0.5 }\n", "risk.group_limits.majors", "no such group"),
    ("[risk]\ngroups = { majors = [] }\n", "risk.groups.majors", "at least one"),
    ("[risk]\ngroups = { majors = [\"BTC/USD\"] }\n", "risk.groups.majors", "market.symbols"),
    ("[risk]\nmax_order_qty = { \"DOGE/USDT\" = 5.0 }\n", "risk.max_order_qty.DOGE/USDT",
     "market.symbols"),
    ("[risk.var]\nmodel = \"garch\"\n", "risk.var.model", "must be one of"),
    ("[risk]\nprice_collar_pct = 5.0\n", "risk.price_collar_pct", "unknown key"),
    ("[risk]\nmax_order_notional = 5000.0\n", "rebalance.max_child_notional",
     "risk.max_order_notional"),
])
def test_bad_risk_values_name_the_key(text: str, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert err.value.key == key
    assert allowed in str(err.value)


def test_nested_tables_and_groups_load() -> None:
    cfg = parse_config("""
[risk]
groups = { majors = ["BTC/USDT", "ETH/USDT"] }
group_limits = { majors = 0.6 }
max_order_qty = { "BTC/USDT" = 0.5 }
[risk.var]
model = "historical"
[risk.state]
drawdown_action = "REDUCING"
[risk.throttle]
orders_per_second = 5
""")
    risk = cfg.risk
    assert risk.groups == {"majors": ["BTC/USDT", "ETH/USDT"]}
    assert risk.group_cap("majors") == 0.6 and risk.group_cap("other") == 0.8
    assert risk.max_order_qty == {"BTC/USDT": 0.5}
    assert risk.var.model == "historical" and risk.state.drawdown_action == "REDUCING"
    assert risk.throttle.orders_per_second == 5
    assert risk.throttle.orders_per_minute == ThrottleLimits().orders_per_minute
