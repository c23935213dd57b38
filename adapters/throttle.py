"""A token bucket in front of every REST call the exchange adapters make.

ccxt's own limiter (`enableRateLimit`) spaces requests by the exchange's documented weights, but
it knows nothing of a 429 the exchange just sent: after a Retry-After every caller must wait,
not only the one that was told. `pause(seconds)` does that; `acquire()` then blocks until the
pause is over and a token is free.

The clock and the sleep are injectable so tests can drive the bucket without real waiting.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s must be > 0 and burst >= 1, got {rate_per_s}, {burst}")
        self.rate = rate_per_s
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._stamp = clock()
        self._paused_until = 0.0
        self.waits = 0       # acquires that had to wait: a sign the limit is too tight
        self.pauses = 0      # Retry-After pauses honoured

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        return now

    def delay(self) -> float:
        """Seconds until a token is free (0 when one is free now); takes nothing."""
        now = self._refill()
        wait = max(self._paused_until - now, 0.0)
        if self._tokens < 1.0:
            wait = max(wait, (1.0 - self._tokens) / self.rate)
        return wait

    async def acquire(self) -> None:
        waited = False
        while True:
            wait = self.delay()
            if wait <= 0:
                self._tokens -= 1.0
                if waited:
                    self.waits += 1
                return
            waited = True
            await self._sleep(wait)

    def pause(self, seconds: float) -> None:
        """Hold every caller for `seconds` (the exchange's Retry-After), starting now."""
        if seconds > 0:
            self.pauses += 1
            self._paused_until = max(self._paused_until, self._clock() + seconds)


class Backoff:
    """Capped exponential backoff with jitter for reconnect loops: base, 2·base, 4·base, … up to
    `cap`, each drawn uniformly from [delay/2, delay] so many clients do not reconnect in step.
    `reset()` after a connection proved healthy."""

    def __init__(self, base_s: float, cap_s: float, rng: Callable[[], float] | None = None) -> None:
        self.base, self.cap = base_s, max(cap_s, base_s)
        self._rng = rng or random.random
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return delay * (0.5 + self._rng() / 2)

    def reset(self) -> None:
        self.attempt = 0
