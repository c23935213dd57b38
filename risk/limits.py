"""Pre-trade risk limits: the `[risk]` table of config.toml and its sub-tables.

    [risk]           order-level and portfolio-level limits
    [risk.throttle]  message throttles and the duplicate-order window
    [risk.state]     what switches trading to REDUCING or HALTED
    [risk.var]       the VaR/CVaR model and limits (`risk.var.VarConfig`)

A limit left out of the config takes the default documented here, and every default is a
finite, conservative number: there is no "unlimited". The one opt-in is `groups` (an empty map
names no group, so no group cap applies; every asset is still capped by `max_asset_fraction`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from risk.var import VarConfig

StateAction = Literal["REDUCING", "HALTED"]


@dataclass(frozen=True)
class ThrottleLimits:
    """Message throttles, counted over sliding windows of the gate's clock. Only orders the gate
    approves count (a rejected order never reaches the venue). The defaults sit below Binance
    spot's own order limits and above the burst of one rebalance (one child order per
    `rebalance.max_child_notional` of NAV)."""

    orders_per_second: int = field(default=20, metadata={
        "doc": "orders approved in any 1 s, all symbols", "min": 1, "max": 10_000})
    orders_per_minute: int = field(default=300, metadata={
        "doc": "orders approved in any 60 s, all symbols", "min": 1, "max": 100_000})
    symbol_orders_per_second: int = field(default=10, metadata={
        "doc": "orders approved in any 1 s, one symbol", "min": 1, "max": 10_000})
    symbol_orders_per_minute: int = field(default=100, metadata={
        "doc": "orders approved in any 60 s, one symbol", "min": 1, "max": 100_000})
    cancels_per_minute: int = field(default=300, metadata={
        "doc": "cancel requests in any 60 s, all symbols (the kill switch's cancel-all is never "
               "throttled)", "min": 1, "max": 100_000})
    symbol_cancels_per_minute: int = field(default=100, metadata={
        "doc": "cancel requests in any 60 s, one symbol", "min": 1, "max": 100_000})
    duplicate_window_s: float = field(default=2.0, metadata={
        "doc": "an order with the same symbol, side and quantity as one approved this recently "
               "is rejected, unless it is a retry of the same client order id or a sibling "
               "child of the same decision", "min": 0.0, "max": 3600.0, "unit": "s"})


@dataclass(frozen=True)
class StateLimits:
    """What moves trading from ACTIVE to REDUCING (only risk-reducing orders pass) or HALTED
    (no new orders; cancels only). Automatic triggers only ever make the state stricter; an
    operator's `resume` is what loosens it (stale data excepted, see `resume_on_fresh_data`)."""

    max_daily_loss_fraction: float = field(default=0.10, metadata={
        "doc": "loss since the start of the UTC day (NAV at the last mark before midnight, bar "
               "time), as a fraction of that NAV, that trips `daily_loss_action`",
        "min": 0.0, "max": 1.0, "exclusive_min": True})
    daily_loss_action: StateAction = field(default="REDUCING", metadata={
        "doc": "state the daily loss limit switches to"})
    max_drawdown_fraction: float = field(default=0.30, metadata={
        "doc": "fall of NAV from its peak (kept across restarts) that trips `drawdown_action`",
        "min": 0.0, "max": 1.0, "exclusive_min": True})
    drawdown_action: StateAction = field(default="HALTED", metadata={
        "doc": "state the drawdown limit switches to"})
    stale_after_intervals: int = field(default=3, metadata={
        "doc": "market data is stale after this many bar intervals without a bar (checked on a "
               "heartbeat and on every order; a symbol's own bars for its orders)",
        "min": 1, "max": 1000})
    stale_action: StateAction = field(default="HALTED", metadata={
        "doc": "state stale market data switches to"})
    resume_on_fresh_data: bool = field(default=True, metadata={
        "doc": "when bars flow again, undo a stale-data switch (back to the state before it); "
               "every other trigger waits for an operator's resume"})
    heartbeat_s: float = field(default=5.0, metadata={
        "doc": "how often the gate checks for stale data and OMS halts without orders",
        "min": 0.05, "max": 3600.0, "unit": "s"})
    max_rejections: int = field(default=20, metadata={
        "doc": "more gate rejections than this within `rejection_window_s` trips "
               "`rejection_action` (rejections caused by the state itself do not count)",
        "min": 1, "max": 1_000_000})
    rejection_window_s: float = field(default=60.0, metadata={
        "doc": "window of the rejection count", "min": 1.0, "max": 86_400.0, "unit": "s"})
    rejection_action: StateAction = field(default="HALTED", metadata={
        "doc": "state a burst of rejections switches to"})
    cancel_working_on_halt: bool = field(default=True, metadata={
        "doc": "on entering HALTED, cancel every working order (oms.cancel_all)"})


