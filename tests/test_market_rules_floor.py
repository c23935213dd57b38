"""`floor_qty` cuts the repr for power-of-ten steps instead of running the Decimal rule: the
same floats (sign of zero included) as the plain rule, on values of every size and sign."""

from __future__ import annotations

import math
import random
from decimal import ROUND_DOWN, InvalidOperation

import pytest

from risk.market_rules import MarketRules, _floor_on_decimal_grid, _quantise_decimal

STEPS = [1e-8, 1e-6, 1e-5, 0.0001, 0.001, 0.01, 0.1, 1.0, 0.5, 0.25, 0.002, 10.0, 100.0, 5e-5]


def _values(rng: random.Random) -> list[float]:
    out = [0.0, -0.0, 1.0, -1.0, 0.1 + 0.2, 1e-9, -1e-9, 123456.789, 9.999999999999999,
           1e15 + 0.3, 1e16, 1e22, 2.5e-5, 0.30000000000000004, 7.0000000000000001e-3]
    for _ in range(3000):
        mag = 10.0 ** rng.uniform(-10, 17)
        x = rng.choice([-1, 1]) * mag * rng.random()
        out.append(x)
        out.append(round(x, rng.randint(0, 10)))  # values already on a grid, or nearly
    return out


def test_floor_is_the_plain_decimal_rule() -> None:
    rng = random.Random(5)
    taken = 0
    for step in STEPS:
        for value in _values(rng):
            rules = MarketRules("X/Y", "X", "Y", amount_step=step, price_tick=0.01)
            try:
                want = _quantise_decimal(value, step, ROUND_DOWN)
            except InvalidOperation:  # more digits than Decimal's precision: still refused
                with pytest.raises(InvalidOperation):
                    rules.floor_qty(value)
                continue
            got = rules.floor_qty(value)
            assert got == want and math.copysign(1, got) == math.copysign(1, want), \
                (value, step)
            taken += _floor_on_decimal_grid(value, step) is not None
    assert taken > 20_000  # the shortcut decided most of them


@pytest.mark.parametrize("step", [0.5, 10.0, 0.002])
def test_steps_that_are_not_powers_of_ten_take_the_rule(step: float) -> None:
    assert _floor_on_decimal_grid(1.2345, step) is None


def test_exponent_reprs_take_the_rule() -> None:
    assert _floor_on_decimal_grid(1e-05, 1e-8) is None
    assert _floor_on_decimal_grid(1e16, 1.0) is None
