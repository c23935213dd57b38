"""A `Venue` on a real exchange API through `ccxt.async_support`: Binance spot testnet first;
any ccxt exchange id is accepted (Bybit and OKX are tested as far as construction and markets).

Money safety, in order of importance:

* Idempotent submit. When a submit fails in a way that may have reached the exchange (timeout,
  dropped connection, 5xx, unreadable reply), the client order id is remembered as ambiguous;
  the next submit of that id first asks the exchange for it by client order id and returns the
  existing order instead of sending again. Binance only refuses a duplicate client id while
  the first order is still open, so a filled market order would otherwise be bought twice.
  A "duplicate order" rejection is answered the same way.
* A cancel the exchange does not recognise is checked by client order id: Binance answers
  "unknown order" for an order that already filled, which must not be taken as "never existed".
* What is sent is quantised with `MarketRules` (Decimal): amounts floored to the lot step,
  limit prices rounded to the tick; local filter checks reject before a round trip.
* Fills come from three sources, each reported through `on_trade` and deduplicated by the OMS
  on the venue's trade id: the order response itself (Binance FULL), the user data stream
  (Binance executionReport), and REST polling of own trades (always on; faster while no stream
  is live, since a stream can lose messages without dropping).

Errors are classified once (`adapters.ccxt_exchange.classify`); Retry-After pauses every caller
through the token bucket. No message built here contains keys, signatures or the listen key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
from collections import Counter, deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import ccxt
import structlog

from adapters.binance_user_stream import (
    BinanceUserStream,
    MalformedMessage,
    parse_execution_report,
)
from adapters.ccxt_exchange import (
    NOT_PROCESSED,
    RATE_LIMITED,
    ExchangeConfig,
    build_exchange,
    classify,
    read_credentials,
    redact,
    reset_retry_after,
)
from adapters.tasks import stop_task
from adapters.throttle import Backoff, TokenBucket
from adapters.venue import (
    AuthenticationVenueError,
    OrderListener,
    OrderNotFound,
    OrderRequest,
    PermanentVenueError,
    TradeListener,
    TransientVenueError,
    VenueError,
    VenueOrder,
    VenueTrade,
)
from daemon.events import OrderType, Side, utcnow
from risk.market_rules import MarketRules

log = structlog.get_logger("ccxt_venue")

# Where each exchange wants our client order id. ccxt's unified `clientOrderId` works for most
# (bybit → orderLinkId, okx → clOrdId); Binance's own names are used for Binance.
_NEW_CLIENT_ID = {"binance": "newClientOrderId"}
_ORIG_CLIENT_ID = {"binance": "origClientOrderId"}
_STATUSES = {"open": "open", "closed": "closed", "canceled": "canceled",
             "cancelled": "canceled", "rejected": "rejected", "expired": "expired",
             "canceling": "open"}  # a cancel in flight: the order may still trade
_TRADES_PAGE = 500
_STARTUP_ATTEMPTS = 5


class MalformedReply(ValueError):
    """An exchange reply that lacks what we need (after ccxt parsed it)."""


class CcxtVenue:
    def __init__(self, cfg: ExchangeConfig, symbols: list[str], quote: str, *,
                 environ: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self.name = f"ccxt-{cfg.id}"
        self.symbols = list(symbols)
        self.quote = quote
        self.exchange: Any = None
        self.throttle = TokenBucket(cfg.max_requests_per_s, cfg.burst)
        self.counters: Counter[str] = Counter()
        self.user_stream: BinanceUserStream | None = None
        self._environ = environ
        self._secrets: tuple[str, ...] = ()
        self._rules: dict[str, MarketRules] = {}
        self._trade_listeners: list[TradeListener] = []
        self._order_listeners: list[OrderListener] = []
        self._cid_by_oid: dict[str, str] = {}
        self._ambiguous: set[str] = set()
        self._reported: set[str] = set()
        self._reported_order: deque[str] = deque()
        self._cursor: dict[str, int | None] = {}
        self._cursor_seen: dict[str, set[str]] = {}
        self._poll_now = asyncio.Event()
        self._poll_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._warned_fee_assets: set[str] = set()

    # ---- lifecycle ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Build the ccxt exchange and load markets: everything `markets()` needs, no private
        call yet (the first step of `start`)."""
        if self.exchange is not None:
            return
        credentials = read_credentials(self.cfg, dict(self._environ)
                                       if self._environ is not None else None)
        self._secrets = credentials.secrets()
        self.exchange = build_exchange(self.cfg, credentials)
        await self._startup("load_markets", self.load_markets)

    async def start(self) -> None:
        await self.connect()
        await self._startup("trade_cursor", self._init_cursors)
        self._tasks = [asyncio.create_task(self._refresh_markets_loop(), name="market-refresh"),
                       asyncio.create_task(self._fills_loop(), name="fills-poll")]
        if self.cfg.id == "binance" and self.cfg.stream.user_stream:
            self.user_stream = BinanceUserStream(
                self.cfg.market_ws_url(), self, self.cfg.stream, self._on_stream_message,
                self._on_stream_connected, self._redact, ws_api_url=self.cfg.ws_api_url())
            self.user_stream.start()
        log.info("venue_started", exchange=self.cfg.id, environment=self.cfg.environment,
                 markets={s: {"step": r.amount_step, "tick": r.price_tick,
                              "min_notional": r.min_notional} for s, r in self._rules.items()},
                 user_stream=self.user_stream is not None)

    async def close(self) -> None:
        for task in self._tasks:
            await stop_task(task)
        self._tasks = []
        if self.user_stream is not None:
            await self.user_stream.close()
        if self.exchange is not None:
            await self.exchange.close()
        log.info("venue_stats", **self.stats())

    def stats(self) -> dict[str, int]:
        """REST calls and ccxt errors by type, fills by source, resolutions, stream counters."""
        out = dict(self.counters)
        if self.user_stream is not None:
            out.update({f"user_stream_{k}": v for k, v in self.user_stream.counters.items()})
        out["throttle_waits"], out["throttle_pauses"] = self.throttle.waits, self.throttle.pauses
        return out

    async def _startup(self, what: str, step: Any) -> None:
        """Run a start-up step, retrying transient errors; if it fails for good, close the
        exchange (its HTTP session) so a failed start leaves nothing open."""
        backoff = Backoff(0.5, 8.0)
        try:
            for attempt in range(1, _STARTUP_ATTEMPTS + 1):
                try:
                    await step()
                    return
                except TransientVenueError as exc:
                    if attempt == _STARTUP_ATTEMPTS:
                        raise
                    log.warning("venue_start_retry", step=what, attempt=attempt,
                                error=str(exc))
                    await asyncio.sleep(max(backoff.next_delay(), exc.retry_after or 0.0))
        except BaseException:
            assert self.exchange is not None
            await self.exchange.close()
            self.exchange = None
            raise

    def markets(self) -> dict[str, MarketRules]:
        return dict(self._rules)

    def taker_fee_rate(self) -> float | None:
        """The highest taker fee rate (a fraction) among our markets as ccxt loaded them;
        None when ccxt gives none. It is the exchange's standard rate, not account discounts."""
        markets = getattr(self.exchange, "markets", None) or {}
        rates = [float(m["taker"]) for s in self.symbols if isinstance(m := markets.get(s), dict)
                 and isinstance(m.get("taker"), int | float) and not isinstance(m["taker"], bool)
                 and math.isfinite(m["taker"]) and 0 <= m["taker"] < 1]
        return max(rates) if rates else None

    def on_trade(self, listener: TradeListener) -> None:
        self._trade_listeners.append(listener)

    def on_order(self, listener: OrderListener) -> None:
        self._order_listeners.append(listener)

    # ---- REST plumbing ------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        extra = self.user_stream.secrets() if self.user_stream is not None else ()
        return redact(text, self._secrets + extra)

    async def _call(self, method: str, *args: Any) -> Any:
        """One ccxt call behind our token bucket, its failure classified. The raised error
        carries `not_processed` (a 429/418/clock refusal: a retry cannot duplicate)."""
        await self.throttle.acquire()
        reset_retry_after()
        self.counters["rest_calls"] += 1
        try:
            return await getattr(self.exchange, method)(*args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.counters[f"ccxt_{type(exc).__name__}"] += 1
            err = classify(exc, self._secrets)
            err.not_processed = isinstance(exc, NOT_PROCESSED)  # type: ignore[attr-defined]
            if isinstance(exc, RATE_LIMITED):
                # the exchange asked us to slow down: every caller waits, not just this one
                retry_after = getattr(err, "retry_after", None)
                self.throttle.pause(retry_after if retry_after is not None else 1.0)
            elif isinstance(exc, ccxt.InvalidNonce):
                # our clock drifted from the exchange's: measure the offset again
                with contextlib.suppress(Exception):
                    await self.exchange.load_time_difference()
            # `from None`: the ccxt exception's text may hold a signed URL
            raise err from None

    # ---- markets ------------------------------------------------------------------------

    async def load_markets(self, reload: bool = False) -> None:
        """(Re)load the exchange's markets into `MarketRules` for our symbols."""
        markets = await self._call("load_markets", reload)
        rules, missing = {}, []
        for symbol in self.symbols:
            market = markets.get(symbol) if isinstance(markets, dict) else None
            if market is None or market.get("active") is False or market.get("spot") is False:
                missing.append(symbol)
                continue
            try:
                rules[symbol] = MarketRules.from_ccxt(market)
            except (KeyError, TypeError, ValueError) as exc:
                raise TransientVenueError(f"market {symbol} unusable: {exc}") from None
        if missing:
            message = (f"not tradable as spot on {self.cfg.id} ({self.cfg.environment}): "
                       f"{', '.join(missing)}")
            if not self._rules:
                raise PermanentVenueError(message)
            log.error("markets_missing_on_refresh", symbols=missing, kept="previous rules")
            rules = {**self._rules, **rules}
        changed = {s for s in rules if self._rules.get(s) not in (None, rules[s])}
        if changed:
            log.warning("market_rules_changed", symbols=sorted(changed))
        self._rules = rules

    async def _refresh_markets_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.market_refresh_s)
            try:
                await self.load_markets(reload=True)
                self.counters["market_refreshes"] += 1
            except VenueError as exc:
                self.counters["market_refresh_failures"] += 1
                log.warning("market_refresh_failed", error=str(exc), kept="previous rules")

    def _symbol_of(self, market_id: str) -> str | None:
        by_id = getattr(self.exchange, "markets_by_id", None) or {}
        for market in by_id.get(market_id, []):
            if market.get("symbol") in self._rules:
                return str(market["symbol"])
        return None

    # ---- orders -------------------------------------------------------------------------

    async def submit(self, order: OrderRequest) -> VenueOrder:
        cid, symbol = order.client_order_id, order.symbol
        rules = self._rules.get(symbol)
        if rules is None:
            raise PermanentVenueError(f"{symbol} is not a loaded market on {self.cfg.id}")
        if cid in self._ambiguous:
            # an earlier attempt may have reached the exchange: ask before sending again
            existing = await self._find(cid, symbol)
            self._ambiguous.discard(cid)
            if existing is not None:
                self.counters["submit_resolved_by_client_id"] += 1
                log.info("order_found_by_client_id", client_order_id=cid,
                         status=existing.status, filled=existing.filled)
                self._poll_now.set()  # its fills were not in any reply we saw
                return existing
        amount, price = self._quantise(order, rules)
        params = {_NEW_CLIENT_ID.get(self.cfg.id, "clientOrderId"): cid}
        try:
            raw = await self._call("create_order", symbol, order.order_type.value,
                                   order.side.value, amount, price, params)
        except TransientVenueError as exc:
            if not getattr(exc, "not_processed", False):
                self._ambiguous.add(cid)
            raise
        except PermanentVenueError as exc:
            if "duplicate" in str(exc).lower():
                existing = await self._find(cid, symbol)
                if existing is not None:
                    self.counters["submit_resolved_duplicate"] += 1
                    self._poll_now.set()
                    return existing
            raise
        try:
            view = self._order_view(raw, cid, order)
            trades = [self._venue_trade(t, cid, view) for t in raw.get("trades") or []]
        except MalformedReply as exc:
            self._ambiguous.add(cid)  # accepted or not, we cannot tell from this reply
            self.counters["malformed_replies"] += 1
            raise TransientVenueError(f"unusable order reply for {cid}: {exc}") from None
        if trades:
            # after the OMS has seen the acceptance (this return), as the stream would order it
            asyncio.get_running_loop().call_soon(self._report_trades, trades)
        return view

    def _quantise(self, order: OrderRequest, rules: MarketRules) -> tuple[float, float | None]:
        amount = rules.floor_qty(order.quantity)
        if not (math.isfinite(amount) and amount > 0) or amount < rules.min_qty:
            raise PermanentVenueError(
                f"FILTER_MIN_QTY quantity={order.quantity} floored={amount} "
                f"step={rules.amount_step} min_qty={rules.min_qty}")
        if amount > rules.max_qty:
            raise PermanentVenueError(f"FILTER_MAX_QTY quantity={amount} max_qty={rules.max_qty}")
        if order.order_type is OrderType.MARKET:
            return amount, None
        if order.limit_price is None or not (math.isfinite(order.limit_price)
                                             and order.limit_price > 0):
            raise PermanentVenueError(f"invalid limit price {order.limit_price}")
        price = rules.round_price(order.limit_price)
        broken = rules.violation(amount, price)
        if broken is not None:
            code, ctx = broken
            raise PermanentVenueError(f"{code} " + " ".join(f"{k}={v}" for k, v in ctx.items()))
        return amount, price

    async def _find(self, cid: str, symbol: str) -> VenueOrder | None:
        """The exchange's order with our client id, or None when it has never seen it."""
        params = {_ORIG_CLIENT_ID.get(self.cfg.id, "clientOrderId"): cid}
        try:
            raw = await self._call("fetch_order", None, symbol, params)
        except OrderNotFound:
            return None
        try:
            return self._order_view(raw, cid)
        except MalformedReply as exc:
            raise TransientVenueError(f"unusable order reply for {cid}: {exc}") from None

    async def fetch_order(self, client_order_id: str, symbol: str) -> VenueOrder:
        found = await self._find(client_order_id, symbol)
        # a definite answer: a resend after "not found" need not ask again
        self._ambiguous.discard(client_order_id)
        if found is None:
            raise OrderNotFound(f"{self.cfg.id} has no order {client_order_id} on {symbol}")
        return found

    async def fetch_order_by_venue_id(self, venue_order_id: str, symbol: str) -> VenueOrder:
        """The order by the exchange's own id (what its trade reports name)."""
        raw = await self._call("fetch_order", venue_order_id, symbol)
        try:
            return self._order_view(raw)
        except MalformedReply as exc:
            raise TransientVenueError(f"unusable order reply for {venue_order_id}: {exc}") \
                from None

    async def cancel(self, client_order_id: str, symbol: str) -> VenueOrder:
        params = {_ORIG_CLIENT_ID.get(self.cfg.id, "clientOrderId"): client_order_id}
        try:
            raw = await self._call("cancel_order", None, symbol, params)
        except OrderNotFound:
            # Binance says "unknown order" for an order that already finished: look it up
            found = await self._find(client_order_id, symbol)
            if found is None:
                raise
            return found
        try:
            # the reply's clientOrderId is the cancel request's own id on Binance: keep ours
            return self._order_view(raw, client_order_id)
        except MalformedReply as exc:
            raise TransientVenueError(f"unusable cancel reply: {exc}") from None

    async def open_orders(self) -> list[VenueOrder]:
        out = []
        for symbol in self.symbols:
            for raw in await self._call("fetch_open_orders", symbol):
                try:
                    out.append(self._order_view(raw))
                except MalformedReply as exc:
                    self.counters["malformed_replies"] += 1
                    log.warning("open_order_unusable", symbol=symbol, error=str(exc))
        return out

    async def balances(self) -> dict[str, float]:
        raw = await self._call("fetch_balance")
        total = raw.get("total") if isinstance(raw, dict) else None
        if not isinstance(total, dict):
            raise TransientVenueError("balance reply without totals")
        out = {}
        for currency, amount in total.items():
            if isinstance(amount, int | float) and math.isfinite(amount):
                out[str(currency)] = float(amount)
        return out

    async def trades_since(self, since: datetime) -> list[VenueTrade]:
        out = []
        for symbol in self.symbols:
            out.extend(await self._symbol_trades(symbol, int(since.timestamp() * 1000)))
        return sorted(out, key=lambda t: t.ts)

    async def _symbol_trades(self, symbol: str, since_ms: int | None) -> list[VenueTrade]:
        out: dict[str, VenueTrade] = {}
        while True:
            raws = await self._call("fetch_my_trades", symbol, since_ms, _TRADES_PAGE)
            newest = since_ms
            for raw in raws:
                trade = await self._usable_trade(raw, symbol)
                if trade is None:
                    continue
                out[trade.trade_id] = trade
                ms = int(trade.ts.timestamp() * 1000)
                newest = ms if newest is None else max(newest, ms)
            if len(raws) < _TRADES_PAGE or newest == since_ms:
                return list(out.values())
            since_ms = newest

    # ---- ccxt structures → ours ---------------------------------------------------------

    def _order_view(self, raw: Any, cid: str | None = None,
                    request: OrderRequest | None = None) -> VenueOrder:
        if not isinstance(raw, dict):
            raise MalformedReply(f"order reply is {type(raw).__name__}")
        cid = cid or raw.get("clientOrderId")
        oid = raw.get("id")
        if not cid or oid in (None, ""):
            raise MalformedReply("order without id or client order id")
        symbol = raw.get("symbol") or (request.symbol if request else None)
        try:
            side = Side(raw.get("side") or (request.side if request else ""))
        except ValueError:
            raise MalformedReply(f"order side {raw.get('side')!r}") from None
        kind = raw.get("type") or (request.order_type.value if request else None)
        status = _STATUSES.get(raw.get("status") or "open")
        if symbol not in self._rules or status is None:
            raise MalformedReply(f"order symbol {symbol!r} or status {raw.get('status')!r}")
        amount = _number(raw.get("amount"), request.quantity if request else None, "amount")
        filled = _number(raw.get("filled"), 0.0, "filled")
        average = raw.get("average")
        average = float(average) if isinstance(average, int | float) and average > 0 else None
        price = raw.get("price")
        order_type = OrderType.MARKET if kind == "market" else OrderType.LIMIT
        self._cid_by_oid[str(oid)] = cid
        return VenueOrder(client_order_id=cid, venue_order_id=str(oid), symbol=symbol,
                          side=side, order_type=order_type, quantity=amount, filled=filled,
                          average_price=average, status=status, ts=_ts(raw.get("timestamp")),
                          limit_price=float(price) if order_type is OrderType.LIMIT
                          and isinstance(price, int | float) and price > 0 else None)

    def _venue_trade(self, raw: Any, cid: str, order: VenueOrder | None = None) -> VenueTrade:
        if not isinstance(raw, dict):
            raise MalformedReply(f"trade is {type(raw).__name__}")
        trade_id, oid = raw.get("id"), raw.get("order") or (order.venue_order_id if order else None)
        symbol = raw.get("symbol") or (order.symbol if order else None)
        if trade_id in (None, "") or oid in (None, "") or symbol not in self._rules:
            raise MalformedReply(f"trade id {trade_id!r}, order {oid!r}, symbol {symbol!r}")
        try:
            side = Side(raw.get("side") or (order.side if order else ""))
        except ValueError:
            raise MalformedReply(f"trade side {raw.get('side')!r}") from None
        qty = _number(raw.get("amount"), None, "trade amount")
        price = _number(raw.get("price"), None, "trade price")
        if qty <= 0 or price <= 0:
            raise MalformedReply(f"trade amount {qty} or price {price} not positive")
        fee, currency, fee_quote = self._fee(symbol, raw, qty * price)
        ts = _ts(raw.get("timestamp")) if raw.get("timestamp") or order is None else order.ts
        return VenueTrade(trade_id=str(trade_id), client_order_id=cid, venue_order_id=str(oid),
                          symbol=symbol, side=side, quantity=qty, price=price, fee=fee, ts=ts,
                          fee_currency=currency, fee_quote=fee_quote)

    def _fee(self, symbol: str, raw: dict[str, Any], notional: float
             ) -> tuple[float, str, float | None]:
        """(amount, currency, quote value or None) of a ccxt trade's fee, exactly as charged:
        converting it would book it against the wrong balance (a BTC fee taken from cash) and
        reconciliation with the exchange's balances would fail."""
        quote = self._rules[symbol].quote
        fees = raw.get("fees") or ([raw["fee"]] if raw.get("fee") else [])
        by_currency: dict[str, float] = {}
        rates: dict[str, float] = {}
        for f in fees:
            if not isinstance(f, dict) or not isinstance(f.get("cost"), int | float) \
                    or not math.isfinite(f["cost"]):
                continue
            if not f.get("currency"):
                self.counters["fee_currency_missing"] += 1  # ccxt's fee without its currency
            currency = str(f.get("currency") or quote)
            by_currency[currency] = by_currency.get(currency, 0.0) + float(f["cost"])
            if isinstance(f.get("rate"), int | float) and math.isfinite(f["rate"]):
                rates[currency] = float(f["rate"])
        charged = [(c, cost) for c, cost in by_currency.items() if cost]
        if not charged:
            return 0.0, quote, None
        if len(charged) > 1:
            # one trade, fees in two assets: Binance never does this; book the first exactly
            # and let reconciliation name the other asset's difference
            self.counters["fees_in_several_assets"] += 1
            log.error("fee_in_several_assets", symbol=symbol, fees=dict(charged))
        currency, cost = charged[0]
        base = self._rules[symbol].base
        if currency == base:
            self.counters["fees_in_base"] += 1
        elif currency != quote:
            # BNB with Binance's fee discount. ccxt gives a quote value only through the fee
            # rate, if the exchange reports one; otherwise the portfolio values it
            self.counters["fees_in_other_asset"] += 1
            if currency not in self._warned_fee_assets:
                self._warned_fee_assets.add(currency)
                log.info("fee_in_other_asset", symbol=symbol, asset=currency)
            rate = rates.get(currency)
            return cost, currency, notional * rate if rate is not None else None
        return cost, currency, None

    async def _usable_trade(self, raw: Any, symbol: str) -> VenueTrade | None:
        """`_trade_from_rest`, or None (counted and logged) for a trade we cannot book."""
        try:
            return await self._trade_from_rest(raw)
        except MalformedReply as exc:
            self.counters["malformed_trades"] += 1
            log.warning("trade_unusable", symbol=symbol, error=str(exc))
            return None

    async def _trade_from_rest(self, raw: Any) -> VenueTrade:
        if not isinstance(raw, dict):
            raise MalformedReply(f"trade is {type(raw).__name__}")
        oid, symbol = raw.get("order"), raw.get("symbol")
        if oid in (None, "") or symbol not in self._rules:
            raise MalformedReply(f"trade order {oid!r} symbol {symbol!r}")
        cid = self._cid_by_oid.get(str(oid))
        if cid is None:
            # Binance's trade list has no client order id: learn it from the order, once
            try:
                cid = (await self.fetch_order_by_venue_id(str(oid), symbol)).client_order_id
            except OrderNotFound:
                cid = f"unknown-{oid}"
                self._cid_by_oid[str(oid)] = cid
        return self._venue_trade(raw, cid)

    # ---- fills: reporting, stream, polling ------------------------------------------------

    def _report_trades(self, trades: list[VenueTrade]) -> None:
        for trade in trades:
            self._report_trade(trade)

    def _report_trade(self, trade: VenueTrade) -> None:
        if trade.trade_id in self._reported:
            self.counters["trades_already_reported"] += 1
            return
        self._reported.add(trade.trade_id)
        self._reported_order.append(trade.trade_id)
        if len(self._reported_order) > 50_000:  # bounded memory; the OMS dedupes anyway
            self._reported.discard(self._reported_order.popleft())
        self.counters["trades_reported"] += 1
        for listener in self._trade_listeners:
            try:
                listener(trade)
            except Exception as exc:  # one bad listener must not lose the fill for the rest
                self.counters["listener_errors"] += 1
                log.error("trade_listener_failed", trade_id=trade.trade_id, error=repr(exc))

    def _report_order(self, order: VenueOrder) -> None:
        for listener in self._order_listeners:
            try:
                listener(order)
            except Exception as exc:
                self.counters["listener_errors"] += 1
                log.error("order_listener_failed", client_order_id=order.client_order_id,
                          error=repr(exc))

    def _on_stream_message(self, msg: dict[str, Any]) -> None:
        if msg.get("e") != "executionReport":
            return
        try:
            report = parse_execution_report(msg, self._symbol_of)
        except MalformedMessage as exc:
            self.counters[f"stream_dropped_{exc.reason}"] += 1
            return
        self._cid_by_oid[report.order.venue_order_id] = report.order.client_order_id
        if report.trade is not None:
            self.counters["stream_trades"] += 1
            self._report_trade(report.trade)
        self._report_order(report.order)

    def _on_stream_connected(self) -> None:
        self._poll_now.set()  # whatever happened while the stream was down was not pushed

    async def _init_cursors(self) -> None:
        """Start polling after the newest trade that exists now: earlier trades are history
        (a restart's reconciliation reads them with `trades_since`), not fills to report."""
        for symbol in self.symbols:
            raws = await self._call("fetch_my_trades", symbol, None, _TRADES_PAGE)
            stamps = [(int(t["timestamp"]), str(t["id"])) for t in raws
                      if isinstance(t, dict) and t.get("timestamp") and t.get("id")]
            newest = max((ms for ms, _ in stamps), default=None)
            self._cursor[symbol] = newest
            self._cursor_seen[symbol] = {i for ms, i in stamps if ms == newest}
            self._reported.update(i for _, i in stamps)

    async def poll_trades(self) -> int:
        """Report own trades newer than the cursor; returns how many were new."""
        async with self._poll_lock:
            new = 0
            for symbol in self.symbols:
                new += await self._poll_symbol(symbol)
            self.counters["polls"] += 1
            return new

    async def _poll_symbol(self, symbol: str) -> int:
        new = 0
        while True:
            since = start = self._cursor.get(symbol)
            raws = await self._call("fetch_my_trades", symbol, since, _TRADES_PAGE)
            if not isinstance(raws, list):
                raise TransientVenueError("trade list reply is not a list")
            seen = self._cursor_seen.setdefault(symbol, set())
            rows = sorted((r for r in raws if isinstance(r, dict)),
                          key=lambda r: (r.get("timestamp") or 0, str(r.get("id"))))
            for raw in rows:
                if str(raw.get("id")) in seen:
                    continue
                trade = await self._usable_trade(raw, symbol)
                if trade is None:
                    continue
                ms = int(trade.ts.timestamp() * 1000)
                if since is None or ms > since:
                    since = ms
                    self._cursor[symbol] = ms
                    seen.clear()
                seen.add(trade.trade_id)
                if trade.trade_id not in self._reported:
                    new += 1
                    self.counters["poll_trades"] += 1
                self._report_trade(trade)
            if len(raws) < _TRADES_PAGE or since == start:
                return new  # a full page that did not move the cursor would repeat forever

    async def _fills_loop(self) -> None:
        while True:
            live = self.user_stream is not None and self.user_stream.live
            period = self.cfg.fills_audit_s if live else self.cfg.fills_poll_s
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await self._poll_now.wait()
            self._poll_now.clear()
            try:
                await self.poll_trades()
            except VenueError as exc:
                self.counters["poll_failures"] += 1
                log.warning("fills_poll_failed", error=str(exc))
            except Exception as exc:  # a bug here must not end fill reporting
                self.counters["poll_failures"] += 1
                log.error("fills_poll_error", error=self._redact(f"{type(exc).__name__}: {exc}"))

    # ---- the user stream's authentication ---------------------------------------------------

    def ws_api_signed_params(self) -> dict[str, Any]:
        """Signed params of userDataStream.subscribe.signature (Binance's WebSocket API rule:
        every param but the signature, sorted by name, `k=v` joined by `&`, HMAC-SHA256 with
        the secret). The timestamp is ccxt's nonce: the exchange clock as ccxt tracks it."""
        ex = self.exchange
        if ex is None or not ex.apiKey or not ex.secret:
            raise AuthenticationVenueError("no API key and secret to sign the user stream with")
        if "PRIVATE KEY" in ex.secret:
            raise AuthenticationVenueError(
                "user_stream_api = ws_api signs with HMAC keys only; this secret is an RSA or "
                "Ed25519 key (fills still arrive by REST polling)")
        params: dict[str, Any] = {"apiKey": ex.apiKey, "timestamp": int(ex.nonce())}
        payload = "&".join(f"{k}={params[k]}" for k in sorted(params))
        params["signature"] = hmac.new(ex.secret.encode(), payload.encode(),
                                       hashlib.sha256).hexdigest()
        return params

    # ---- listen key (the user stream's REST side, user_stream_api = listen_key) -----------

    async def create_listen_key(self) -> str:
        reply = await self._call("publicPostUserDataStream")
        key = reply.get("listenKey") if isinstance(reply, dict) else None
        if not isinstance(key, str) or not key:
            raise TransientVenueError("listen key reply without a listenKey")
        return key

    async def keepalive_listen_key(self, key: str) -> None:
        await self._call("publicPutUserDataStream", {"listenKey": key})

    async def close_listen_key(self, key: str) -> None:
        await self._call("publicDeleteUserDataStream", {"listenKey": key})


def _number(value: Any, default: float | None, what: str) -> float:
    if value is None:
        if default is None:
            raise MalformedReply(f"{what} missing")
        return float(default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedReply(f"{what} {value!r} is not a number")
    return float(value)


def _ts(ms: Any) -> datetime:
    if isinstance(ms, int | float) and not isinstance(ms, bool) and ms > 0:
        return datetime.fromtimestamp(ms / 1000, UTC)
    return utcnow()
