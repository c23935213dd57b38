"""Counts of what happened on the bus, for the run summary and (later) metrics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from daemon.events import (
    Event,
    Fill,
    OrderIntent,
    OrderRejected,
    RiskRejected,
    TargetWeights,
)

# what the run summary and the metrics read (the properties below)
COUNTED = (OrderIntent, Fill, RiskRejected, OrderRejected, TargetWeights)


@dataclass
class EventCounters:
    by_type: Counter[str] = field(default_factory=Counter)
    rejections_by_code: Counter[str] = field(default_factory=Counter)
    fees: float = 0.0
    traded_notional: float = 0.0

    def handlers(self) -> dict[type, Callable[[Event], None]]:
        # only what is counted: bars are most of the bus's traffic (7 calls a replay timestamp)
        return dict.fromkeys(COUNTED, self.on_event)

    def on_event(self, event: Event) -> None:
        self.by_type[type(event).__name__] += 1
        if isinstance(event, Fill):
            # in quote value: a fee charged in the base asset or BNB is not a quote amount
            self.fees += event.fee_quote or 0.0
            self.traded_notional += event.notional
        elif isinstance(event, RiskRejected):
            self.rejections_by_code[event.code] += 1

    @property
    def orders(self) -> int:
        return self.by_type[OrderIntent.__name__]

    @property
    def fills(self) -> int:
        return self.by_type[Fill.__name__]

    @property
    def risk_rejections(self) -> int:
        return self.by_type[RiskRejected.__name__]

    @property
    def venue_rejections(self) -> int:
        return self.by_type[OrderRejected.__name__]

    @property
    def target_updates(self) -> int:
        return self.by_type[TargetWeights.__name__]
