"""Request authentication exactly as Binance does it for HMAC keys.

REST: the signed payload is the raw (still percent-encoded) query string concatenated, without
a separator, to the raw body, with the `signature` parameter removed. Signing the *raw* text is
what catches a client that signs one encoding and sends another.

WebSocket API: the request's `params` except `signature`, sorted by name, as `name=value`
pairs joined by `&`; `apiKey` travels inside the params, not in a header.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from . import errors

MAX_RECV_WINDOW_MS = 60_000
DEFAULT_RECV_WINDOW_MS = 5_000
_KEY_FORMAT = re.compile(r"^[A-Za-z0-9]{1,128}$")


def sign(payload: str, secret: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Credentials:
    api_key: str
    api_secret: str

    def check_key(self, headers: Mapping[str, str]) -> None:
        """API-key-only endpoints (user data stream management)."""
        key = headers.get("X-MBX-APIKEY")
        if not key or not _KEY_FORMAT.match(key):
            raise errors.error(errors.BAD_KEY_FORMAT, 401)
        if not hmac.compare_digest(key, self.api_key):
            raise errors.error(errors.REJECTED_KEY, 401)

    def check_signed(self, headers: Mapping[str, str], raw_query: str, raw_body: str,
                     params: Mapping[str, str], now_ms: int | None = None) -> None:
        """SIGNED endpoints: key, then timestamp/recvWindow, then signature (Binance's order)."""
        self.check_key(headers)
        _check_time(params, now_ms)
        given = params.get("signature")
        if not given:
            raise errors.mandatory("signature")
        payload = _strip_signature(raw_query) + _strip_signature(raw_body)
        # HMAC signatures are case-insensitive on Binance.
        if not hmac.compare_digest(sign(payload, self.api_secret), given.lower()):
            raise errors.error(errors.BAD_SIGNATURE)

    def check_ws_signed(self, params: Mapping[str, object], now_ms: int | None = None) -> None:
        """A signed WebSocket API request (e.g. userDataStream.subscribe.signature)."""
        key = params.get("apiKey")
        if not isinstance(key, str) or not _KEY_FORMAT.match(key):
            raise errors.error(errors.BAD_KEY_FORMAT, 401)
        if not hmac.compare_digest(key, self.api_key):
            raise errors.error(errors.REJECTED_KEY, 401)
        _check_time({k: str(v) for k, v in params.items()}, now_ms)
        given = params.get("signature")
        if not isinstance(given, str) or not given:
            raise errors.mandatory("signature")
        payload = "&".join(f"{k}={_ws_text(params[k])}" for k in sorted(params)
                           if k != "signature")
        if not hmac.compare_digest(sign(payload, self.api_secret), given.lower()):
            raise errors.error(errors.BAD_SIGNATURE)


def _ws_text(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _check_time(params: Mapping[str, str], now_ms: int | None) -> None:
    """timestamp within recvWindow of the server's clock, and not 1 s ahead of it."""
    ts_raw = params.get("timestamp")
    if not ts_raw:
        raise errors.mandatory("timestamp")
    try:
        ts = int(ts_raw)
        # Binance accepts microseconds too; a 16-digit timestamp is one.
        ts = ts // 1000 if ts > 10**14 else ts
        recv = float(params.get("recvWindow", DEFAULT_RECV_WINDOW_MS))
    except ValueError as exc:
        raise errors.illegal("timestamp" if "recvWindow" not in params else "recvWindow") \
            from exc
    if recv > MAX_RECV_WINDOW_MS or recv <= 0:
        raise errors.error(errors.BAD_RECV_WINDOW)
    now = wall_ms() if now_ms is None else now_ms
    if ts >= now + 1000:
        raise errors.error(errors.TIMESTAMP_AHEAD)
    if now - ts > recv:
        raise errors.error(errors.TIMESTAMP_OUTSIDE)


def _strip_signature(raw: str) -> str:
    if not raw:
        return ""
    return "&".join(p for p in raw.split("&") if not p.startswith("signature="))
