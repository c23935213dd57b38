"""Binance's user data stream: executionReport events pushed over a websocket.

Two ways to open it (`[exchange.stream] user_stream_api`):

* `ws_api` (default): a connection to the WebSocket API and one signed
  `userDataStream.subscribe.signature` request; events arrive wrapped as
  `{"subscriptionId": n, "event": {...}}`, and `eventStreamTerminated` ends the subscription
  (we reconnect and subscribe again). Binance retired listen keys for Spot on 2026-02-20, so
  this is the only way left there. The request is signed by the venue (`UserStreamAuth`): the
  secret never reaches this module.
* `listen_key`: the listen key is created with POST /api/v3/userDataStream, kept alive with a
  PUT every `listen_key_keepalive_s` (it expires after 60 minutes without one) and closed with
  a DELETE at shutdown; the stream is `/ws/<listenKey>`.

Either way the stream reconnects with capped, jittered backoff; each (re)connection calls
`on_connected`, which the venue answers with a REST catch-up poll, since whatever happened
while the stream was down was not pushed to us.

Parsing is separate (`parse_execution_report`) and total: a malformed message is counted and
dropped, never raised into the daemon. The listen key is a bearer secret for the account's
events: it never appears in a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from adapters.ccxt_exchange import StreamConfig
from adapters.tasks import stop_task
from adapters.throttle import Backoff
from adapters.venue import AuthenticationVenueError, VenueError, VenueOrder, VenueTrade
from daemon.events import OrderType, Side
from daemon.redact import register_secret

log = structlog.get_logger("binance_user_stream")

_STATUS = {"NEW": "open", "PARTIALLY_FILLED": "open", "PENDING_CANCEL": "open",
           "FILLED": "closed", "CANCELED": "canceled", "REJECTED": "rejected",
           "EXPIRED": "expired", "EXPIRED_IN_MATCH": "expired"}


class ListenKeyApi(Protocol):
    async def create_listen_key(self) -> str: ...

    async def keepalive_listen_key(self, key: str) -> None: ...

    async def close_listen_key(self, key: str) -> None: ...


class UserStreamAuth(ListenKeyApi, Protocol):
    def ws_api_signed_params(self) -> dict[str, Any]:
        """`params` of a signed WebSocket API request: apiKey, timestamp, signature."""
        ...


SUBSCRIBE_TIMEOUT_S = 10.0
# The WebSocket API's answers that mean the key or its signature is wrong, not the network
_AUTH_CODES = {-1022, -2014, -2015}


@dataclass(frozen=True, slots=True)
class ExecutionReport:
    order: VenueOrder
    trade: VenueTrade | None


class MalformedMessage(ValueError):
    """A stream message we cannot use; `reason` is the counter it is dropped under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _num(msg: dict[str, Any], key: str) -> float:
    try:
        value = float(msg[key])
    except (KeyError, TypeError, ValueError):
        raise MalformedMessage("malformed", f"field {key!r} missing or not a number") from None
    if not math.isfinite(value):
        raise MalformedMessage("malformed", f"field {key!r} is not finite")
    return value


def parse_execution_report(msg: dict[str, Any], symbol_of: Callable[[str], str | None]
                           ) -> ExecutionReport:
    """An executionReport as our order view plus, for x=TRADE, the execution.

    `symbol_of('BTCUSDT') -> 'BTC/USDT'` (None: not a market we trade). The commission `n` is
    passed on exactly, in its asset `N` (Binance: the asset received, or BNB). A cancel report
    carries the cancel request's own id in `c` and the order's client id in `C`."""
    symbol = symbol_of(str(msg.get("s", "")))
    if symbol is None:
        raise MalformedMessage("unknown_symbol", f"symbol {msg.get('s')!r}")
    client_id = msg.get("C") or msg.get("c")
    if not isinstance(client_id, str) or not client_id:
        raise MalformedMessage("malformed", "no client order id")
    try:
        side = Side(str(msg["S"]).lower())
        status = _STATUS[str(msg["X"])]
        venue_order_id = str(int(msg["i"]))
        event_ms = int(msg.get("T") or msg["E"])
    except (KeyError, TypeError, ValueError):
        raise MalformedMessage("malformed", "side, status, order id or time unusable") from None
    order_type = OrderType.MARKET if msg.get("o") == "MARKET" else OrderType.LIMIT
    quantity, filled = _num(msg, "q"), _num(msg, "z")
    cum_quote = _num(msg, "Z") if "Z" in msg else 0.0
    price = _num(msg, "p") if "p" in msg else 0.0
    ts = datetime.fromtimestamp(event_ms / 1000, UTC)
    order = VenueOrder(client_order_id=client_id, venue_order_id=venue_order_id, symbol=symbol,
                       side=side, order_type=order_type, quantity=quantity, filled=filled,
                       average_price=cum_quote / filled if filled > 0 else None, status=status,
                       ts=ts, limit_price=price if order_type is OrderType.LIMIT and price > 0
                       else None)
    trade = None
    if msg.get("x") == "TRADE":
        qty, fill_price = _num(msg, "l"), _num(msg, "L")
        if qty <= 0 or fill_price <= 0:
            raise MalformedMessage("malformed", "trade with non-positive quantity or price")
        trade_id = msg.get("t")
        if isinstance(trade_id, bool) or not isinstance(trade_id, int | str) or \
                str(trade_id) in ("", "-1"):
            raise MalformedMessage("malformed", "trade without a trade id")
        commission = _num(msg, "n") if msg.get("n") not in (None, "") else 0.0
        asset = msg.get("N") if commission else None  # Binance sends N=null for no commission
        if commission and (not isinstance(asset, str) or not asset):
            raise MalformedMessage("malformed", "commission without its asset")
        trade = VenueTrade(trade_id=str(trade_id), client_order_id=client_id,
                           venue_order_id=venue_order_id, symbol=symbol, side=side,
                           quantity=qty, price=fill_price, fee=commission, ts=ts,
                           fee_currency=asset or "")
    return ExecutionReport(order=order, trade=trade)


