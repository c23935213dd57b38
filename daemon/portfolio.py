"""Portfolio state: cash, positions, marks, NAV and weights.

It changes only through `apply_fill` (a `Fill` from the venue) and `mark` (the close of a `Bar`).
Nothing else may write to it: orders that are merely sent change nothing until they fill.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from daemon.events import Bar, Fill, Side, base_of

log = structlog.get_logger("portfolio")


@dataclass
class Portfolio:
    quote: str
    cash: float
    positions: dict[str, float] = field(default_factory=dict)
    prices: dict[str, float] = field(default_factory=dict)
    fees_paid: float = 0.0  # quote value of every fee, whatever asset it was charged in
    fills_applied: int = 0
    # Fees charged in an asset we neither hold as cash nor trade (BNB with Binance's discount):
    # the change of that asset's balance since the opening (<= 0), and its quote price as the
    # venue last valued such a fee. Without a price a fee asset stays out of NAV.
    fee_balances: dict[str, float] = field(default_factory=dict)
    fee_prices: dict[str, float] = field(default_factory=dict)
    # the traded symbols (set by the reconciler): a fee in the base of one of them, e.g. BNB
    # when BNB/USDT is traded, shrinks that position rather than a separate fee balance
    symbols: set[str] = field(default_factory=set)
    _seen_trades: set[str] = field(default_factory=set, repr=False)
    _unvalued_fee_assets: set[str] = field(default_factory=set, repr=False)

    def apply_fill(self, fill: Fill) -> bool:
        """Book one execution; a trade id seen before is ignored (returns False)."""
        if fill.trade_id in self._seen_trades:
            return False
        self._seen_trades.add(fill.trade_id)
        signed = fill.quantity if fill.side is Side.BUY else -fill.quantity
        self.positions[fill.symbol] = self.positions.get(fill.symbol, 0.0) + signed
        self.cash -= signed * fill.price
        # the fee leaves the balance the venue took it from, so cash and positions stay equal
        # to the venue's balances (reconciliation compares them to half a lot)
        asset, fee, value = fill.fee_currency, fill.fee, fill.fee_quote
        held = f"{asset}/{self.quote}"
        if asset == self.quote:
            self.cash -= fee
        elif asset == base_of(fill.symbol):
            self.positions[fill.symbol] -= fee
        elif held in self.symbols or held in self.positions or held in self.prices:
            self.positions[held] = self.positions.get(held, 0.0) - fee
            if held in self.prices:
                value = fee * self.prices[held]
        else:
            self.fee_balances[asset] = self.fee_balances.get(asset, 0.0) - fee
            if value is not None and fee > 0:
                self.fee_prices[asset] = value / fee
        if value is None:
            value = 0.0
            if asset not in self._unvalued_fee_assets:
                self._unvalued_fee_assets.add(asset)
                log.warning("fee_asset_unvalued", asset=asset, symbol=fill.symbol,
                            note="no quote price for it: its fees are out of NAV and fees_paid")
        self.fees_paid += value
        self.fills_applied += 1
        self.prices.setdefault(fill.symbol, fill.price)
        return True

    def mark(self, bar: Bar) -> None:
        self.prices[bar.symbol] = bar.close

    def position_value(self, symbol: str) -> float:
        return self.positions.get(symbol, 0.0) * self.prices.get(symbol, 0.0)

    @property
    def nav(self) -> float:
        # a list, not a generator: the same sum, and cheaper on a path taken every bar
        prices = self.prices
        return (self.cash + sum([q * prices.get(s, 0.0) for s, q in self.positions.items()])
                + (self.fee_assets_value() if self.fee_balances else 0.0))

    def fee_assets_value(self) -> float:
        """Quote value of `fee_balances` (assets without a price count zero)."""
        return sum(q * self.fee_prices.get(a, 0.0) for a, q in self.fee_balances.items())

    def weights(self, symbols: list[str] | None = None) -> dict[str, float]:
        nav = self.nav
        names = symbols if symbols is not None else list(self.positions)
        if nav <= 0:
            return {s: 0.0 for s in names}
        return {s: self.position_value(s) / nav for s in names}

    def snapshot(self) -> dict[str, object]:
        return {"cash": self.cash, "positions": dict(self.positions), "prices": dict(self.prices),
                "nav": self.nav, "fees_paid": self.fees_paid}
