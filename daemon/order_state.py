"""The order life cycle, as a table of allowed transitions.

PENDING_NEW is journaled before the venue call. UNKNOWN means we sent (or may have sent) the
order but do not know whether the venue has it: a timeout, a dropped connection, or a restart
that found the order journaled but no venue answer. An UNKNOWN order is resolved by asking the
venue for it by client order id (and by its recent trades), never by resending blindly: only a
venue that proves it never saw the order (UNKNOWN -> PENDING_NEW) makes a resend safe.

    PENDING_NEW -> ACCEPTED -> PARTIALLY_FILLED -> FILLED
    ACCEPTED | PARTIALLY_FILLED -> PENDING_CANCEL -> CANCELLED (or FILLED: the cancel lost)
    PENDING_NEW -> REJECTED;  live states -> CANCELLED | EXPIRED (the venue ended the order)
    PENDING_NEW | live states -> UNKNOWN -> what the venue says | PENDING_NEW (never saw it)
"""

from __future__ import annotations

from enum import StrEnum


class OrderState(StrEnum):
    PENDING_NEW = "PENDING_NEW"
    ACCEPTED = "ACCEPTED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    PENDING_CANCEL = "PENDING_CANCEL"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    UNKNOWN = "UNKNOWN"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def working(self) -> bool:
        """May still trade: counts towards drift and exposure."""
        return self not in TERMINAL


TERMINAL = frozenset({OrderState.FILLED, OrderState.CANCELLED, OrderState.REJECTED,
                      OrderState.EXPIRED})

S = OrderState
TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    S.PENDING_NEW: frozenset({S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.REJECTED, S.CANCELLED,
                              S.EXPIRED, S.UNKNOWN}),
    S.ACCEPTED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.CANCELLED,
                           S.EXPIRED, S.UNKNOWN}),
    S.PARTIALLY_FILLED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.CANCELLED,
                                   S.EXPIRED, S.UNKNOWN}),
    # a cancel can lose the race against a fill, or be refused while the order stays live
    S.PENDING_CANCEL: frozenset({S.CANCELLED, S.PARTIALLY_FILLED, S.FILLED, S.EXPIRED,
                                 S.ACCEPTED, S.UNKNOWN}),
    # resolution by asking the venue; PENDING_NEW again only when the venue proves it never
    # saw the order, which makes a resend with the same client order id safe
    S.UNKNOWN: frozenset({S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.REJECTED,
                          S.EXPIRED, S.PENDING_NEW}),
    S.FILLED: frozenset(),
    S.CANCELLED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
}


class InvalidTransition(ValueError):
    pass


def allowed(current: OrderState, new: OrderState) -> bool:
    return new in TRANSITIONS[current]


def transition(current: OrderState, new: OrderState) -> OrderState:
    """`new` if the table allows it; otherwise InvalidTransition naming both states."""
    if new not in TRANSITIONS[current]:
        raise InvalidTransition(f"{current} -> {new} is not allowed")
    return new


def from_venue_status(status: str, filled: float, quantity: float) -> OrderState:
    """Map a ccxt-style status (open, closed, canceled, rejected, expired) to our state."""
    if status == "open":
        return S.PARTIALLY_FILLED if filled > 0 else S.ACCEPTED
    if status == "closed":
        return S.FILLED
    if status in ("canceled", "cancelled"):
        return S.CANCELLED
    if status == "rejected":
        return S.REJECTED
    if status == "expired":
        return S.EXPIRED
    raise ValueError(f"unknown venue order status {status!r}")
