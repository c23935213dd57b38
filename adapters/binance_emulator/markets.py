"""Symbol naming and the trading filters each emulated market advertises and enforces.

Filters are checked on the exact decimal strings the client sent (Binance never sees floats), in
Binance's order: PRICE_FILTER, LOT_SIZE, then NOTIONAL (which for a MARKET order uses the last
price, as Binance uses the average price).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import Any

from risk.market_rules import MarketRules

EIGHT = Decimal("0.00000001")

# Binance's minimum notional differs by quote asset; a flat 10 would forbid every BTC-quoted order.
_MIN_NOTIONAL_BY_QUOTE = {"BTC": 0.0001, "ETH": 0.001, "BNB": 0.01}


def market_id(symbol: str) -> str:
    """'BTC/USDT' -> 'BTCUSDT'."""
    return symbol.replace("/", "").replace("-", "").upper()


def dec(value: float | int | str | Decimal) -> Decimal:
    """repr() keeps a float's shortest round-tripping digits: 0.1 -> Decimal('0.1')."""
    if isinstance(value, Decimal):
        return value
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def fmt(value: Decimal | float, places: int = 8) -> str:
    """Binance renders every decimal with a fixed 8 places: '0.01000000'."""
    return f"{dec(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN):f}"


def default_rules(symbol: str, price: float) -> MarketRules:
    quote = symbol.partition("/")[2]
    return MarketRules.synthetic(symbol, price,
                                 min_notional=_MIN_NOTIONAL_BY_QUOTE.get(quote, 10.0))


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    symbol: str
    id: str
    base: str
    quote: str
    tick: Decimal
    step: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_price: Decimal
    max_price: Decimal
    min_notional: Decimal
    max_notional: Decimal

    @classmethod
    def from_rules(cls, rules: MarketRules) -> SymbolSpec:
        tick, step = dec(rules.price_tick), dec(rules.amount_step)
        max_qty = dec(rules.max_qty) if math.isfinite(rules.max_qty) else Decimal("9000000")
        max_notional = (dec(rules.max_notional) if math.isfinite(rules.max_notional)
                        else Decimal("9000000"))
        return cls(symbol=rules.symbol, id=market_id(rules.symbol), base=rules.base,
                   quote=rules.quote, tick=tick, step=step,
                   min_qty=max(dec(rules.min_qty), step), max_qty=max_qty, min_price=tick,
                   max_price=Decimal("1000000"), min_notional=dec(rules.min_notional),
                   max_notional=max_notional)

    def round_price(self, price: Decimal, down: bool = False) -> Decimal:
        units = (price / self.tick).quantize(Decimal(1),
                                             rounding=ROUND_DOWN if down else ROUND_HALF_EVEN)
        return max(units * self.tick, self.tick)

    def floor_qty(self, qty: Decimal) -> Decimal:
        return (qty / self.step).quantize(Decimal(1), rounding=ROUND_DOWN) * self.step

    def filter_failure(self, qty: Decimal, price: Decimal | None,
                       reference_price: Decimal) -> str | None:
        """Name of the first filter (qty, price) violates, or None. `price` is None for MARKET."""
        if price is not None and (price < self.min_price or price > self.max_price
                                  or (price - self.min_price) % self.tick != 0):
            return "PRICE_FILTER"
        if qty < self.min_qty or qty > self.max_qty or (qty - self.min_qty) % self.step != 0:
            return "LOT_SIZE"
        notional = qty * (price if price is not None else reference_price)
        if notional < self.min_notional or notional > self.max_notional:
            return "NOTIONAL"
        return None

    def info(self) -> dict[str, Any]:
        """The symbol's entry in /api/v3/exchangeInfo, shaped like Binance's."""
        return {
            "symbol": self.id, "status": "TRADING",
            "baseAsset": self.base, "baseAssetPrecision": 8,
            "quoteAsset": self.quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
            "icebergAllowed": False, "ocoAllowed": False, "otoAllowed": False,
            "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": False,
            "cancelReplaceAllowed": False, "amendAllowed": False,
            "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": fmt(self.min_price),
                 "maxPrice": fmt(self.max_price), "tickSize": fmt(self.tick)},
                {"filterType": "LOT_SIZE", "minQty": fmt(self.min_qty),
                 "maxQty": fmt(self.max_qty), "stepSize": fmt(self.step)},
                {"filterType": "NOTIONAL", "minNotional": fmt(self.min_notional),
                 "applyMinToMarket": True, "maxNotional": fmt(self.max_notional),
                 "applyMaxToMarket": False, "avgPriceMins": 5},
                {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            ],
            "permissions": [], "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER",
                                                "EXPIRE_BOTH"],
        }
