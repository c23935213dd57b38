"""The account: balances (free/locked), orders and trades, all in exact Decimal.

Nothing here knows HTTP or websockets; the matching engine mutates it and renders events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from . import errors

ZERO = Decimal(0)
OPEN_STATUSES = frozenset({"NEW", "PARTIALLY_FILLED"})


@dataclass(slots=True)
class Order:
    order_id: int
    client_order_id: str
    symbol_id: str
    side: str                 # BUY / SELL
    type: str                 # MARKET / LIMIT / LIMIT_MAKER
    time_in_force: str        # GTC / IOC / FOK (MARKET orders report GTC, as Binance does)
    orig_qty: Decimal
    price: Decimal            # 0 for MARKET orders
    time: int
    orig_quote_qty: Decimal = ZERO
    status: str = "NEW"
    executed_qty: Decimal = ZERO
    cum_quote: Decimal = ZERO
    update_time: int = 0
    locked_asset: str = ""
    locked: Decimal = ZERO    # still reserved for this order

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass(frozen=True, slots=True)
class Trade:
    trade_id: int
    order_id: int
    client_order_id: str
    symbol_id: str
    side: str
    price: Decimal
    qty: Decimal
    quote_qty: Decimal
    commission: Decimal
    commission_asset: str
    time: int
    is_maker: bool


@dataclass(slots=True)
class Account:
    free: dict[str, Decimal] = field(default_factory=dict)
    locked: dict[str, Decimal] = field(default_factory=dict)
    orders: dict[int, Order] = field(default_factory=dict)
    trades: list[Trade] = field(default_factory=list)
    # Binance ids are large and unrelated to each other; distinct starts catch id mix-ups.
    next_order_id: int = 1_000_001
    next_trade_id: int = 5_000_001
    update_time: int = 0

    def assets(self) -> list[str]:
        return sorted(set(self.free) | set(self.locked))

    def lock(self, asset: str, amount: Decimal) -> None:
        if self.free.get(asset, ZERO) < amount:
            raise errors.error(errors.INSUFFICIENT_BALANCE)
        self.free[asset] = self.free.get(asset, ZERO) - amount
        self.locked[asset] = self.locked.get(asset, ZERO) + amount

    def unlock(self, asset: str, amount: Decimal) -> None:
        self.locked[asset] = self.locked.get(asset, ZERO) - amount
        self.free[asset] = self.free.get(asset, ZERO) + amount

    def spend_locked(self, asset: str, amount: Decimal) -> None:
        self.locked[asset] = self.locked.get(asset, ZERO) - amount

    def credit(self, asset: str, amount: Decimal) -> None:
        self.free[asset] = self.free.get(asset, ZERO) + amount
        self.locked.setdefault(asset, ZERO)

    def find_client_id(self, client_order_id: str, symbol_id: str | None = None) -> Order | None:
        """The newest order carrying that client id (Binance lets a finished id be reused)."""
        best = None
        for order in self.orders.values():
            if order.client_order_id == client_order_id and symbol_id in (None, order.symbol_id):
                best = order if best is None or order.order_id > best.order_id else best
        return best

    def snapshot(self) -> dict[str, Any]:
        return {
            "free": {a: str(v) for a, v in self.free.items()},
            "locked": {a: str(v) for a, v in self.locked.items()},
            "orders": [{k: (str(v) if isinstance(v, Decimal) else v)
                        for k, v in _fields(o).items()} for o in self.orders.values()],
            "trades": [{k: (str(v) if isinstance(v, Decimal) else v)
                        for k, v in _fields(t).items()} for t in self.trades],
            "next_order_id": self.next_order_id, "next_trade_id": self.next_trade_id,
            "update_time": self.update_time,
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Account:
        acct = cls(free={a: Decimal(v) for a, v in data["free"].items()},
                   locked={a: Decimal(v) for a, v in data["locked"].items()},
                   next_order_id=data["next_order_id"], next_trade_id=data["next_trade_id"],
                   update_time=data["update_time"])
        for raw in data["orders"]:
            order = Order(**_decimals(raw, Order))
            acct.orders[order.order_id] = order
        acct.trades = [Trade(**_decimals(raw, Trade)) for raw in data["trades"]]
        return acct


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def _decimals(raw: dict[str, Any], cls: type) -> dict[str, Any]:
    decimal_fields = {n for n, t in cls.__annotations__.items() if t == "Decimal"}
    return {k: (Decimal(v) if k in decimal_fields else v) for k, v in raw.items()}
