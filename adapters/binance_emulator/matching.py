"""The matching engine: validates orders against filters and balances, fills them from bars.

Execution model (deliberately simple and deterministic):

* A MARKET order fills at once, in full, at the last closed bar's close (the emulator's "last
  price"), moved against the taker by `slippage_bps` and rounded to the tick. There is no order
  book: size never moves the price.
* A LIMIT order that is marketable against the last price fills at once as a taker at the better
  of its limit and the slipped last price. Otherwise it rests (GTC) and fills in full, as a
  maker, at its own limit price when a later bar trades through it: `low <= price` for a buy,
  `high >= price` for a sell. IOC/FOK orders that cannot fill at once expire. LIMIT_MAKER
  orders that would take are rejected.
* Fees: `fee_bps` of what is received, for makers and takers alike, charged by `fee_asset`:
  "quote" (the default) charges the QUOTE asset on both sides, which keeps a buy's base
  quantity exactly the ordered quantity (no fee dust to sweep); a resting buy then locks
  `qty * price * (1 + fee)`. "received" is Binance's own default: a buy pays `qty * fee` in the
  BASE asset (rounded to 8 places) and is credited `qty - fee`, a sell pays in quote; a buy
  then locks only `qty * price`. Trades, myTrades (`commission`, `commissionAsset`) and
  executionReports (`n`, `N`) report the asset charged.
* Timestamps are market time: an order placed between bars is stamped with the close time of
  the last bar, a resting fill with the close time of the bar that filled it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from daemon.events import Bar

from . import errors, payloads
from .bars import to_ms
from .markets import EIGHT, SymbolSpec, dec, market_id
from .state import ZERO, Account, Order, Trade

UserListener = Callable[[dict[str, Any]], None]
FeeAsset = Literal["quote", "received"]
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class NewOrder:
    symbol_id: str
    side: str
    type: str
    quantity: Decimal | None = None
    quote_qty: Decimal | None = None
    price: Decimal | None = None
    time_in_force: str | None = None
    client_order_id: str | None = None


def _q8(x: Decimal) -> Decimal:
    return x.quantize(EIGHT, rounding=ROUND_HALF_EVEN)


class MatchingEngine:
    def __init__(self, specs: dict[str, SymbolSpec], account: Account, fee_bps: float = 10.0,
                 slippage_bps: float = 0.0, unique_client_ids: bool = True,
                 fee_asset: FeeAsset = "quote") -> None:
        if fee_asset not in ("quote", "received"):
            raise ValueError(f"fee_asset {fee_asset!r}: must be 'quote' or 'received'")
        self.specs = specs
        self.account = account
        self.fee_rate = dec(fee_bps) / 10_000
        self.fee_asset = fee_asset
        self.slip = dec(slippage_bps) / 10_000
        self.unique_client_ids = unique_client_ids
        self.last_price: dict[str, Decimal] = {}
        self.now_ms = 0
        self._listeners: list[UserListener] = []

    def subscribe(self, listener: UserListener) -> None:
        self._listeners.append(listener)

    def _emit(self, event: dict[str, Any]) -> None:
        for listener in self._listeners:
            listener(event)

    def _emit_balances(self, *assets: str) -> None:
        self._emit(payloads.account_position(self.account, assets, self.now_ms))

    # ---- orders ---------------------------------------------------------------------------

    def check(self, req: NewOrder) -> tuple[SymbolSpec, Decimal, Decimal]:
        """Everything Binance checks before the matching engine: filters. Returns the spec,
        the quantity and the price a MARKET order would fill at (or the limit price)."""
        spec = self.specs[req.symbol_id]
        last = self.last_price.get(req.symbol_id)
        if last is None:
            raise errors.error(errors.MARKET_CLOSED)
        taker_price = self._taker_price(spec, req.side, last)
        if req.type == "MARKET":
            if req.quote_qty is not None:
                qty = spec.floor_qty(req.quote_qty / taker_price)
                failure = spec.filter_failure(qty, None, last) if qty > 0 else "LOT_SIZE"
            else:
                assert req.quantity is not None
                qty = req.quantity
                failure = spec.filter_failure(qty, None, last)
            price = taker_price
        else:
            assert req.quantity is not None and req.price is not None
            qty, price = req.quantity, req.price
            failure = spec.filter_failure(qty, price, last)
        if failure:
            raise errors.filter_failure(failure)
        if qty * price <= 0:
            raise errors.error(errors.ZERO_NOTIONAL)
        return spec, qty, price

    def place(self, req: NewOrder) -> tuple[Order, list[Trade]]:
        spec, qty, price = self.check(req)
        acct = self.account
        client_id = req.client_order_id or f"emu{acct.next_order_id:x}"
        existing = acct.find_client_id(client_id)
        if existing is not None and (self.unique_client_ids or existing.is_open):
            raise errors.error(errors.DUPLICATE_ORDER)
        last = self.last_price[req.symbol_id]
        taker = self._taker_price(spec, req.side, last)
        if req.type == "MARKET":
            marketable, fill_price = True, taker
        elif req.side == "BUY":
            marketable, fill_price = price >= last, min(price, taker)
        else:
            marketable, fill_price = price <= last, max(price, taker)
        if req.type == "LIMIT_MAKER" and marketable:
            raise errors.error(errors.WOULD_TAKE)

        # Reserve at the worst price the order may pay: its limit, or the market fill price.
        reserve_price = fill_price if req.type == "MARKET" else price
        if req.side == "BUY":
            lock_asset, lock = spec.quote, self._cost(qty, reserve_price)
        else:
            lock_asset, lock = spec.base, qty
        acct.lock(lock_asset, lock)

        order = Order(order_id=acct.next_order_id, client_order_id=client_id,
                      symbol_id=spec.id, side=req.side, type=req.type,
                      time_in_force=req.time_in_force or "GTC", orig_qty=qty,
                      price=ZERO if req.type == "MARKET" else price, time=self.now_ms,
                      orig_quote_qty=req.quote_qty or ZERO, update_time=self.now_ms,
                      locked_asset=lock_asset, locked=lock)
        acct.next_order_id += 1
        acct.orders[order.order_id] = order
        acct.update_time = self.now_ms
        self._emit(payloads.execution_report(order, "NEW", self.now_ms))
        fills: list[Trade] = []
        if marketable:
            fills.append(self._fill(order, spec, fill_price, is_maker=False))
        elif order.time_in_force in ("IOC", "FOK"):
            order.status = "EXPIRED"
            self._release(order)
            self._emit(payloads.execution_report(order, "EXPIRED", self.now_ms))
        self._emit_balances(spec.base, spec.quote)
        return order, fills

    def lookup(self, symbol_id: str, order_id: int | None, client_id: str | None,
               missing: tuple[int, str] = errors.NO_SUCH_ORDER) -> Order:
        if order_id is not None:
            order = self.account.orders.get(order_id)
            if order is None or order.symbol_id != symbol_id or (
                    client_id is not None and order.client_order_id != client_id):
                raise errors.error(missing)
            return order
        if client_id is None:
            raise errors.error(errors.CANCEL_INVALID)
        found = self.account.find_client_id(client_id, symbol_id)
        if found is None:
            raise errors.error(missing)
        return found

    def cancel(self, symbol_id: str, order_id: int | None, client_id: str | None,
               cancel_client_id: str | None = None) -> tuple[Order, str]:
        order = self.lookup(symbol_id, order_id, client_id, missing=errors.UNKNOWN_ORDER)
        if not order.is_open:
            raise errors.error(errors.UNKNOWN_ORDER)
        order.status = "CANCELED"
        order.update_time = self.now_ms
        self._release(order)
        cancel_id = cancel_client_id or f"cancel{order.order_id:x}"
        spec = self.specs[symbol_id]
        self._emit(payloads.execution_report(order, "CANCELED", self.now_ms,
                                             cancel_client_id=cancel_id))
        self._emit_balances(spec.base, spec.quote)
        return order, cancel_id

    def open_orders(self, symbol_id: str | None = None) -> list[Order]:
        return [o for o in self.account.orders.values()
                if o.is_open and symbol_id in (None, o.symbol_id)]

    def all_orders(self, symbol_id: str, order_id: int | None = None, start: int | None = None,
                   end: int | None = None, limit: int = 500) -> list[Order]:
        out = [o for o in self.account.orders.values() if o.symbol_id == symbol_id
               and (order_id is None or o.order_id >= order_id)
               and (start is None or o.time >= start) and (end is None or o.time <= end)]
        out.sort(key=lambda o: o.order_id)
        return out[:limit] if (order_id is not None or start is not None) else out[-limit:]

    def my_trades(self, symbol_id: str, order_id: int | None = None, start: int | None = None,
                  end: int | None = None, from_id: int | None = None,
                  limit: int = 500) -> list[Trade]:
        if start is not None and end is not None and end - start > DAY_MS:
            raise errors.BinanceError(-1127, "More than 24 hours between startTime and endTime.")
        out = [t for t in self.account.trades if t.symbol_id == symbol_id
               and (order_id is None or t.order_id == order_id)
               and (from_id is None or t.trade_id >= from_id)
               and (start is None or t.time >= start) and (end is None or t.time <= end)]
        # With a lower bound Binance returns the oldest matches first; else the newest.
        bounded = from_id is not None or start is not None
        return out[:limit] if bounded else out[-limit:]

    # ---- market ---------------------------------------------------------------------------

    def on_bars(self, bars: list[Bar]) -> None:
        """Close one timestamp's bars: fill resting orders the bars traded through, then make
        each close the new last price. The clock moves to the bars' close time."""
        if not bars:
            return
        self.now_ms = max(to_ms(b.ts) + b.interval_s * 1000 for b in bars)
        for bar in bars:
            sid = market_id(bar.symbol)
            spec = self.specs.get(sid)
            if spec is None:
                continue
            low, high = dec(bar.low), dec(bar.high)
            for order in sorted(self.open_orders(sid), key=lambda o: o.order_id):
                crossed = low <= order.price if order.side == "BUY" else high >= order.price
                if crossed:
                    self._fill(order, spec, order.price, is_maker=True)
                    self._emit_balances(spec.base, spec.quote)
            self.last_price[sid] = dec(bar.close)

    # ---- internals ------------------------------------------------------------------------

    def _taker_price(self, spec: SymbolSpec, side: str, last: Decimal) -> Decimal:
        if side == "BUY":
            return spec.round_price(last * (1 + self.slip))
        return spec.round_price(last * (1 - self.slip), down=True)

    def _cost(self, qty: Decimal, price: Decimal) -> Decimal:
        notional = _q8(qty * price)
        if self.fee_asset == "received":
            return notional  # the fee comes out of the base asset received
        return notional + _q8(notional * self.fee_rate)

    def _fill(self, order: Order, spec: SymbolSpec, price: Decimal, is_maker: bool) -> Trade:
        acct = self.account
        qty = order.orig_qty - order.executed_qty
        quote = _q8(qty * price)
        fee_asset = spec.quote
        if order.side == "BUY" and self.fee_asset == "received":
            fee_asset, fee = spec.base, _q8(qty * self.fee_rate)
            acct.spend_locked(spec.quote, quote)
            order.locked -= quote
            acct.credit(spec.base, qty - fee)
        elif order.side == "BUY":
            fee = _q8(quote * self.fee_rate)
            acct.spend_locked(spec.quote, quote + fee)
            order.locked -= quote + fee
            acct.credit(spec.base, qty)
        else:
            fee = _q8(quote * self.fee_rate)
            acct.spend_locked(spec.base, qty)
            order.locked -= qty
            acct.credit(spec.quote, quote - fee)
        trade = Trade(trade_id=acct.next_trade_id, order_id=order.order_id,
                      client_order_id=order.client_order_id, symbol_id=spec.id,
                      side=order.side, price=price, qty=qty, quote_qty=quote, commission=fee,
                      commission_asset=fee_asset, time=self.now_ms, is_maker=is_maker)
        acct.next_trade_id += 1
        acct.trades.append(trade)
        order.executed_qty += qty
        order.cum_quote += quote
        order.status = "FILLED"
        order.update_time = self.now_ms
        acct.update_time = self.now_ms
        self._release(order)
        self._emit(payloads.execution_report(order, "TRADE", self.now_ms, trade))
        return trade

    def _release(self, order: Order) -> None:
        """Return what the order still reserves (a buy filled below its limit leaves some)."""
        if order.locked:
            self.account.unlock(order.locked_asset, order.locked)
            order.locked = ZERO
