"""Websocket streams: kline market streams and the user data stream, Binance-style.

Paths: `/ws/<stream>` (raw payloads), `/stream?streams=<a>/<b>` (combined: each payload wrapped
as `{"stream": name, "data": payload}`), `/ws/<listenKey>` (user data: executionReport and
outboundAccountPosition; Binance retired it for Spot, kept for older clients), and
`/ws-api/v3`, the WebSocket API, where a signed `userDataStream.subscribe.signature` starts the
user data stream on that connection (`ws_requests`). Market-stream connections also accept
Binance's JSON control messages SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS. Faults
(disconnect, stall, duplicate, reorder) are applied per outgoing data message, never to replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from . import errors, ws_requests
from .auth import Credentials
from .faults import FaultInjector
from .ws_requests import WsApiSession

LISTEN_KEY_TTL_S = 3600.0


class ListenKeys:
    """One account, so one live key at a time: Binance returns the active key again (and
    extends it) when asked for a new one while it is still valid."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}

    def create(self) -> str:
        now = time.monotonic()
        for key, expiry in self._expiry.items():
            if expiry > now:
                self._expiry[key] = now + LISTEN_KEY_TTL_S
                return key
        key = secrets.token_hex(30)
        self._expiry[key] = now + LISTEN_KEY_TTL_S
        return key

    def keepalive(self, key: str) -> None:
        if not self.valid(key):
            raise errors.error(errors.INVALID_LISTEN_KEY)
        self._expiry[key] = time.monotonic() + LISTEN_KEY_TTL_S

    def close(self, key: str) -> None:
        if self._expiry.pop(key, None) is None:
            raise errors.error(errors.INVALID_LISTEN_KEY)

    def valid(self, key: str) -> bool:
        return self._expiry.get(key, 0.0) > time.monotonic()


class _Client:
    def __init__(self, conn: ServerConnection, streams: set[str], combined: bool,
                 session: WsApiSession | None = None) -> None:
        self.conn = conn
        self.streams = streams
        self.combined = combined
        self.session = session  # a WebSocket API connection, not a market stream
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.stalled_until = 0.0


class StreamHub:
    def __init__(self, faults: FaultInjector, listen_keys: ListenKeys,
                 creds: Credentials) -> None:
        self.faults = faults
        self.listen_keys = listen_keys
        self.creds = creds
        self._clients: set[_Client] = set()
        self._server: Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self._server = await serve(self._handle, host, port, compression=None)
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def connections(self) -> int:
        return len(self._clients)

    def publish_market(self, stream: str, payload: dict[str, Any]) -> None:
        self._publish(stream, payload)

    def publish_user(self, payload: dict[str, Any]) -> None:
        self._publish(None, payload)

    def terminate_user_streams(self) -> int:
        """End every WebSocket API user data subscription, as Binance does at a session's
        end or in maintenance: each gets an `eventStreamTerminated`. Returns how many."""
        ended = 0
        for client in self._clients:
            if client.session is not None:
                for sid in sorted(client.session.subscriptions):
                    client.queue.put_nowait(json.dumps(ws_requests.terminated(sid)))
                    ended += 1
                client.session.subscriptions.clear()
        return ended

    def _publish(self, stream: str | None, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload, separators=(",", ":"))
        for client in self._clients:
            if client.session is not None:
                if stream is None:
                    for sid in client.session.subscriptions:
                        client.queue.put_nowait(f'{{"subscriptionId":{sid},"event":{raw}}}')
                continue
            name = stream
            if stream is None:  # user data goes to every connection holding a live listen key
                name = next((s for s in client.streams if self.listen_keys.valid(s)), None)
                if name is None:
                    continue
            elif stream not in client.streams:
                continue
            if client.combined:
                client.queue.put_nowait(f'{{"stream":{json.dumps(name)},"data":{raw}}}')
            else:
                client.queue.put_nowait(raw)

    async def _handle(self, conn: ServerConnection) -> None:
        assert conn.request is not None
        url = urlsplit(conn.request.path)
        session = None
        if url.path == "/ws-api/v3":
            streams, combined, session = set(), False, WsApiSession()
        elif url.path == "/stream":
            names = parse_qs(url.query).get("streams", [""])[0]
            streams, combined = {s for s in names.split("/") if s}, True
        elif url.path == "/ws" or url.path.startswith("/ws/"):
            name = url.path[len("/ws/"):]
            streams, combined = ({name} if name else set()), False
        else:
            await conn.close(1008, "unknown path")
            return
        # A listen-key-shaped name that is not live is refused; other names without '@' are
        # accepted as empty (ccxt.pro connects to /ws/<n> and then SUBSCRIBEs).
        for s in streams:
            if "@" not in s and len(s) >= 60 and not self.listen_keys.valid(s):
                await conn.close(1008, "invalid listen key")
                return
        client = _Client(conn, streams, combined, session)
        self._clients.add(client)
        writer = asyncio.create_task(self._write(client))
        try:
            await self._read(client)
        finally:
            self._clients.discard(client)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _read(self, client: _Client) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in client.conn:
                if client.session is not None:
                    await self._ws_api_request(client, client.session, message)
                    continue
                try:
                    req = json.loads(message)
                    method, rid = req["method"], req.get("id")
                    params = [str(p) for p in req.get("params", [])]
                except (ValueError, KeyError, TypeError):
                    await client.conn.send(json.dumps(
                        {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"}))
                    continue
                if method == "SUBSCRIBE":
                    client.streams.update(params)
                    reply: dict[str, Any] = {"result": None, "id": rid}
                elif method == "UNSUBSCRIBE":
                    client.streams.difference_update(params)
                    reply = {"result": None, "id": rid}
                elif method == "LIST_SUBSCRIPTIONS":
                    reply = {"result": sorted(client.streams), "id": rid}
                else:
                    reply = {"code": 2, "msg": f"Invalid request: unknown variant {method}"}
                await client.conn.send(json.dumps(reply))

    async def _ws_api_request(self, client: _Client, session: WsApiSession,
                              message: str | bytes) -> None:
        try:
            request = json.loads(message)
        except ValueError:
            request = None
        reply, ended = ws_requests.handle(request, session, self.creds)
        await client.conn.send(json.dumps(reply))
        for sid in ended:  # after the reply, as Binance orders them
            await client.conn.send(json.dumps(ws_requests.terminated(sid)))

    async def _write(self, client: _Client) -> None:
        faults, loop = self.faults, asyncio.get_running_loop()
        held: str | None = None
        try:
            while True:
                try:
                    timeout = faults.config.ws_reorder_flush_s if held is not None else None
                    message = await asyncio.wait_for(client.queue.get(), timeout)
                except TimeoutError:
                    assert held is not None
                    await client.conn.send(held)
                    held = None
                    continue
                if loop.time() < client.stalled_until:
                    continue  # a stalled connection silently loses what it should have sent
                if faults.roll("ws_disconnect"):
                    # An abrupt TCP drop, not a clean close frame: what a network failure does.
                    client.conn.transport.abort()
                    return
                if faults.roll("ws_stall"):
                    client.stalled_until = loop.time() + faults.config.ws_stall_s
                    continue
                if held is None and faults.roll("ws_reorder"):
                    held = message
                    continue
                await client.conn.send(message)
                if faults.roll("ws_duplicate"):
                    await client.conn.send(message)
                if held is not None:
                    await client.conn.send(held)
                    held = None
        except ConnectionClosed:
            return
