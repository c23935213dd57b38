"""The REST API (aiohttp.web): Binance spot `/api/v3/...` plus the few `/sapi` and futures
endpoints that ccxt's `load_markets()` calls with its default options, so an unconfigured ccxt
instance works too (futures exchangeInfo answers with no symbols).

The middleware injects HTTP faults before a request is processed and, for order placement and
cancellation, after it ("response lost": the order exists but the client never hears of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from . import errors, payloads
from .auth import Credentials, wall_ms
from .bars import INTERVALS, KlineHistory, interval_name
from .errors import BinanceError
from .faults import FaultInjector
from .markets import fmt
from .matching import MatchingEngine, NewOrder
from .ws_api import ListenKeys

Params = dict[str, str]
_DECIMAL = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")
_CLIENT_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
_ORDER_PATHS = ("/api/v3/order",)


@dataclass(slots=True)
class ApiContext:
    engine: MatchingEngine
    history: KlineHistory
    creds: Credentials
    faults: FaultInjector
    listen_keys: ListenKeys
    interval_s: int
    stopping: asyncio.Event


CTX = web.AppKey("ctx", ApiContext)
_dumps = partial(json.dumps, separators=(",", ":"))


def build_app(ctx: ApiContext) -> web.Application:
    app = web.Application(middlewares=[_fault_and_error_middleware])
    app[CTX] = ctx
    r = app.router
    r.add_get("/api/v3/ping", _ping)
    r.add_get("/api/v3/time", _time)
    r.add_get("/api/v3/exchangeInfo", _exchange_info)
    r.add_get("/api/v3/klines", _klines)
    r.add_get("/api/v3/uiKlines", _klines)
    r.add_get("/api/v3/ticker/price", _ticker_price)
    r.add_get("/api/v3/ticker/24hr", _ticker_24hr)
    r.add_get("/api/v3/ticker/bookTicker", _book_ticker)
    r.add_get("/api/v3/account", _signed(_account))
    r.add_post("/api/v3/order", _signed(_new_order))
    r.add_post("/api/v3/order/test", _signed(_test_order))
    r.add_get("/api/v3/order", _signed(_query_order))
    r.add_delete("/api/v3/order", _signed(_cancel_order))
    r.add_get("/api/v3/openOrders", _signed(_open_orders))
    r.add_delete("/api/v3/openOrders", _signed(_cancel_all))
    r.add_get("/api/v3/allOrders", _signed(_all_orders))
    r.add_get("/api/v3/myTrades", _signed(_my_trades))
    for method in ("POST", "PUT", "DELETE"):
        r.add_route(method, "/api/v3/userDataStream", _user_data_stream)
    r.add_get("/sapi/v1/capital/config/getall", _signed(_coins))
    r.add_get("/sapi/v1/margin/allPairs", _signed(_empty_list))
    r.add_get("/sapi/v1/margin/isolated/allPairs", _signed(_empty_list))
    r.add_get("/fapi/v1/exchangeInfo", _no_symbols)
    r.add_get("/dapi/v1/exchangeInfo", _no_symbols)
    return app


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


def _error(exc: BinanceError, headers: dict[str, str] | None = None) -> web.Response:
    return _json(exc.body(), status=exc.status, headers=headers)


def _gateway_error(status: int) -> web.Response:
    # What a load balancer in front of the API returns: HTML, not Binance JSON.
    reason = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
              504: "Gateway Timeout"}[status]
    return web.Response(status=status, content_type="text/html",
                        text=f"<html><body><h1>{status} {reason}</h1></body></html>")


@web.middleware
async def _fault_and_error_middleware(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    ctx = request.app[CTX]
    faults = ctx.faults
    subject = faults.applies_to(request.path)
    if subject:
        if faults.roll("http_timeout"):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.stopping.wait(), faults.config.timeout_hold_s)
            if request.transport is not None:
                request.transport.close()
            return _gateway_error(504)
        retry = {"Retry-After": str(faults.config.retry_after_s)}
        if faults.roll("http_418"):
            return _error(errors.ip_banned(wall_ms() + faults.config.retry_after_s * 1000), retry)
        if faults.roll("http_429"):
            return _error(errors.too_many_requests(), retry)
        if faults.roll("http_5xx"):
            return _gateway_error(faults.choice((500, 502, 503)))
    try:
        response = await handler(request)
    except BinanceError as exc:
        return _error(exc)
    if (subject and request.path in _ORDER_PATHS and request.method in ("POST", "DELETE")
            and response.status == 200 and faults.roll("response_lost")):
        if faults.choice((0, 1)) and request.transport is not None:
            request.transport.close()  # the client sees the connection drop mid-request
        else:
            return _gateway_error(faults.choice((502, 503, 504)))
    return response


Handler = Callable[[web.Request, ApiContext, Params], Awaitable[web.StreamResponse]]


def _signed(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def wrapper(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CTX]
        raw_query = request.rel_url.raw_query_string
        raw_body = await request.text() if request.can_read_body else ""
        params = _parse(raw_query, raw_body)
        ctx.creds.check_signed(request.headers, raw_query, raw_body, params)
        return await handler(request, ctx, params)
    return wrapper


def _parse(raw_query: str, raw_body: str = "") -> Params:
    params = dict(parse_qsl(raw_query, keep_blank_values=True))
    params.update(parse_qsl(raw_body, keep_blank_values=True))
    return params


def _query(request: web.Request) -> Params:
    return _parse(request.rel_url.raw_query_string)


# ---- parameter helpers ----------------------------------------------------------------------

def _symbol(ctx: ApiContext, params: Params, required: bool = True) -> str | None:
    sid = params.get("symbol")
    if not sid:
        if required:
            raise errors.mandatory("symbol")
        return None
    if sid not in ctx.engine.specs:
        raise errors.error(errors.INVALID_SYMBOL)
    return sid


def _int(params: Params, name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.lstrip("-").isdigit():
        raise errors.illegal(name)
    return int(raw)


def _decimal(params: Params, name: str) -> Decimal | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not _DECIMAL.match(raw):
        raise errors.illegal(name)
    return Decimal(raw)


def _limit(params: Params, default: int = 500, maximum: int = 1000) -> int:
    limit = _int(params, "limit")
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise BinanceError(-1130, "Invalid data sent for a parameter.")
    return limit


# ---- public endpoints -----------------------------------------------------------------------

async def _ping(request: web.Request) -> web.Response:
    return _json({})


async def _time(request: web.Request) -> web.Response:
    # Wall-clock time, not market time: ccxt's timestamps (and adjustForTimeDifference) are
    # wall-clock, and the recvWindow check compares against this clock.
    return _json({"serverTime": wall_ms()})


def _exchange_info_body(symbols: list[dict[str, Any]]) -> dict[str, Any]:
    return {"timezone": "UTC", "serverTime": wall_ms(),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                 "limit": 6000},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10,
                 "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1,
                 "limit": 200000},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5,
                 "limit": 61000}],
            "exchangeFilters": [], "symbols": symbols}


async def _exchange_info(request: web.Request) -> web.Response:
    ctx, params = request.app[CTX], _query(request)
    wanted: list[str] | None = None
    if params.get("symbol"):
        wanted = [params["symbol"]]
    elif params.get("symbols"):
        try:
            wanted = [str(s) for s in json.loads(params["symbols"])]
        except ValueError as exc:
            raise errors.illegal("symbols") from exc
    specs = ctx.engine.specs
    if wanted is not None and any(s not in specs for s in wanted):
        raise errors.error(errors.INVALID_SYMBOL)
    return _json(_exchange_info_body([specs[s].info() for s in (wanted or sorted(specs))]))


async def _no_symbols(request: web.Request) -> web.Response:
    return _json(_exchange_info_body([]))


async def _klines(request: web.Request) -> web.Response:
    ctx, params = request.app[CTX], _query(request)
    sid = _symbol(ctx, params)
    assert sid is not None
    interval = params.get("interval")
    if not interval:
        raise errors.mandatory("interval")
    # Only the replayed interval exists here; others would need resampling we do not do.
    if interval not in INTERVALS or interval != interval_name(ctx.interval_s):
        raise errors.error(errors.INVALID_INTERVAL)
    bars = ctx.history.select(sid, _int(params, "startTime"), _int(params, "endTime"),
                              _limit(params))
    return _json([payloads.kline_row(b) for b in bars])


def _tickers(ctx: ApiContext, params: Params,
             render: Callable[[str], dict[str, Any] | None]) -> web.Response:
    sid = _symbol(ctx, params, required=False)
    if sid is not None:
        body = render(sid)
        if body is None:
            raise errors.error(errors.INVALID_SYMBOL)
        return _json(body)
    return _json([b for s in sorted(ctx.engine.specs) if (b := render(s)) is not None])


async def _ticker_price(request: web.Request) -> web.Response:
    ctx = request.app[CTX]

    def render(sid: str) -> dict[str, Any] | None:
        last = ctx.engine.last_price.get(sid)
        return None if last is None else {"symbol": sid, "price": fmt(last)}
    return _tickers(ctx, _query(request), render)


async def _book_ticker(request: web.Request) -> web.Response:
    ctx = request.app[CTX]

    def render(sid: str) -> dict[str, Any] | None:
        last = ctx.engine.last_price.get(sid)
        if last is None:
            return None
        tick = ctx.engine.specs[sid].tick
        return {"symbol": sid, "bidPrice": fmt(last - tick), "bidQty": fmt(1),
                "askPrice": fmt(last + tick), "askQty": fmt(1)}
    return _tickers(ctx, _query(request), render)


async def _ticker_24hr(request: web.Request) -> web.Response:
    ctx = request.app[CTX]

    def render(sid: str) -> dict[str, Any] | None:
        now = ctx.engine.now_ms
        bars = ctx.history.since(sid, now - 86_400_000)
        if not bars:
            return None
        o, c = bars[0].open, bars[-1].close
        volume = sum(b.volume for b in bars)
        quote_volume = sum(b.volume * b.close for b in bars)
        return {"symbol": sid, "priceChange": fmt(c - o),
                "priceChangePercent": f"{(c - o) / o * 100:.3f}",
                "weightedAvgPrice": fmt(quote_volume / volume if volume else c),
                "prevClosePrice": fmt(o), "lastPrice": fmt(c), "lastQty": fmt(0),
                "bidPrice": fmt(c), "bidQty": fmt(0), "askPrice": fmt(c), "askQty": fmt(0),
                "openPrice": fmt(o), "highPrice": fmt(max(b.high for b in bars)),
                "lowPrice": fmt(min(b.low for b in bars)), "volume": fmt(volume),
                "quoteVolume": fmt(quote_volume), "openTime": now - 86_400_000,
                "closeTime": now - 1, "firstId": -1, "lastId": -1, "count": 0}
    return _tickers(ctx, _query(request), render)


# ---- signed endpoints -----------------------------------------------------------------------

async def _account(request: web.Request, ctx: ApiContext, params: Params) -> web.Response:
    acct, engine = ctx.engine.account, ctx.engine
    rate = fmt(engine.fee_rate)
    bps = int(engine.fee_rate * 10_000)
    omit_zero = params.get("omitZeroBalances", "").lower() == "true"
    balances = [{"asset": a, "free": fmt(acct.free.get(a, 0)),
                 "locked": fmt(acct.locked.get(a, 0))} for a in acct.assets()
                if not omit_zero or acct.free.get(a, 0) or acct.locked.get(a, 0)]
    return _json({"makerCommission": bps, "takerCommission": bps, "buyerCommission": 0,
                  "sellerCommission": 0,
                  "commissionRates": {"maker": rate, "taker": rate, "buyer": fmt(0),
                                      "seller": fmt(0)},
                  "canTrade": True, "canWithdraw": True, "canDeposit": True,
                  "brokered": False, "requireSelfTradePrevention": False, "preventSor": False,
                  "updateTime": acct.update_time, "accountType": "SPOT", "balances": balances,
                  "permissions": ["SPOT"], "uid": 354937868})


def _order_request(ctx: ApiContext, params: Params) -> tuple[NewOrder, str]:
    sid = _symbol(ctx, params)
    assert sid is not None
    side = params.get("side")
    if not side:
        raise errors.mandatory("side")
    if side not in ("BUY", "SELL"):
        raise errors.error(errors.INVALID_SIDE)
    otype = params.get("type")
    if not otype:
        raise errors.mandatory("type")
    if otype not in ("MARKET", "LIMIT", "LIMIT_MAKER"):
        raise errors.error(errors.INVALID_ORDER_TYPE)
    qty, quote_qty = _decimal(params, "quantity"), _decimal(params, "quoteOrderQty")
    price, tif = _decimal(params, "price"), params.get("timeInForce")
    if otype == "MARKET":
        if qty is None and quote_qty is None:
            raise BinanceError(-1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but "
                               "both were empty/null!")
        for name, value in (("price", price), ("timeInForce", tif)):
            if value is not None:
                raise errors.not_required(name)
    else:
        if qty is None:
            raise errors.mandatory("quantity")
        if price is None:
            raise errors.mandatory("price")
        if otype == "LIMIT" and not tif:
            raise errors.mandatory("timeInForce")
        if tif is not None and tif not in ("GTC", "IOC", "FOK"):
            raise errors.error(errors.INVALID_TIF)
    client_id = params.get("newClientOrderId") or None
    if client_id is not None and not _CLIENT_ID.match(client_id):
        raise errors.illegal("newClientOrderId")
    resp_type = params.get("newOrderRespType") or "FULL"
    if resp_type not in ("ACK", "RESULT", "FULL"):
        raise BinanceError(-1131, "Invalid newOrderRespType.")
    return NewOrder(symbol_id=sid, side=side, type=otype, quantity=qty, quote_qty=quote_qty,
                    price=price, time_in_force=tif, client_order_id=client_id), resp_type


async def _new_order(request: web.Request, ctx: ApiContext, params: Params) -> web.Response:
    req, resp_type = _order_request(ctx, params)
    order, fills = ctx.engine.place(req)
    if resp_type == "ACK":
        return _json(payloads.order_ack(order))
    if resp_type == "RESULT":
        return _json(payloads.order_result(order))
    return _json(payloads.order_full(order, fills))


async def _test_order(request: web.Request, ctx: ApiContext, params: Params) -> web.Response:
    req, _ = _order_request(ctx, params)
    ctx.engine.check(req)
    return _json({})


async def _query_order(request: web.Request, ctx: ApiContext, params: Params) -> web.Response:
    sid = _symbol(ctx, params)
    assert sid is not None
    order = ctx.engine.lookup(sid, _int(params, "orderId"), params.get("origClientOrderId"))
    return _json(payloads.order_query(order))


async def _cancel_order(request: web.Request, ctx: ApiContext, params: Params) -> web.Response:
    sid = _symbol(ctx, params)
    assert sid is not None
    order, cancel_id = ctx.engine.cancel(sid, _int(params, "orderId"),
                                         params.get("origClientOrderId"),
                                         params.get("newClientOrderId"))
    return _json(payloads.cancel_result(order, cancel_id, ctx.engine.now_ms))


async def _open_orders(request: web.Request, ctx: ApiContext, params: Params) -> web.Response:
    sid = _symbol(ctx, params, required=False)
    return _json([payloads.order_query(o) for o in ctx.engine.open_orders(sid)])


async def _cancel_all(request: web.Request, ctx: ApiContext, params: Params) -> web.Response:
    sid = _symbol(ctx, params)
    assert sid is not None
    open_orders = ctx.engine.open_orders(sid)
    if not open_orders:
        raise errors.error(errors.UNKNOWN_ORDER)
    out = []
    for order in open_orders:
        _, cancel_id = ctx.engine.cancel(sid, order.order_id, None)
        out.append(payloads.cancel_result(order, cancel_id, ctx.engine.now_ms))
    return _json(out)


async def _all_orders(request: web.Request, ctx: ApiContext, params: Params) -> web.Response:
    sid = _symbol(ctx, params)
    assert sid is not None
    orders = ctx.engine.all_orders(sid, _int(params, "orderId"), _int(params, "startTime"),
                                   _int(params, "endTime"), _limit(params))
    return _json([payloads.order_query(o) for o in orders])


async def _my_trades(request: web.Request, ctx: ApiContext, params: Params) -> web.Response:
    sid = _symbol(ctx, params)
    assert sid is not None
    trades = ctx.engine.my_trades(sid, _int(params, "orderId"), _int(params, "startTime"),
                                  _int(params, "endTime"), _int(params, "fromId"),
                                  _limit(params))
    return _json([payloads.my_trade(t) for t in trades])


async def _user_data_stream(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    ctx.creds.check_key(request.headers)
    if request.method == "POST":
        return _json({"listenKey": ctx.listen_keys.create()})
    params = _parse(request.rel_url.raw_query_string,
                    await request.text() if request.can_read_body else "")
    key = params.get("listenKey")
    if not key:
        raise errors.mandatory("listenKey")
    if request.method == "PUT":
        ctx.listen_keys.keepalive(key)
    else:
        ctx.listen_keys.close(key)
    return _json({})


async def _coins(request: web.Request, ctx: ApiContext, params: Params) -> web.Response:
    acct = ctx.engine.account
    assets = set(acct.assets())
    for spec in ctx.engine.specs.values():
        assets.update((spec.base, spec.quote))
    return _json([{"coin": a, "name": a, "free": fmt(acct.free.get(a, 0)),
                   "locked": fmt(acct.locked.get(a, 0)), "freeze": fmt(0),
                   "withdrawing": fmt(0), "ipoing": fmt(0), "ipoable": fmt(0),
                   "storage": fmt(0), "isLegalMoney": False, "trading": True,
                   "depositAllEnable": False, "withdrawAllEnable": False,
                   "networkList": []} for a in sorted(assets)])


async def _empty_list(request: web.Request, ctx: ApiContext, params: Params) -> web.Response:
    return _json([])