class BinanceUserStream:
    """Keeps one user-data connection alive and hands every message to `on_message`."""

    def __init__(self, ws_base: str, api: UserStreamAuth, cfg: StreamConfig,
                 on_message: Callable[[dict[str, Any]], None],
                 on_connected: Callable[[], Awaitable[None] | None],
                 redact: Callable[[str], str], ws_api_url: str = "") -> None:
        self.ws_base = ws_base.rstrip("/")
        self.ws_api_url = ws_api_url
        self.api = api
        self.cfg = cfg
        self.on_message = on_message
        self.on_connected = on_connected
        self.redact = redact
        self.live = False
        self.counters: Counter[str] = Counter()
        self._key: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="binance-user-stream")

    async def close(self) -> None:
        await stop_task(self._task)
        self._task = None
        if self._key is not None:
            # best effort: an unclosed key expires by itself within the hour, so a throttle
            # pause or a dead network must not hold up shutdown
            with contextlib.suppress(VenueError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.api.close_listen_key(self._key)
            self._key = None

    def secrets(self) -> tuple[str, ...]:
        return (self._key,) if self._key else ()

    async def _run(self) -> None:
        backoff = Backoff(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)
        while True:
            try:
                await self._session(backoff)
            except asyncio.CancelledError:
                raise
            except AuthenticationVenueError as exc:
                self.counters["auth_refused"] += 1
                log.error("user_stream_auth_failed", error=self.redact(str(exc)),
                          fallback="REST polling of own trades")
            except VenueError as exc:
                self.counters["subscribe_failures"] += 1
                log.warning("user_stream_subscribe_failed", error=self.redact(str(exc)))
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake,
                    InvalidURI) as exc:
                log.warning("user_stream_disconnected",
                            error=self.redact(f"{type(exc).__name__}: {exc}"))
            except Exception as exc:  # a bug must not end fill reporting: log, back off, retry
                self.counters["errors"] += 1
                log.error("user_stream_error", error=self.redact(f"{type(exc).__name__}: {exc}"))
            self.live = False
            self.counters["reconnects"] += 1
            await asyncio.sleep(backoff.next_delay())

    async def _session(self, backoff: Backoff) -> None:
        if self.cfg.user_stream_api == "ws_api":
            await self._ws_api_session(backoff)
        else:
            await self._listen_key_session(backoff)

    def _connect(self, url: str) -> Any:
        return connect(url, ping_interval=self.cfg.ping_interval_s,
                       ping_timeout=self.cfg.ping_interval_s, open_timeout=10,
                       close_timeout=2, max_size=2**20, compression=None)

    async def _connected(self) -> None:
        self.live = True
        self.counters["connects"] += 1
        log.info("user_stream_connected", connects=self.counters["connects"],
                 api=self.cfg.user_stream_api)
        result = self.on_connected()
        if asyncio.iscoroutine(result):
            await result

    async def _ws_api_session(self, backoff: Backoff) -> None:
        async with self._connect(self.ws_api_url) as ws:
            try:
                sid = await self._subscribe(ws)
                self.counters["subscriptions"] += 1
                log.info("user_stream_subscribed", subscription_id=sid)
                await self._connected()
                async for raw in ws:
                    backoff.reset()  # the connection works: the next failure starts afresh
                    if self._handle_ws_api(raw):
                        return  # eventStreamTerminated: a new connection, a new subscription
            finally:
                self.live = False

    async def _subscribe(self, ws: Any) -> int:
        """Send the signed subscription and wait for its answer; its subscriptionId."""
        rid = uuid.uuid4().hex
        await ws.send(json.dumps({"id": rid, "method": "userDataStream.subscribe.signature",
                                  "params": self.api.ws_api_signed_params()}))
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
            while True:
                try:
                    reply = json.loads(await ws.recv())
                except (ValueError, TypeError):
                    self.counters["dropped_malformed"] += 1
                    continue
                if isinstance(reply, dict) and reply.get("id") == rid:
                    break
        result, error = reply.get("result"), reply.get("error")
        if reply.get("status") == 200 and isinstance(result, dict) and \
                isinstance(result.get("subscriptionId"), int):
            return int(result["subscriptionId"])
        code = error.get("code") if isinstance(error, dict) else None
        text = (f"userDataStream.subscribe.signature refused: status {reply.get('status')!r}, "
                f"code {code!r}, {error.get('msg') if isinstance(error, dict) else reply!r}")
        if code in _AUTH_CODES:
            raise AuthenticationVenueError(text)
        raise VenueError(text)

    def _handle_ws_api(self, raw: str | bytes) -> bool:
        """One WebSocket API message; True when the subscription ended."""
        msg = self._decode(raw)
        if msg is None:
            return False
        event = msg.get("event")
        if not isinstance(event, dict):
            # a reply to a request we did not send, or garbage: nothing we can use
            self.counters["replies_ignored" if "id" in msg else "dropped_malformed"] += 1
            return False
        if event.get("e") == "eventStreamTerminated":
            self.counters["stream_terminated"] += 1
            log.warning("user_stream_terminated", subscription_id=msg.get("subscriptionId"))
            return True
        return self._dispatch(event)

    async def _listen_key_session(self, backoff: Backoff) -> None:
        self._key = await self.api.create_listen_key()
        register_secret(self._key)  # scrubbed from every log line, whoever logs it
        url = f"{self.ws_base}/ws/{self._key}"
        async with self._connect(url) as ws:
            keepalive = asyncio.create_task(self._keepalive(ws), name="listen-key-keepalive")
            try:
                await self._connected()
                async for raw in ws:
                    backoff.reset()  # the connection works: the next failure starts afresh
                    if self._handle(raw):
                        return  # listenKeyExpired: reconnect with a new key
            finally:
                self.live = False
                await stop_task(keepalive)

    def _handle(self, raw: str | bytes) -> bool:
        """Dispatch one message; True when the session must end (listen key expired)."""
        msg = self._decode(raw)
        return False if msg is None else self._dispatch(msg)

    def _decode(self, raw: str | bytes) -> dict[str, Any] | None:
        """The message as a JSON object, or None (counted) when it is not one."""
        try:
            msg = json.loads(raw)
        except (ValueError, TypeError):
            msg = None
        if not isinstance(msg, dict):
            self.counters["dropped_malformed"] += 1
            return None
        return msg

    def _dispatch(self, msg: dict[str, Any]) -> bool:
        """Hand one event to `on_message`; True when the listen key expired."""
        event = msg.get("e")
        if event == "listenKeyExpired":
            self.counters["listen_key_expired"] += 1
            log.warning("user_stream_listen_key_expired")
            return True
        self.counters[f"events_{event}" if isinstance(event, str) else "dropped_malformed"] += 1
        if isinstance(event, str):
            self.on_message(msg)
        return False

    async def _keepalive(self, ws: Any) -> None:
        period = self.cfg.listen_key_keepalive_s
        while True:
            await asyncio.sleep(period)
            assert self._key is not None
            try:
                await self.api.keepalive_listen_key(self._key)
            except VenueError as exc:
                self.counters["keepalive_failures"] += 1
                log.warning("listen_key_keepalive_failed", error=self.redact(str(exc)))
                if isinstance(exc, AuthenticationVenueError) or "-1125" in str(exc) or \
                        "listenkey" in str(exc).lower():
                    await ws.close()  # the key is gone: reconnect with a new one
                    return
                period = min(self.cfg.listen_key_keepalive_s, 60.0)  # retry sooner
                continue
            self.counters["keepalives"] += 1
            period = self.cfg.listen_key_keepalive_s
