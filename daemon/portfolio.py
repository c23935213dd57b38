"""Portfolio state: cash, positions, marks, NAV and weights.

It changes only through `apply_fill` (a `Fill` from the venue) and `mark` (the close of a `Bar`).
Nothing else may write to it: orders that are merely sent change nothing until they fill.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from daemon.events import Bar, Fill, Side


@dataclass
class Portfolio:
    quote: str
    cash: float
    positions: dict[str, float] = field(default_factory=dict)
    prices: dict[str, float] = field(default_factory=dict)
    fees_paid: float = 0.0
    fills_applied: int = 0
    _seen_trades: set[str] = field(default_factory=set, repr=False)

    def apply_fill(self, fill: Fill) -> bool:
        """Book one execution; a trade id seen before is ignored (returns False)."""
        if fill.trade_id in self._seen_trades:
            return False
        self._seen_trades.add(fill.trade_id)
        signed = fill.quantity if fill.side is Side.BUY else -fill.quantity
        self.positions[fill.symbol] = self.positions.get(fill.symbol, 0.0) + signed
        self.cash -= signed * fill.price + fill.fee
        self.fees_paid += fill.fee
        self.fills_applied += 1
        self.prices.setdefault(fill.symbol, fill.price)
        return True

    def mark(self, bar: Bar) -> None:
        self.prices[bar.symbol] = bar.close

    def position_value(self, symbol: str) -> float:
        return self.positions.get(symbol, 0.0) * self.prices.get(symbol, 0.0)

    @property
    def nav(self) -> float:
        return self.cash + sum(q * self.prices.get(s, 0.0) for s, q in self.positions.items())

    def weights(self, symbols: list[str] | None = None) -> dict[str, float]:
        nav = self.nav
        names = symbols if symbols is not None else list(self.positions)
        if nav <= 0:
            return {s: 0.0 for s in names}
        return {s: self.position_value(s) / nav for s in names}

    def snapshot(self) -> dict[str, object]:
        return {"cash": self.cash, "positions": dict(self.positions), "prices": dict(self.prices),
                "nav": self.nav, "fees_paid": self.fees_paid}
