"""JSON bodies and stream events, field for field as Binance's spot API documents them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from daemon.events import Bar

from .bars import interval_name, to_ms
from .markets import fmt, market_id
from .state import Account, Order, Trade


def order_ack(o: Order) -> dict[str, Any]:
    return {"symbol": o.symbol_id, "orderId": o.order_id, "orderListId": -1,
            "clientOrderId": o.client_order_id, "transactTime": o.time}


def order_result(o: Order) -> dict[str, Any]:
    return {**order_ack(o), "price": fmt(o.price), "origQty": fmt(o.orig_qty),
            "executedQty": fmt(o.executed_qty), "origQuoteOrderQty": fmt(o.orig_quote_qty),
            "cummulativeQuoteQty": fmt(o.cum_quote), "status": o.status,
            "timeInForce": o.time_in_force, "type": o.type, "side": o.side,
            "workingTime": o.time, "selfTradePreventionMode": "NONE"}


def order_full(o: Order, fills: Iterable[Trade]) -> dict[str, Any]:
    return {**order_result(o), "fills": [
        {"price": fmt(t.price), "qty": fmt(t.qty), "commission": fmt(t.commission),
         "commissionAsset": t.commission_asset, "tradeId": t.trade_id} for t in fills]}


def order_query(o: Order) -> dict[str, Any]:
    return {"symbol": o.symbol_id, "orderId": o.order_id, "orderListId": -1,
            "clientOrderId": o.client_order_id, "price": fmt(o.price),
            "origQty": fmt(o.orig_qty), "executedQty": fmt(o.executed_qty),
            "cummulativeQuoteQty": fmt(o.cum_quote), "status": o.status,
            "timeInForce": o.time_in_force, "type": o.type, "side": o.side,
            "stopPrice": fmt(0), "icebergQty": fmt(0), "time": o.time,
            "updateTime": o.update_time or o.time, "isWorking": o.type != "MARKET",
            "workingTime": o.time, "origQuoteOrderQty": fmt(o.orig_quote_qty),
            "selfTradePreventionMode": "NONE"}


def cancel_result(o: Order, cancel_client_id: str, now: int) -> dict[str, Any]:
    return {"symbol": o.symbol_id, "origClientOrderId": o.client_order_id,
            "orderId": o.order_id, "orderListId": -1, "clientOrderId": cancel_client_id,
            "transactTime": now, "price": fmt(o.price), "origQty": fmt(o.orig_qty),
            "executedQty": fmt(o.executed_qty), "origQuoteOrderQty": fmt(o.orig_quote_qty),
            "cummulativeQuoteQty": fmt(o.cum_quote), "status": o.status,
            "timeInForce": o.time_in_force, "type": o.type, "side": o.side,
            "selfTradePreventionMode": "NONE"}


def my_trade(t: Trade) -> dict[str, Any]:
    return {"symbol": t.symbol_id, "id": t.trade_id, "orderId": t.order_id, "orderListId": -1,
            "price": fmt(t.price), "qty": fmt(t.qty), "quoteQty": fmt(t.quote_qty),
            "commission": fmt(t.commission), "commissionAsset": t.commission_asset,
            "time": t.time, "isBuyer": t.side == "BUY", "isMaker": t.is_maker,
            "isBestMatch": True}


def execution_report(o: Order, exec_type: str, now: int, trade: Trade | None = None,
                     cancel_client_id: str | None = None) -> dict[str, Any]:
    last_qty = trade.qty if trade else 0
    last_price = trade.price if trade else 0
    return {
        "e": "executionReport", "E": now, "s": o.symbol_id,
        # As on Binance, a cancel reports the cancel request's own id in `c` and the order's
        # client id in `C`: a consumer keyed on `c` alone misses cancels.
        "c": cancel_client_id if cancel_client_id else o.client_order_id,
        "S": o.side, "o": o.type, "f": o.time_in_force, "q": fmt(o.orig_qty),
        "p": fmt(o.price), "P": fmt(0), "F": fmt(0), "g": -1,
        "C": o.client_order_id if cancel_client_id else "",
        "x": exec_type, "X": o.status, "r": "NONE", "i": o.order_id,
        "l": fmt(last_qty), "z": fmt(o.executed_qty), "L": fmt(last_price),
        "n": fmt(trade.commission) if trade else "0",
        "N": trade.commission_asset if trade else None,
        "T": trade.time if trade else now, "t": trade.trade_id if trade else -1,
        "I": o.order_id * 10 + (1 if trade else 0), "w": o.is_open and o.type != "MARKET",
        "m": trade.is_maker if trade else False, "M": False, "O": o.time,
        "Z": fmt(o.cum_quote), "Y": fmt(trade.quote_qty) if trade else fmt(0),
        "Q": fmt(o.orig_quote_qty), "W": o.time, "V": "NONE",
    }


def account_position(acct: Account, assets: Iterable[str], now: int) -> dict[str, Any]:
    return {"e": "outboundAccountPosition", "E": now, "u": acct.update_time,
            "B": [{"a": a, "f": fmt(acct.free.get(a, 0)), "l": fmt(acct.locked.get(a, 0))}
                  for a in sorted(set(assets))]}


def kline_row(bar: Bar) -> list[Any]:
    start = to_ms(bar.ts)
    quote_volume = bar.volume * bar.close
    return [start, fmt(bar.open), fmt(bar.high), fmt(bar.low), fmt(bar.close),
            fmt(bar.volume), start + bar.interval_s * 1000 - 1, fmt(quote_volume),
            _trade_count(bar), fmt(bar.volume / 2), fmt(quote_volume / 2), "0"]


def kline_event(bar: Bar, closed: bool, event_time: int) -> dict[str, Any]:
    row = kline_row(bar)
    sid = market_id(bar.symbol)
    return {"e": "kline", "E": event_time, "s": sid, "k": {
        "t": row[0], "T": row[6], "s": sid, "i": interval_name(bar.interval_s),
        "f": -1, "L": -1, "o": row[1], "c": row[4], "h": row[2], "l": row[3], "v": row[5],
        "n": row[8], "x": closed, "q": row[7], "V": row[9], "Q": row[10], "B": "0"}}


def _trade_count(bar: Bar) -> int:
    # Not in the CSVs; a stable, plausible count keeps payloads deterministic.
    return max(1, int(bar.volume) % 10_000)
