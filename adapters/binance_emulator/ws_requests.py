"""Binance's WebSocket API (`/ws-api/v3`), the part a user data stream needs.

Binance retired the listen key for Spot on 2026-02-20; account events now arrive on a WebSocket
API connection after `userDataStream.subscribe.signature` (a signed request: any session) or
`userDataStream.subscribe` (a session logged on with an Ed25519 key, not emulated here). Each
event is pushed wrapped as `{"subscriptionId": n, "event": {...}}`, and the end of a
subscription is announced with an `eventStreamTerminated` event.

Requests are `{"id", "method", "params"}`; replies `{"id", "status": 200, "result"}` or
`{"id", "status", "error": {"code", "msg"}}`, with Binance's codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import errors
from .auth import Credentials, wall_ms

UNKNOWN_METHOD = (-1000, "Unknown method.")  # not Binance's text: the emulator's own
ALREADY_SUBSCRIBED = (-1000, "A User Data Stream subscription for this account is already "
                             "active on this connection.")
NO_SUCH_SUBSCRIPTION = (-1000, "No such subscription.")


@dataclass
class WsApiSession:
    """One WebSocket API connection: its user data subscriptions (one account: at most one)."""

    subscriptions: set[int] = field(default_factory=set)
    next_id: int = 0

    def subscribe(self) -> int:
        if self.subscriptions:
            raise errors.error(ALREADY_SUBSCRIBED)
        sid = self.next_id
        self.next_id += 1
        self.subscriptions.add(sid)
        return sid


def handle(request: Any, session: WsApiSession, creds: Credentials
           ) -> tuple[dict[str, Any], list[int]]:
    """(reply, ids of subscriptions this request ended: each gets an eventStreamTerminated)."""
    if not isinstance(request, dict) or not isinstance(request.get("method"), str):
        return _error(None, errors.BinanceError(-1000, "Malformed request.")), []
    rid, method = request.get("id"), request["method"]
    params = request.get("params") or {}
    try:
        if not isinstance(params, dict):
            raise errors.illegal("params")
        if method == "ping":
            return _ok(rid, {}), []
        if method == "time":
            return _ok(rid, {"serverTime": wall_ms()}), []
        if method == "userDataStream.subscribe.signature":
            creds.check_ws_signed(params)
            return _ok(rid, {"subscriptionId": session.subscribe()}), []
        if method == "userDataStream.unsubscribe":
            ended = _unsubscribe(session, params.get("subscriptionId"))
            return _ok(rid, {}), ended
        if method == "session.subscriptions":
            return _ok(rid, [{"subscriptionId": s} for s in sorted(session.subscriptions)]), []
        raise errors.error(UNKNOWN_METHOD)
    except errors.BinanceError as exc:
        return _error(rid, exc), []


def _unsubscribe(session: WsApiSession, sid: Any) -> list[int]:
    if sid is None:  # no id: every subscription of the connection
        ended = sorted(session.subscriptions)
        session.subscriptions.clear()
        return ended
    if isinstance(sid, bool) or not isinstance(sid, int) or sid not in session.subscriptions:
        raise errors.error(NO_SUCH_SUBSCRIPTION)
    session.subscriptions.discard(sid)
    return [sid]


def terminated(sid: int) -> dict[str, Any]:
    return {"subscriptionId": sid, "event": {"e": "eventStreamTerminated", "E": wall_ms()}}


def _ok(rid: Any, result: Any) -> dict[str, Any]:
    return {"id": rid, "status": 200, "result": result}


def _error(rid: Any, exc: errors.BinanceError) -> dict[str, Any]:
    return {"id": rid, "status": exc.status, "error": {"code": exc.code, "msg": exc.msg}}
