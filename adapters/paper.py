"""The paper venue: an in-process exchange for offline runs.

It sees market data before the daemon does (`on_bars` is called by the feed pump ahead of the
bus), as a real exchange would: an order the daemon sends after seeing bar t fills at bar t+1's
open, never at a price it already knew. Market orders fill at that open plus `slippage_bps`
against the taker; limit orders fill when a bar trades through them. Fees are charged in the
quote currency. Orders the account cannot afford are rejected, as an exchange would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime

from adapters.venue import (
    OrderListener,
    OrderNotFound,
    OrderRequest,
    PermanentVenueError,
    TradeListener,
    VenueOrder,
    VenueTrade,
)
from daemon.events import Bar, OrderType, Side, utcnow
from risk.market_rules import MarketRules


@dataclass(frozen=True)
class PaperVenueConfig:
    initial_cash: float = field(default=100_000.0, metadata={
        "doc": "starting balance of the paper account, quote currency",
        "min": 0.0, "exclusive_min": True})
    fee_bps: float = field(default=10.0, metadata={
        "doc": "fee charged on each fill's notional, basis points", "min": 0.0, "max": 1000.0})
    slippage_bps: float = field(default=5.0, metadata={
        "doc": "market orders fill this far through the next bar's open, basis points",
        "min": 0.0, "max": 1000.0})
    min_notional: float = field(default=10.0, metadata={
        "doc": "smallest order notional the venue accepts (Binance's NOTIONAL filter)",
        "min": 0.0})


@dataclass
class _Order:
    view: VenueOrder
    reserved_cash: float = 0.0


class PaperVenue:
    name = "paper"

    def __init__(self, cfg: PaperVenueConfig, symbols: list[str], quote: str) -> None:
        self.cfg = cfg
        self.quote = quote
        self.symbols = list(symbols)
        self.cash = cfg.initial_cash
        self.positions: dict[str, float] = {s: 0.0 for s in symbols}
        self._rules: dict[str, MarketRules] = {}
        self._last: dict[str, float] = {}
        self._orders: dict[str, _Order] = {}
        self._trades: list[VenueTrade] = []
        self._trade_listeners: list[TradeListener] = []
        self._order_listeners: list[OrderListener] = []
        self._seq = 0

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def markets(self) -> dict[str, MarketRules]:
        return dict(self._rules)

    def on_trade(self, listener: TradeListener) -> None:
        self._trade_listeners.append(listener)

    def on_order(self, listener: OrderListener) -> None:
        self._order_listeners.append(listener)

    # -- market data (called by the feed pump before the daemon sees the bars) -------------
    def on_bars(self, bars: list[Bar]) -> None:
        for bar in bars:
            if bar.symbol not in self._rules:
                self._rules[bar.symbol] = MarketRules.synthetic(
                    bar.symbol, bar.open, min_notional=self.cfg.min_notional)
            for order in [o for o in self._orders.values()
                          if o.view.status == "open" and o.view.symbol == bar.symbol]:
                self._match(order, bar)
            self._last[bar.symbol] = bar.close

    def _match(self, order: _Order, bar: Bar) -> None:
        v = order.view
        slip = self.cfg.slippage_bps / 10_000.0
        if v.order_type is OrderType.MARKET:
            price = bar.open * (1 + slip if v.side is Side.BUY else 1 - slip)
        elif v.side is Side.BUY and v.limit_price is not None and bar.low <= v.limit_price:
            price = min(bar.open, v.limit_price)
        elif v.side is Side.SELL and v.limit_price is not None and bar.high >= v.limit_price:
            price = max(bar.open, v.limit_price)
        else:
            return
        rules = self._rules[v.symbol]
        price = rules.round_price(price)
        qty = v.quantity - v.filled
        fee_rate = self.cfg.fee_bps / 10_000.0
        self.cash += order.reserved_cash  # release the hold; the fill pays the real amount
        order.reserved_cash = 0.0
        if v.side is Side.BUY:
            affordable = rules.floor_qty(self.cash / (price * (1 + fee_rate)))
            qty = min(qty, affordable)
        else:
            qty = min(qty, self.positions.get(v.symbol, 0.0))
        if qty <= 0:
            self._finish(order, "canceled", bar.ts)
            return
        fee = qty * price * fee_rate
        signed = qty if v.side is Side.BUY else -qty
        self.positions[v.symbol] = self.positions.get(v.symbol, 0.0) + signed
        self.cash -= signed * price + fee
        self._seq += 1
        trade = VenueTrade(trade_id=f"paper-{self._seq}", client_order_id=v.client_order_id,
                           venue_order_id=v.venue_order_id, symbol=v.symbol, side=v.side,
                           quantity=qty, price=price, fee=fee, ts=bar.ts)
        self._trades.append(trade)
        filled = v.filled + qty
        avg = ((v.average_price or 0.0) * v.filled + price * qty) / filled
        done = math.isclose(filled, v.quantity, rel_tol=1e-12) or filled >= v.quantity
        order.view = replace(v, filled=filled, average_price=avg,
                             status="closed" if done else "canceled", ts=bar.ts)
        for listener in self._trade_listeners:
            listener(trade)
        for olistener in self._order_listeners:
            olistener(order.view)

    def _finish(self, order: _Order, status: str, ts: datetime) -> None:
        self.cash += order.reserved_cash
        order.reserved_cash = 0.0
        order.view = replace(order.view, status=status, ts=ts)
        for listener in self._order_listeners:
            listener(order.view)

    # -- trading --------------------------------------------------------------------------
    async def submit(self, order: OrderRequest) -> VenueOrder:
        existing = self._orders.get(order.client_order_id)
        if existing is not None:
            return existing.view  # idempotent on client order id, like Binance's dup check
        rules = self._rules.get(order.symbol)
        if rules is None or order.symbol not in self._last:
            raise PermanentVenueError(f"unknown symbol or no market yet: {order.symbol}")
        price = order.limit_price if order.order_type is OrderType.LIMIT else \
            self._last[order.symbol]
        if price is None or not (order.quantity > 0 and price > 0):
            raise PermanentVenueError(f"invalid order: quantity={order.quantity} price={price}")
        broken = rules.violation(order.quantity, price)
        if broken is not None:
            code, ctx = broken
            raise PermanentVenueError(f"{code} " + " ".join(f"{k}={v}" for k, v in ctx.items()))
        reserve = 0.0
        if order.side is Side.BUY:
            # hold the order's value and fee at today's price, as an exchange holds the quote
            # for a buy; the fill pays the real amount and is cut to what the cash covers
            reserve = order.quantity * price * (1 + self.cfg.fee_bps / 10_000.0)
            if reserve > self.cash + 1e-9:
                raise PermanentVenueError(
                    f"insufficient funds: need={reserve:.2f} {self.quote} free={self.cash:.2f}")
            self.cash -= reserve
        else:
            free = self.positions.get(order.symbol, 0.0) - sum(
                o.view.quantity - o.view.filled for o in self._orders.values()
                if o.view.status == "open" and o.view.symbol == order.symbol
                and o.view.side is Side.SELL)
            if order.quantity > free + rules.amount_step * 1e-6:
                raise PermanentVenueError(
                    f"insufficient balance: sell={order.quantity} free={free} {order.symbol}")
        self._seq += 1
        view = VenueOrder(client_order_id=order.client_order_id, venue_order_id=f"P{self._seq}",
                          symbol=order.symbol, side=order.side, order_type=order.order_type,
                          quantity=order.quantity, filled=0.0, average_price=None,
                          status="open", ts=utcnow(), limit_price=order.limit_price)
        self._orders[order.client_order_id] = _Order(view=view, reserved_cash=reserve)
        return view

    async def cancel(self, client_order_id: str, symbol: str) -> VenueOrder:
        order = self._orders.get(client_order_id)
        if order is None:
            raise OrderNotFound(f"unknown order {client_order_id}")
        if order.view.status == "open":
            self._finish(order, "canceled", utcnow())
        return order.view

    async def fetch_order(self, client_order_id: str, symbol: str) -> VenueOrder:
        order = self._orders.get(client_order_id)
        if order is None:
            raise OrderNotFound(f"unknown order {client_order_id}")
        return order.view

    async def open_orders(self) -> list[VenueOrder]:
        return [o.view for o in self._orders.values() if o.view.status == "open"]

    async def balances(self) -> dict[str, float]:
        reserved = sum(o.reserved_cash for o in self._orders.values())
        out = {self.quote: self.cash + reserved}
        for symbol, qty in self.positions.items():
            out[symbol.split("/")[0]] = qty
        return out

    async def trades_since(self, since: datetime) -> list[VenueTrade]:
        return [t for t in self._trades if t.ts >= since]
