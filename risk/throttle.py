"""Message throttles and the duplicate-order filter: sliding windows over an injected clock.

Nothing here reads a clock: every call takes `now` (seconds, any monotonic origin), so the gate
decides which time applies (wall clock live, market time in a lockstep replay) and tests are
deterministic. Checks (`check_*`) never record; the gate records an order only once it has
approved it, because only approved orders reach the venue.

Answers are `(code, context)` tuples, or None when the order may go, like
`MarketRules.violation`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from risk.limits import ThrottleLimits

Violation = tuple[str, dict[str, Any]]


class SlidingWindow:
    """Times of events in the last `span` seconds."""

    __slots__ = ("_times", "span")

    def __init__(self, span: float) -> None:
        self.span = span
        self._times: deque[float] = deque()

    def count(self, now: float) -> int:
        times, cutoff = self._times, now - self.span
        # evicting here keeps memory bounded by the limit without a timer
        while times and times[0] <= cutoff:
            times.popleft()
        return len(times)

    def add(self, now: float) -> None:
        self._times.append(now)

    def clear(self) -> None:
        self._times.clear()


class _Pair:
    """A 1 s and a 60 s window kept together (one symbol, or all of them)."""

    __slots__ = ("minute", "second")

    def __init__(self) -> None:
        self.second = SlidingWindow(1.0)
        self.minute = SlidingWindow(60.0)


class MessageThrottle:
    """Orders per second and per minute, cancels per minute; per symbol and in total."""

    def __init__(self, limits: ThrottleLimits) -> None:
        self.limits = limits
        self._orders = _Pair()
        self._symbol_orders: dict[str, _Pair] = {}
        self._cancels = SlidingWindow(60.0)
        self._symbol_cancels: dict[str, SlidingWindow] = {}

    def check_order(self, symbol: str, now: float) -> Violation | None:
        lim = self.limits
        # the common case first: a window holding fewer times than its limit (expired ones
        # included) cannot count as many, so no eviction and no count is needed to pass
        total, pair = self._orders, self._symbol_orders.get(symbol)
        if len(total.second._times) < lim.orders_per_second \
                and len(total.minute._times) < lim.orders_per_minute \
                and (pair is None or (len(pair.second._times) < lim.symbol_orders_per_second
                                      and len(pair.minute._times)
                                      < lim.symbol_orders_per_minute)):
            return None
        n = self._orders.second.count(now)
        if n >= lim.orders_per_second:
            return "THROTTLE_ORDERS_PER_SECOND", {"count": n, "limit": lim.orders_per_second,
                                                  "window_s": 1}
        n = self._orders.minute.count(now)
        if n >= lim.orders_per_minute:
            return "THROTTLE_ORDERS_PER_MINUTE", {"count": n, "limit": lim.orders_per_minute,
                                                  "window_s": 60}
        pair = self._symbol_orders.get(symbol)
        if pair is None:
            return None
        n = pair.second.count(now)
        if n >= lim.symbol_orders_per_second:
            return "THROTTLE_SYMBOL_ORDERS_PER_SECOND", {
                "symbol": symbol, "count": n, "limit": lim.symbol_orders_per_second,
                "window_s": 1}
        n = pair.minute.count(now)
        if n >= lim.symbol_orders_per_minute:
            return "THROTTLE_SYMBOL_ORDERS_PER_MINUTE", {
                "symbol": symbol, "count": n, "limit": lim.symbol_orders_per_minute,
                "window_s": 60}
        return None

    def order_room(self, symbol: str | None, now: float) -> int:
        """How many more orders `check_order` would pass now: of `symbol` (its own limits and
        the totals), or of any symbol when None (the totals)."""
        lim = self.limits
        room = min(lim.orders_per_second - self._orders.second.count(now),
                   lim.orders_per_minute - self._orders.minute.count(now))
        if symbol is not None:
            pair = self._symbol_orders.get(symbol)
            if pair is None:
                room = min(room, lim.symbol_orders_per_second, lim.symbol_orders_per_minute)
            else:
                room = min(room, lim.symbol_orders_per_second - pair.second.count(now),
                           lim.symbol_orders_per_minute - pair.minute.count(now))
        return max(room, 0)

    def record_order(self, symbol: str, now: float) -> None:
        # once per approved order: the deques directly, not four `add` calls
        self._orders.second._times.append(now)
        self._orders.minute._times.append(now)
        pair = self._symbol_orders.get(symbol)
        if pair is None:
            pair = self._symbol_orders[symbol] = _Pair()
        pair.second._times.append(now)
        pair.minute._times.append(now)

    def check_cancel(self, symbol: str, now: float) -> Violation | None:
        lim = self.limits
        n = self._cancels.count(now)
        if n >= lim.cancels_per_minute:
            return "THROTTLE_CANCELS_PER_MINUTE", {"count": n, "limit": lim.cancels_per_minute,
                                                   "window_s": 60}
        window = self._symbol_cancels.get(symbol)
        if window is not None:
            n = window.count(now)
            if n >= lim.symbol_cancels_per_minute:
                return "THROTTLE_SYMBOL_CANCELS_PER_MINUTE", {
                    "symbol": symbol, "count": n, "limit": lim.symbol_cancels_per_minute,
                    "window_s": 60}
        return None

    def record_cancel(self, symbol: str, now: float) -> None:
        self._cancels.add(now)
        window = self._symbol_cancels.get(symbol)
        if window is None:
            window = self._symbol_cancels[symbol] = SlidingWindow(60.0)
        window.add(now)

    def usage(self, now: float) -> dict[str, int]:
        """Current counts, for status."""
        return {"orders_last_second": self._orders.second.count(now),
                "orders_last_minute": self._orders.minute.count(now),
                "cancels_last_minute": self._cancels.count(now)}


class DuplicateFilter:
    """Rejects an order with the same symbol, side and quantity as one approved within
    `window_s`, unless it carries the same client order id (a retry: the venue deduplicates on
    it) or the same non-empty decision id (equal child orders of one split are intended)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._by_key: dict[tuple[str, str, float], deque[tuple[float, str, str]]] = {}
        self._order: deque[tuple[float, tuple[str, str, float]]] = deque()

    def _evict(self, now: float) -> None:
        cutoff = now - self.window_s
        order, by_key = self._order, self._by_key
        while order and order[0][0] <= cutoff:
            _, key = order.popleft()
            entries = by_key.get(key)
            if entries:
                entries.popleft()
                if not entries:
                    del by_key[key]

    def check(self, symbol: str, side: str, quantity: float, client_order_id: str,
              decision_id: str, now: float) -> Violation | None:
        order = self._order
        if order and order[0][0] <= now - self.window_s:  # once per order: test, then call
            self._evict(now)
        entries = self._by_key.get((symbol, side, quantity))
        if not entries:
            return None
        for at, cid, decision in entries:
            if cid == client_order_id or (decision_id and decision == decision_id):
                continue
            return "DUPLICATE_ORDER", {"symbol": symbol, "side": side, "quantity": quantity,
                                       "previous_client_order_id": cid,
                                       "age_s": round(now - at, 3), "window_s": self.window_s}
        return None

    def record(self, symbol: str, side: str, quantity: float, client_order_id: str,
               decision_id: str, now: float) -> None:
        key = (symbol, side, quantity)
        entries = self._by_key.get(key)
        if entries is None:  # not setdefault: that would build a deque for every order
            entries = self._by_key[key] = deque()
        entries.append((now, client_order_id, decision_id))
        self._order.append((now, key))
