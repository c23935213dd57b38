"""Pre-trade risk limits: the `[risk]` table of config.toml.

A limit left out of the config takes the default documented here, and every default is a
finite, conservative number: there is no "unlimited".
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RiskLimits:
    max_order_notional: float = field(default=25_000.0, metadata={
        "doc": "largest notional of a single order, quote currency",
        "min": 0.0, "exclusive_min": True})
    price_collar_pct: float = field(default=5.0, metadata={
        "doc": "fat-finger collar: an order's price may be at most this far from the last "
               "close, percent", "min": 0.0, "exclusive_min": True, "max": 100.0})