@dataclass(frozen=True)
class RiskLimits:
    # -- order level -----------------------------------------------------------------------
    max_order_notional: float = field(default=25_000.0, metadata={
        "doc": "largest notional of a single order at its own price, quote currency",
        "min": 0.0, "exclusive_min": True})
    max_order_qty: dict[str, float] = field(default_factory=dict, metadata={
        "doc": "largest quantity of one order per symbol, base currency; a symbol not listed "
               "is capped at max_order_notional / last close (so a wrong reference price cannot "
               "hide a huge quantity)", "min": 0.0, "exclusive_min": True})
    price_collar_buy_pct: float = field(default=5.0, metadata={
        "doc": "fat-finger collar for buys: limit (or, for a market order, reference) price at "
               "most this far from the last close, percent", "min": 0.0,
        "exclusive_min": True, "max": 100.0})
    price_collar_sell_pct: float = field(default=5.0, metadata={
        "doc": "fat-finger collar for sells, percent", "min": 0.0, "exclusive_min": True,
        "max": 100.0})
    max_volume_share: float = field(default=0.02, metadata={
        "doc": "largest order quantity as a fraction of the average bar volume over the last "
               "`volume_window_bars` bars", "min": 0.0, "exclusive_min": True, "max": 1.0})
    volume_window_bars: int = field(default=20, metadata={
        "doc": "bars averaged for `max_volume_share`", "min": 1, "max": 10_000,
        "unit": "bars"})
    # -- portfolio level (after this order and every working order) ---------------------------
    max_gross_exposure: float = field(default=1.0, metadata={
        "doc": "sum of |position value| over NAV (1.0 = fully invested, no leverage)",
        "min": 0.0, "exclusive_min": True, "max": 100.0})
    max_net_exposure: float = field(default=1.0, metadata={
        "doc": "|sum of position values| over NAV", "min": 0.0, "exclusive_min": True,
        "max": 100.0})
    max_asset_fraction: float = field(default=0.5, metadata={
        "doc": "largest |position value| of one asset over NAV (concentration cap)",
        "min": 0.0, "exclusive_min": True, "max": 100.0})
    groups: dict[str, list[str]] = field(default_factory=dict, metadata={
        "doc": "named groups of symbols, e.g. { l1 = [\"BTC/USDT\", \"ETH/USDT\"] }; each "
               "group's gross exposure is capped"})
    max_group_fraction: float = field(default=0.8, metadata={
        "doc": "cap on a group's sum of |position value| over NAV, for groups not in "
               "group_limits", "min": 0.0, "exclusive_min": True, "max": 100.0})
    group_limits: dict[str, float] = field(default_factory=dict, metadata={
        "doc": "per-group caps overriding max_group_fraction", "min": 0.0,
        "exclusive_min": True, "max": 100.0})
    var_min_bars: int = field(default=30, metadata={
        "doc": "bars of returns before VaR is estimated; until then orders that add risk are "
               "rejected (VAR_UNAVAILABLE). Between this and var.window_bars the estimate uses "
               "every bar seen. A young asset (listed within the window) needs this many of "
               "its own before orders may add to it", "min": 20, "max": 100_000, "unit": "bars"})
    var: VarConfig = field(default_factory=VarConfig)
    throttle: ThrottleLimits = field(default_factory=ThrottleLimits)
    state: StateLimits = field(default_factory=StateLimits)

    def check(self) -> None:
        from daemon.settings import ConfigError

        for name, members in self.groups.items():
            if not members:
                raise ConfigError(f"risk.groups.{name}", members, "must name at least one symbol")
        for name in self.group_limits:
            if name not in self.groups:
                raise ConfigError(f"risk.group_limits.{name}", self.group_limits[name],
                                  f"no such group in risk.groups "
                                  f"({', '.join(sorted(self.groups)) or 'none defined'})")

    def group_cap(self, name: str) -> float:
        return self.group_limits.get(name, self.max_group_fraction)

    def unknown_symbols(self, symbols: Iterable[str]) -> list[tuple[str, str]]:
        """(key, symbol) for each symbol a limit names that is not traded: a typo there would
        silently leave the real market unlimited by that rule."""
        known = set(symbols)
        out = [(f"risk.max_order_qty.{s}", s) for s in self.max_order_qty if s not in known]
        for name, members in self.groups.items():
            out.extend((f"risk.groups.{name}", s) for s in members if s not in known)
        return out
