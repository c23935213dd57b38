"""Binance's error codes and messages, verbatim, so ccxt maps them to its exception classes.

ccxt matches the exact `msg` first and the `code` second (see `binance.handle_errors`): the
message text matters, e.g. -2010 with "Account has insufficient balance for requested action."
becomes InsufficientFunds while any other -2010 becomes InvalidOrder.
"""

from __future__ import annotations


class BinanceError(Exception):
    """A rejected request, rendered as `{"code": code, "msg": msg}` with HTTP `status`."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(f"{code} {msg}")
        self.code, self.msg, self.status = code, msg, status

    def body(self) -> dict[str, int | str]:
        return {"code": self.code, "msg": self.msg}


def too_many_requests() -> BinanceError:
    return BinanceError(-1003, "Too much request weight used; current limit is 6000 request weight "
                        "per 1 MINUTE. Please use WebSocket Streams for live updates to avoid "
                        "polling the API.", 429)


def ip_banned(until_ms: int) -> BinanceError:
    return BinanceError(-1003, f"Way too much request weight used; IP banned until {until_ms}. "
                        "Please use WebSocket Streams for live updates to avoid bans.", 418)


def mandatory(name: str) -> BinanceError:
    return BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, "
                        "or malformed.")


def illegal(name: str) -> BinanceError:
    return BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is "
                        "'^([0-9]{1,20})(\\.[0-9]{1,20})?$'.")


def not_required(name: str) -> BinanceError:
    return BinanceError(-1106, f"Parameter '{name}' sent when not required.")


INVALID_SYMBOL = (-1121, "Invalid symbol.")
INVALID_INTERVAL = (-1120, "Invalid interval.")
INVALID_ORDER_TYPE = (-1116, "Invalid orderType.")
INVALID_SIDE = (-1117, "Invalid side.")
INVALID_TIF = (-1115, "Invalid timeInForce.")
INVALID_LISTEN_KEY = (-1125, "This listenKey does not exist.")
BAD_RECV_WINDOW = (-1131, "recvWindow must be less than 60000")
TIMESTAMP_OUTSIDE = (-1021, "Timestamp for this request is outside of the recvWindow.")
TIMESTAMP_AHEAD = (-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
BAD_SIGNATURE = (-1022, "Signature for this request is not valid.")
BAD_KEY_FORMAT = (-2014, "API-key format invalid.")
REJECTED_KEY = (-2015, "Invalid API-key, IP, or permissions for action.")
INSUFFICIENT_BALANCE = (-2010, "Account has insufficient balance for requested action.")
DUPLICATE_ORDER = (-2010, "Duplicate order sent.")
WOULD_TAKE = (-2010, "Order would immediately match and take.")
MARKET_CLOSED = (-2010, "Market is closed.")
UNKNOWN_ORDER = (-2011, "Unknown order sent.")
NO_SUCH_ORDER = (-2013, "Order does not exist.")
CANCEL_INVALID = (-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were "
                  "empty/null!")
ZERO_NOTIONAL = (-1013, "Price * QTY is zero or less.")


def error(spec: tuple[int, str], status: int = 400) -> BinanceError:
    return BinanceError(spec[0], spec[1], status)


def filter_failure(name: str) -> BinanceError:
    return BinanceError(-1013, f"Filter failure: {name}")
