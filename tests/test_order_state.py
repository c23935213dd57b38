"""The order life cycle: every pair of states is either an allowed transition or refused."""

from __future__ import annotations

import itertools

import pytest

from daemon.order_state import (
    TERMINAL,
    InvalidTransition,
    OrderState,
    allowed,
    from_venue_status,
    transition,
)

S = OrderState

# The specification, written out independently of the table in daemon/order_state.py.
EXPECTED: dict[OrderState, set[OrderState]] = {
    S.PENDING_NEW: {S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.REJECTED, S.CANCELLED,
                    S.EXPIRED, S.UNKNOWN},
    S.ACCEPTED: {S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.CANCELLED, S.EXPIRED,
                 S.UNKNOWN},
    S.PARTIALLY_FILLED: {S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.CANCELLED,
                         S.EXPIRED, S.UNKNOWN},
    S.PENDING_CANCEL: {S.CANCELLED, S.PARTIALLY_FILLED, S.FILLED, S.EXPIRED, S.ACCEPTED,
                       S.UNKNOWN},
    S.UNKNOWN: {S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.CANCELLED, S.REJECTED, S.EXPIRED,
                S.PENDING_NEW},
    S.FILLED: set(),
    S.CANCELLED: set(),
    S.REJECTED: set(),
    S.EXPIRED: set(),
}

PAIRS = list(itertools.product(OrderState, OrderState))


@pytest.mark.parametrize(("current", "new"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_every_transition_is_allowed_or_refused_as_specified(current: OrderState,
                                                             new: OrderState) -> None:
    if new in EXPECTED[current]:
        assert transition(current, new) is new
        assert allowed(current, new)
    else:
        with pytest.raises(InvalidTransition, match=f"{current} -> {new} is not allowed"):
            transition(current, new)
        assert not allowed(current, new)


def test_terminal_states_are_final_and_not_working() -> None:
    assert {S.FILLED, S.CANCELLED, S.REJECTED, S.EXPIRED} == set(TERMINAL)
    for state in OrderState:
        assert state.terminal is (state in TERMINAL)
        assert state.working is not state.terminal
    # UNKNOWN may be live at the venue: it must count as working (drift, exposure)
    assert S.UNKNOWN.working and S.PENDING_NEW.working and S.PENDING_CANCEL.working


def test_nothing_is_resent_without_passing_through_unknown() -> None:
    # PENDING_NEW is reachable only from UNKNOWN: the resolver's "venue never saw it"
    sources = {a for a in OrderState if allowed(a, S.PENDING_NEW)}
    assert sources == {S.UNKNOWN}


@pytest.mark.parametrize(("status", "filled", "state"), [
    ("open", 0.0, S.ACCEPTED),
    ("open", 0.5, S.PARTIALLY_FILLED),
    ("closed", 1.0, S.FILLED),
    ("canceled", 0.3, S.CANCELLED),
    ("cancelled", 0.0, S.CANCELLED),
    ("rejected", 0.0, S.REJECTED),
    ("expired", 0.0, S.EXPIRED),
])
def test_venue_statuses_map_to_states(status: str, filled: float, state: OrderState) -> None:
    assert from_venue_status(status, filled, 1.0) is state


def test_an_unknown_venue_status_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="'pending'"):
        from_venue_status("pending", 0.0, 1.0)
