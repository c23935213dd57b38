"""[allocation] loads through the daemon's config loader with its documented defaults."""

from __future__ import annotations

import dataclasses
import pickle
import tomllib
import typing

import pytest

from daemon.settings import ConfigError, load
from risk.allocation import AllocationConfig

TOML = """
method = "risk_budgeting"
risk_budgets = {"BTC/USDT" = 2.0}
[estimators]
cov = "ewma"
cov_lambda = 0.97
[constraints]
groups = {smart_contract = ["ETH/USDT", "SOL/USDT"]}
group_max = {smart_contract = 0.6}
cash_buffer = 0.05
max_turnover = 0.5
[vol_target]
enabled = true
target_vol = 0.4
"""


def test_loads_nested_tables():
    c = load(AllocationConfig, tomllib.loads(TOML), "allocation")
    assert c.method == "risk_budgeting" and c.estimators.cov_lambda == 0.97
    assert c.constraints.groups == {"smart_contract": ["ETH/USDT", "SOL/USDT"]}
    assert c.vol_target.target_vol == 0.4
    assert pickle.loads(pickle.dumps(c)) == c


def test_every_field_documented_with_default():
    seen = []

    def walk(cls):
        seen.append(cls.__name__)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"
            assert f.default is not dataclasses.MISSING or \
                f.default_factory is not dataclasses.MISSING
            if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name])
    walk(AllocationConfig)
    assert len(seen) == 6
    load(AllocationConfig, {}, "allocation")  # defaults pass every check


@pytest.mark.parametrize("data,key", [
    ({"method": "magic"}, "allocation.method"),
    ({"method": "target_risk"}, "allocation.target_risk"),
    ({"min_weight": 0.5, "max_weight": 0.4}, "allocation.min_weight"),
    ({"vol_target": {"cap": 2.0}}, "allocation.vol_target.cap"),
    ({"constraints": {"group_max": {"x": 0.5}}}, "allocation.constraints.group_max"),
    ({"constraints": {"max_short": 0.1}}, "allocation.constraints.max_short"),
    ({"on_short_history": "panic"}, "allocation.on_short_history"),
])
def test_rejects_bad_values(data, key):
    with pytest.raises(ConfigError) as exc:
        load(AllocationConfig, data, "allocation")
    assert exc.value.key == key
