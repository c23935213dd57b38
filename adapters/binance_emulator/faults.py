"""Seeded fault injection: every decision comes from one `random.Random(seed)`, so a failing
run replays the same faults in the same order (given the same request sequence).

Probabilities apply per HTTP request or per outgoing websocket message; all default to 0.
`FaultInjector.counts` records every fault actually injected, by kind.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class FaultConfig:
    http_429: float = 0.0          # 429 + Retry-After + {"code": -1003}
    http_418: float = 0.0          # 418 IP ban + Retry-After
    http_5xx: float = 0.0          # 500/502/503 with a proxy's HTML body (no JSON)
    http_timeout: float = 0.0      # hold the request `timeout_hold_s`, never process it
    response_lost: float = 0.0     # POST/DELETE /order: processed, then connection dropped or 5xx
    ws_disconnect: float = 0.0     # abort the TCP connection instead of sending a message
    ws_stall: float = 0.0          # connection stays open but sends nothing for `ws_stall_s`
    ws_duplicate: float = 0.0      # send a message twice
    ws_reorder: float = 0.0        # hold a message back and send it after the next one
    retry_after_s: int = 1
    timeout_hold_s: float = 30.0   # longer than ccxt's default 10 s timeout
    ws_stall_s: float = 60.0
    ws_reorder_flush_s: float = 1.0  # a held message goes out alone if nothing follows it
    # Only requests whose path starts with one of these get HTTP faults; None = every path.
    http_paths: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not f.name.endswith("_s") and not 0 <= value <= 1:
                raise ValueError(f"FaultConfig.{f.name} = {value}: a probability in [0, 1]")


class FaultInjector:
    def __init__(self, config: FaultConfig, seed: int = 0) -> None:
        self.config = config
        self._rng = random.Random(seed)
        self.counts: Counter[str] = Counter()

    def roll(self, kind: str) -> bool:
        """True (and counted) when the fault `kind` (a FaultConfig field) fires now."""
        p = getattr(self.config, kind)
        if p <= 0 or self._rng.random() >= p:
            return False
        self.counts[kind] += 1
        return True

    def choice(self, options: tuple[int, ...]) -> int:
        return self._rng.choice(options)

    def applies_to(self, path: str) -> bool:
        prefixes = self.config.http_paths
        return prefixes is None or path.startswith(prefixes)
