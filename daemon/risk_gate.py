"""The pre-trade risk gate on the bus: every `OrderIntent` in, `OrderApproved` or
`RiskRejected` out. The decisions themselves are the pure checks of `risk.checks`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog

from daemon.bus import EventBus
from daemon.events import Bar, OrderApproved, OrderIntent, RiskRejected, utcnow
from risk.checks import MarketView, evaluate
from risk.limits import RiskLimits

log = structlog.get_logger("risk_gate")


class RiskGate:
    def __init__(self, bus: EventBus, limits: RiskLimits,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.bus = bus
        self.limits = limits
        self.clock = clock
        self.market = MarketView()
        self.rejections: dict[str, int] = {}

    def on_bar(self, bar: Bar) -> None:
        self.market.last_close[bar.symbol] = bar.close

    def on_intent(self, intent: OrderIntent) -> None:
        denial = evaluate(intent, self.market, self.limits)
        if denial is None:
            self.bus.publish(OrderApproved(intent=intent, ts=self.clock()))
            return
        self.rejections[denial.code] = self.rejections.get(denial.code, 0) + 1
        event = RiskRejected(intent=intent, code=denial.code, context=denial.context,
                             ts=self.clock())
        log.warning("risk_rejected", client_order_id=intent.client_order_id,
                    symbol=intent.symbol, side=str(intent.side), quantity=intent.quantity,
                    code=denial.code, **{f"ctx_{k}": v for k, v in denial.context.items()})
        self.bus.publish(event)
