"""The pre-trade risk gate on the bus: every `OrderIntent` in, `OrderApproved` or
`RiskRejected` out, and the kill switch (`daemon.trading_state`) that can stop it all.

The decisions are the pure checks of `risk.checks` (per order their one-call pass path
first, the named checks for any denial); this module keeps what they read current:

* per bar (`Bar`, `BarsClosed`): last closes, the window of bar volumes (averaged when an
  order or the proposer reads it, `_VolumeAverages`: a replay reads one bar in a hundred),
  the venue's market rules, a window of closes, loss-limit marks (NAV only, not the whole
  book; the positions' vector kept until a fill moves them);
* per bar with an order: the VaR model prepared from the window of returns
  (`VarModel.prepare`) and the book's VaR, on the first order after a `BarsClosed` and kept
  for the bar's other orders. Most bars have no order (a replay: about one in a hundred), and
  the model depends only on the window of closes, which changes only at `BarsClosed`: the
  same model as an eager per-bar fit, at a fraction of the cost;
* young assets (listed within the VaR window, e.g. SOL in 2020): the model covers only the
  assets with a full window of clean returns; a young one is added to it as |value| x the
  larger of its own per-unit risk and the riskiest covered asset's (perfect correlation: an
  upper bound), so it never blocks orders in other assets and the limits bind on the total.
  With fewer than `var_min_bars` returns of its own, orders adding to it are refused
  (VAR_UNAVAILABLE naming it, its bars and the minimum); reductions pass
  (`risk.checks.check_var_young`). At the start of a run (fewer than `var_min_bars` bars of
  returns at all) there is no model: every order that adds risk is VAR_UNAVAILABLE,
  reductions pass, as there is nothing yet to measure any risk against;
* per order: the book = positions + working orders + orders approved but not yet taken in by
  the OMS (the OMS registers an approved order only when its own worker runs, so siblings
  published together must be counted here), and the clock. Positions and working orders are
  read afresh for every order (the portfolio and the OMS change them without telling the
  gate), but the book is kept between orders (`risk.exposure.BookKeeper`): only the assets
  whose quantity moved since the last order have their exposures swapped, and the book is
  rebuilt from scratch at each bar's new prices. For scenario VaR models the book's P&L per
  scenario is kept the same way (`risk.checks.VarView.book_pnl`).

Time comes from injected clocks: `clock` (UTC datetimes, for event timestamps) and `monotonic`
(seconds, for throttles, duplicates, staleness). A lockstep replay calls `use_market_time()`:
those windows then run on bar time, so a year replayed in seconds is throttled as it would
have been live, and is never "stale".

The gate never raises out of a handler: an unexpected error in a decision is a rejection
(`GATE_INTERNAL_ERROR`), and an error in bookkeeping is logged.

For the control socket (`tradingd halt` / `resume` / `status`): `halt(reason, by)`,
`resume(by)`, `reduce(reason, by)`, `state`, `status()`, and `cancel(client_order_id, reason)`
for throttled operator cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import operator
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from itertools import repeat
from typing import Any, Protocol

import numpy as np
import structlog

from daemon.bus import EventBus
from daemon.events import (
    Bar,
    BarsClosed,
    Fill,
    OrderApproved,
    OrderIntent,
    OrderRejected,
    RiskRejected,
    utcnow,
)
from daemon.trading_state import (
    MetaStore,
    NavWatch,
    StateRecord,
    TradingState,
    TradingStateMachine,
)
from risk.checks import (
    ORDER_CHECKS,
    PORTFOLIO_CHECKS,
    VAR_CHECK,
    Denial,
    GateContext,
    MarketView,
    VarView,
    book_var,
    check_halted,
    evaluate,
    order_checks_pass,
    order_effect,
    portfolio_checks_pass_before_var,
)
from risk.exposure import Book, BookKeeper, build_groups
from risk.limits import RiskLimits
from risk.market_rules import MarketRules
from risk.throttle import DuplicateFilter, MessageThrottle, SlidingWindow
from risk.var import VarError, VarModel, unit_risk

log = structlog.get_logger("risk_gate")

RECENT_REJECTIONS = 50
IN_FLIGHT_TTL_S = 300.0  # an approved order the OMS never took in stops counting after this


_new = object.__new__
_set_intent = OrderApproved.intent.__set__  # type: ignore[attr-defined]
_set_ts = OrderApproved.ts.__set__  # type: ignore[attr-defined]


def _order_approved(intent: OrderIntent, ts: datetime) -> OrderApproved:
    """`OrderApproved(intent=intent, ts=ts)`, equal to it, at a third of the cost: a frozen
    dataclass's `__init__` sets each field through `object.__setattr__` by name; this sets
    the two slots through their descriptors (nothing else runs in `__init__`: no defaults,
    no `__post_init__`; tests/test_gate_fast_path.py checks equality with the constructor)."""
    event = _new(OrderApproved)
    _set_intent(event, intent)
    _set_ts(event, ts)
    return event


def _all_finite(returns: np.ndarray) -> bool:
    """True only if every value is finite: a NaN or an inf carries through a sum, so a finite
    sum has none (one pass where the per-column test costs five). False also when a sum of
    finite values overflows: the caller then runs the per-column test, which decides."""
    return math.isfinite(returns.sum())


def _passes(fast: Callable[[OrderIntent, GateContext], bool], intent: OrderIntent,
            ctx: GateContext) -> bool:
    try:
        return fast(intent, ctx)
    except Exception:  # the named checks will say what: GATE_CHECK_FAILED with the check
        return False


class _VolumeAverages(dict[str, float]):
    """`MarketView.avg_volume`: symbol -> average of its window of bar volumes, computed
    when read. A bar drops its symbol's entry; `get` and `[]` compute a missing one from the
    window (the same sum of the same volumes an eager update would have made) and keep it.
    Symbols without a volume yet are missing, as before."""

    def __init__(self, windows: dict[str, deque[float]]) -> None:
        super().__init__()
        self._windows = windows

    def __missing__(self, symbol: str) -> float:
        window = self._windows.get(symbol)
        if not window:
            raise KeyError(symbol)
        average = self[symbol] = sum(window) / len(window)
        return average

    def get(self, symbol: str, default: Any = None) -> Any:  # type: ignore[override]
        try:
            return self[symbol]
        except KeyError:
            return default


class PortfolioView(Protocol):
    cash: float
    positions: dict[str, float]


class OmsView(Protocol):
    """What the gate uses of `daemon.oms.OMS`."""

    halted_reason: str | None

    def working_quantity(self) -> dict[str, float]: ...

    async def cancel(self, client_order_id: str, reason: str) -> None: ...

    async def cancel_all(self, reason: str) -> int: ...


class RiskGate:
    name = "risk_gate"  # as a daemon Service: its heartbeat runs between start() and stop()

    def __init__(self, bus: EventBus, limits: RiskLimits,
                 clock: Callable[[], datetime] = utcnow, *, symbols: list[str] | tuple[str, ...],
                 portfolio: PortfolioView | None = None, oms: OmsView | None = None,
                 markets: Callable[[], dict[str, MarketRules]] | None = None,
                 journal: MetaStore | None = None, interval_s: int = 3600,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.limits = limits
        self.clock = clock
        self.monotonic = monotonic
        self.portfolio = portfolio
        self.oms = oms
        self.markets = markets
        self.journal = journal
        self.interval_s = interval_s
        self.symbols = tuple(symbols)
        self.market = MarketView.for_symbols(self.symbols)
        self.ctx = GateContext(
            limits=limits, market=self.market, throttle=MessageThrottle(limits.throttle),
            duplicates=DuplicateFilter(limits.throttle.duplicate_window_s),
            groups=build_groups(limits, self.market.index),
            stale_after_s=limits.state.stale_after_intervals * float(interval_s))
        self._market_time = False
        self._market_now = 0.0  # bar time in seconds since the epoch, once bars arrive
        self._bar_ts: datetime | None = None  # the last bar's `ts` and its `timestamp()`
        self._bar_seen = 0.0
        self._last_bar_at = self._now_wall()  # staleness counts from start-up, not from never
        n = len(self.symbols)
        self._volumes: dict[str, deque[float]] = {
            s: deque(maxlen=limits.volume_window_bars) for s in self.symbols}
        self.market.avg_volume = self._averages = _VolumeAverages(self._volumes)
        # the window of closes, oldest row first, in a buffer twice its size: a bar writes one
        # row, and only when the buffer is full is the window moved back to its start (once
        # per window length), where shifting the whole window every bar cost O(rows * n)
        self._close_cap = limits.var.window_bars + 1
        self._close_buf = np.full((2 * self._close_cap, n), np.nan)
        self._close_end = 0  # the window is _close_buf[_close_end - _close_rows:_close_end]
        self._close_rows = 0
        # `market.prices` with 0.0 for the never-priced, and which those are: what `book_nav`
        # derives from prices with numpy calls every time, kept up to date by `on_bar` (NAV)
        self._priced = np.zeros(n)
        self._unpriced = set(range(n))
        self._nav_held: tuple[float, ...] | None = None  # the positions `_nav_vector` holds
        self._nav_vector = np.zeros(n)
        # len(portfolio.positions) when a symbol was last missing from it (`_held`)
        self._held_missing_at = -1
        self._var_model_cfg = limits.var
        # `VarView`'s covered, uncovered, position and positions when every symbol is covered
        # (the usual bar): the same each time, shared by the views (read-only)
        every = np.arange(n, dtype=np.intp)
        none = np.zeros(0, dtype=np.intp)
        every.flags.writeable = none.flags.writeable = False
        self._all_columns = (every, none, every, every.tolist())
        # the VaR model is prepared lazily (`_ensure_var`): `_closes_version` counts changes
        # of the window of closes, `_var_version` is the one `ctx.var` was prepared from
        self._closes_version = 0
        self._var_version = -1
        self._in_flight: dict[str, tuple[int, float, float]] = {}  # cid -> (index, signed, at)
        # the book between orders (`risk.exposure.BookKeeper`); `_prices_version` counts the
        # bars that moved `market.prices`, which is how the keeper knows to rebuild
        self._book = BookKeeper(self.symbols)
        # every position in one C call (`_held`); with one symbol itemgetter returns a bare
        # value, with none it cannot be built: those read positions with `get`
        self._held_getter = operator.itemgetter(*self.symbols) if n > 1 else None
        self._loaded_record: StateRecord | None = None  # the record `ctx.state` shows
        self._prices_version = 0
        # counters for status and the run summary
        self.approved = 0
        self.rejections: Counter[str] = Counter()
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_REJECTIONS)
        self._storm = SlidingWindow(limits.state.rejection_window_s)
        self.errors = 0
        # the kill switch and what its loss limits measure against; both survive restarts
        self.trading = TradingStateMachine(journal, bus.publish, clock)
        self.trading.listeners.append(self._on_state_change)
        self.trading.before_resume.append(self._before_resume)
        self.nav_watch = NavWatch.load(journal)
        self._mirrored: str | None = None  # what the gate last wrote to oms.halted_reason
        self._heartbeat: asyncio.Task[None] | None = None
        if self.trading.state is TradingState.HALTED:
            self._mirror_halt(self.trading.record)

    def update_limits(self, limits: RiskLimits) -> None:
        """New limits at runtime (SIGHUP reload). Throttle windows, recent volumes, the
        returns window, the trading state and the loss marks are kept: a reload must not
        reset a throttle or forget a loss. The VaR model is re-prepared at once."""
        self.limits = self.ctx.limits = limits
        self.ctx.throttle.limits = limits.throttle
        self.ctx.duplicates.window_s = limits.throttle.duplicate_window_s
        self.ctx.stale_after_s = limits.state.stale_after_intervals * float(self.interval_s)
        self.ctx.groups = build_groups(limits, self.market.index)
        self._storm.span = limits.state.rejection_window_s
        for symbol, window in list(self._volumes.items()):
            if window.maxlen != limits.volume_window_bars:
                kept = self._volumes[symbol] = deque(window, maxlen=limits.volume_window_bars)
                if kept:
                    self._averages[symbol] = sum(kept) / len(kept)
        rows = limits.var.window_bars + 1
        if rows != self._close_cap:
            keep = min(self._close_rows, rows)
            buf = np.full((2 * rows, len(self.symbols)), np.nan)
            buf[:keep] = self._closes()[self._close_rows - keep:]
            self._close_buf, self._close_cap = buf, rows
            self._close_end = self._close_rows = keep
        self._var_model_cfg = limits.var
        self._var_version = -1  # the model's settings changed: re-prepare now
        self._ensure_var(self._safe_book())
        log.info("risk_limits_updated")

    # -- clocks ---------------------------------------------------------------------------
    def use_market_time(self) -> None:
        """Throttles, duplicates and staleness run on bar time from now on (lockstep replay)."""
        self._market_time = True

    def _now(self) -> float:
        return self._market_now if self._market_time else self.monotonic()

    def _now_wall(self) -> float:
        return self.monotonic()

    # -- sizing: what the proposer should respect ------------------------------------------
    def participation_cap(self, symbol: str) -> float:
        """The largest quantity of `symbol` one decision should trade: `max_volume_share` of
        the recent average bar volume. The gate checks it per order, so children of a split
        order would each pass while together trading far more of a bar; the rebalancer caps the
        whole decision with this and leaves the rest of the drift to later bars. (Notional and
        quantity limits are per order: splitting is how a large trade respects them.)"""
        avg = self.market.avg_volume.get(symbol, 0.0)
        if not avg > 0.0:
            return 0.0  # the gate would refuse it (VOLUME_UNKNOWN)
        return self.limits.max_volume_share * avg

    def order_room(self, symbol: str | None = None) -> int:
        """How many more orders (of `symbol`, or in total) the order throttles pass now. A
        large rebalance is split into more children than they pass at once (a bar's orders
        arrive together, also live); the refusals would count towards a rejection storm and
        halt trading, so the rebalancer trims each decision to this and leaves the rest of the
        drift to later bars."""
        return self.ctx.throttle.order_room(symbol, self._now())

    # -- the trading state: API for the control socket --------------------------------------
    @property
    def state(self) -> TradingState:
        return self.trading.state

    def halt(self, reason: str, by: str = "operator") -> StateRecord:
        """Stop all new orders; working orders are cancelled if `risk.state` says so."""
        return self.trading.halt(reason, by)

    def reduce(self, reason: str, by: str = "operator") -> StateRecord:
        """Only risk-reducing orders from now on."""
        return self.trading.reduce(reason, by)

    def resume(self, by: str = "operator") -> StateRecord:
        """Back to ACTIVE. Resuming accepts the losses so far: a loss limit in breach is
        re-based to the current NAV (else it would trip again on the next bar), and the
        rejection count starts afresh. Stale data trips again at the next heartbeat.
        `self.trading.resume(by)` does the same (the re-basing is a hook of it)."""
        return self.trading.resume(by)

    def _before_resume(self) -> None:
        book = self._safe_book()
        watch, st = self.nav_watch, self.limits.state
        if book is not None and book.nav_valid:
            watch.update(book.nav)
            if watch.daily_loss > st.max_daily_loss_fraction:
                watch.day_start_nav = book.nav
            if watch.drawdown > st.max_drawdown_fraction:
                watch.peak_nav = book.nav
            watch.save(self.journal)
        self._storm.clear()

    def _on_state_change(self, old: StateRecord, new: StateRecord) -> None:
        if new.state is TradingState.HALTED:
            self._mirror_halt(new)
            if self.limits.state.cancel_working_on_halt and self.oms is not None:
                self._cancel_all(f"trading halted: {new.reason}")
        elif old.state is TradingState.HALTED and self.oms is not None \
                and self.oms.halted_reason is not None:
            # the gate's state is authoritative: leaving HALTED also lifts an OMS halt (a venue
            # that still refuses our keys halts it again on the next order)
            log.warning("oms_halt_lifted", oms_halted_reason=self.oms.halted_reason,
                        by=new.by)
            self.oms.halted_reason = None
            self._mirrored = None

    def _mirror_halt(self, record: StateRecord) -> None:
        # the OMS refuses approved orders still in its inbox once `halted_reason` is set
        if self.oms is None:
            return
        if record.by == "oms" and self.oms.halted_reason is not None:
            self._mirrored = self.oms.halted_reason  # keep the OMS's own words
            return
        self._mirrored = f"GATE_{record.reason}"
        self.oms.halted_reason = self._mirrored

    def _cancel_all(self, reason: str) -> None:
        assert self.oms is not None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            log.error("halt_cancel_skipped", reason="no running event loop")
            return
        self.bus.track(self.oms.cancel_all(reason), name="halt-cancel-all")

    def _sync_oms_halt(self) -> None:
        oms = self.oms
        if oms is None:
            return
        reason = oms.halted_reason
        if reason is not None and reason != self._mirrored \
                and self.trading.state is not TradingState.HALTED:
            self.trading.halt(f"OMS_{reason}", by="oms", context={"oms_reason": reason})

    # -- market data ----------------------------------------------------------------------
    def on_bar(self, bar: Bar) -> None:
        # one frame per bar (230,000 in a replay of five years): the body inside the `try`
        try:
            symbol, close, market = bar.symbol, bar.close, self.market
            i = market.index.get(symbol)
            # a float is decided by two comparisons (NaN fails both); anything else by the
            # full test
            if i is None or not ((type(close) is float and 0.0 < close < math.inf) or (
                    isinstance(close, int | float) and math.isfinite(close) and close > 0)):
                # a bar we cannot price from is no fresh data: staleness keeps counting
                log.warning("bar_ignored", symbol=symbol, close=close)
                return
            if self._market_time:
                # bar time: the symbol was seen at its own bar's time, the clock is the newest
                # bar. A timestamp's bars share one `ts` object (a replay's feed): convert once
                ts = bar.ts
                if ts is not self._bar_ts:
                    self._bar_ts, self._bar_seen = ts, ts.timestamp()
                seen = self._bar_seen
                if seen > self._market_now:
                    self._market_now = seen
                self._last_bar_at = self._market_now  # `_now()` on bar time
            else:
                seen = self.monotonic()
                self._last_bar_at = self._now()
            market.last_close[symbol] = float(close)
            market.prices[i] = close
            if self._unpriced:
                self._priced[i] = close
                self._unpriced.discard(i)
                if not self._unpriced:
                    # every symbol priced: `_priced` equals `prices` from now on, so share it
                    # (one write per bar instead of two)
                    self._priced = market.prices
            self._prices_version += 1
            market.last_seen[symbol] = seen
            volume = bar.volume
            if (type(volume) is float and 0.0 <= volume < math.inf) or (
                    isinstance(volume, int | float) and math.isfinite(volume) and volume >= 0):
                self._volumes[symbol].append(float(volume))
                # averaged when read (`_VolumeAverages`): orders follow one bar in a hundred
                self._averages.pop(symbol, None)
            record = self.trading.record
            if (record.reason == "DATA_STALE" and record.by == "gate"
                    and self.limits.state.resume_on_fresh_data):
                self.trading.undo(by="gate", reason="DATA_FRESH")
        except Exception as exc:
            self._error("on_bar", exc)

    def on_bars_closed(self, event: BarsClosed) -> None:
        """Once per bar: rules, the window of closes, an OMS halt, loss limits. The VaR model
        and the book's risk wait for the bar's first order (`_ensure_var`)."""
        try:
            self._refresh_rules()
            self._append_closes()
            self._sync_oms_halt()
            nav = self._safe_nav()
            if nav is not None:
                self._check_loss_limits(nav, event.ts.astimezone(UTC).date())
        except Exception as exc:
            self._error("on_bars_closed", exc)

    def _refresh_rules(self) -> None:
        if self.markets is None:
            return
        try:
            self.market.rules = dict(self.markets())
        except Exception as exc:  # keep the last rules we had; unknown markets are rejected
            log.warning("market_rules_unavailable", error=f"{type(exc).__name__}: {exc}")

    def _closes(self) -> np.ndarray:
        """The window of closes, oldest row first (a view: read, do not keep)."""
        return self._close_buf[self._close_end - self._close_rows:self._close_end]

    def _append_closes(self) -> None:
        # one row per bar; a symbol without a new bar repeats its close (a zero return)
        buf, end, cap = self._close_buf, self._close_end, self._close_cap
        if end == buf.shape[0]:  # full: move the window's newest cap - 1 rows to the start
            keep = min(self._close_rows, cap - 1)
            buf[:keep] = buf[end - keep:end]
            end = self._close_rows = keep
        buf[end] = self.market.prices
        self._close_end = end + 1
        self._close_rows = min(self._close_rows + 1, cap)
        self._closes_version += 1

    def _ensure_var(self, book: Book | None) -> None:
        """The VaR model of the current window of closes, prepared at most once per window (per
        bar), and the book's risk with it. `book` should be the book the caller checks against:
        its risk is then reused by `check_var` as long as the book does not change."""
        if self._var_version == self._closes_version:
            return
        self._var_version = self._closes_version
        self._prepare_var()
        if book is not None:
            self._book_risk(book)

    def _prepare_var(self) -> None:
        view = self.ctx.var = VarView(bars=max(self._close_rows - 1, 0))
        min_bars = self.limits.var_min_bars
        if view.bars < min_bars:
            view.unavailable = f"{view.bars} bars of returns, need {min_bars}"
            return
        closes = self._closes()
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            returns = closes[1:] / closes[:-1] - 1.0
            finite = _all_finite(returns)
        cfg = self._var_model_cfg
        if view.bars < cfg.window_bars:
            cfg = replace(cfg, window_bars=view.bars)
        if finite:  # every column clean: the model takes the window as it is
            try:
                view.prepared = VarModel(cfg).prepare(returns, finite=True)
            except (VarError, ValueError) as exc:
                view.unavailable = str(exc)
                return
            view.covered, view.uncovered, view.position, view.positions = self._all_columns
            view.all_covered = True
            view.unavailable = ""
            return
        clean = np.isfinite(returns).all(axis=0)
        covered = np.flatnonzero(clean)
        if covered.size == 0:
            view.unavailable = "no symbol has a clean return history"
            return
        try:
            view.prepared = VarModel(cfg).prepare(returns[:, covered])
        except (VarError, ValueError) as exc:
            view.unavailable = str(exc)
            return
        view.covered = covered
        view.uncovered = np.flatnonzero(~clean)
        view.all_covered = view.uncovered.size == 0
        position = np.full(len(self.symbols), -1, dtype=np.intp)
        position[covered] = np.arange(covered.size)
        view.position = position
        view.positions = position.tolist()
        view.unavailable = ""
        if view.uncovered.size:
            self._young_risk(view, returns)

    def _young_risk(self, view: VarView, returns: np.ndarray) -> None:
        """Per-unit risk of each young asset (listed within the window, so its column has
        leading NaN): the larger of its own, from the model fitted on the returns it has
        when those are at least `var_min_bars`, and the proxy's, the riskiest covered asset
        (`risk.checks.check_var_young` states the rule)."""
        prepared = view.prepared
        assert prepared is not None
        units = [unit_risk(prepared, k) for k in range(view.covered.size)]
        k = max(range(len(units)), key=lambda m: units[m])  # the largest VaR, then CVaR
        view.proxy = int(view.covered[k])
        proxy_unit = units[k]
        rows, min_bars = returns.shape[0], self.limits.var_min_bars
        history = [rows] * len(self.symbols)
        tradeable = set()
        for j in view.uncovered.tolist():
            bad = np.flatnonzero(~np.isfinite(returns[:, j]))
            own = rows - int(bad[-1]) - 1  # clean returns since the last gap: since listing
            history[j] = own
            view.young_unit[j] = proxy_unit
            if own < min_bars:
                continue  # too few to estimate: the proxy for what is held, no increase
            try:
                cfg = replace(self._var_model_cfg, window_bars=own)
                mine = unit_risk(VarModel(cfg).prepare(returns[rows - own:, j:j + 1]), 0)
            except (VarError, ValueError):
                continue  # its own model fails (e.g. too few historical scenarios)
            view.young_unit[j] = (max(mine[0], proxy_unit[0]), max(mine[1], proxy_unit[1]))
            tradeable.add(j)
        view.history = history
        view.young_tradeable = frozenset(tradeable)

    def _book_risk(self, book: Book) -> None:
        view = self.ctx.var
        if view.prepared is None or not book.nav_valid:
            return
        values = book.values if view.all_covered else book.values[view.covered]
        view.book_values = values.tobytes()
        view.book_risk = view.prepared.var(values)

    # -- the book -------------------------------------------------------------------------
    def _held(self) -> tuple[float, tuple[float, ...]]:
        """Cash and the position of each symbol (0.0 if none), read from the portfolio."""
        n = len(self.symbols)
        if self.portfolio is None:
            return 0.0, (0.0,) * n
        positions = self.portfolio.positions
        getter = self._held_getter
        if getter is not None and len(positions) != self._held_missing_at:
            try:
                # one C call for every lookup, 2.5x `map(positions.get, ...)`
                return self.portfolio.cash, getter(positions)
            except KeyError:
                # a symbol never held yet: `get` until the portfolio's symbols change (a
                # raised KeyError per order or bar costs more than the lookups)
                self._held_missing_at = len(positions)
        return self.portfolio.cash, tuple(map(positions.get, self.symbols, repeat(0.0, n)))

    def _build_book(self) -> Book:
        cash, held = self._held()
        # symbol -> working + approved quantity; a copy, as the keeper keeps it to diff the
        # next order's against
        pending: dict[str, float] = dict(self.oms.working_quantity()) \
            if self.oms is not None else {}
        if self._in_flight:
            taken = getattr(self.oms, "orders", None)
            symbols = self.symbols
            for cid, (i, signed, _) in list(self._in_flight.items()):
                if taken is not None and cid in taken:
                    del self._in_flight[cid]  # the OMS counts it now (working or done)
                else:
                    symbol = symbols[i]
                    pending[symbol] = pending.get(symbol, 0.0) + signed
        market = self.market
        return self._book.update(held, pending, market.prices, self._prices_version, cash,
                                 self.ctx.groups,
                                 all_priced=len(market.last_close) == len(market.symbols))

    def _safe_book(self) -> Book | None:
        try:
            return self._build_book()
        except Exception as exc:
            self._error("build_book", exc)
            return None

    def _nav(self) -> float:
        """The book's NAV (cash + positions, `Book.build`'s arithmetic) without its exposures:
        what the loss limits read, per bar, without the working orders' walk."""
        cash, positions = self._held()
        for i in self._unpriced:
            if positions[i] != 0.0:  # NaN too, as in `book_nav`: held without a price
                return math.nan
        # `book_nav`'s arithmetic (`_priced` is its `np.where(isnan(prices), 0, prices)`, and
        # is `prices` once all are priced): the same dot of the same vectors, the same NAV
        # to the bit, without its numpy calls on the prices every bar. Positions change only
        # with fills, so their vector is kept until they do (equal floats, equal products)
        if positions != self._nav_held:
            self._nav_vector = np.fromiter(positions, dtype=float, count=len(positions))
            self._nav_held = positions
        return cash + float(self._nav_vector.dot(self._priced))

    def _safe_nav(self) -> float | None:
        try:
            return self._nav()
        except Exception as exc:
            self._error("nav", exc)
            return None

    # -- state triggers -------------------------------------------------------------------
    def _check_loss_limits(self, nav: float, day: Any = None) -> None:
        if not 0.0 < nav < math.inf:  # `nav_valid` (NaN fails both)
            return  # a held asset without a price: NAV unknown, not a loss
        watch, st = self.nav_watch, self.limits.state
        day_before = watch.day
        watch.update(nav, day)
        if watch.day != day_before or watch.needs_save():
            watch.save(self.journal)
        # `escalate` ignores a state no stricter than the current one: test that first, so a
        # limit breached for months (a halted replay) does not build its context every bar.
        # `watch.daily_loss` and `watch.drawdown` inline (per bar, fill and order): after a
        # valid mark `last_nav` is `nav` and both references are set and positive
        start = watch.day_start_nav
        loss = 1.0 - nav / start if start else 0.0
        if loss > st.max_daily_loss_fraction \
                and TradingState(st.daily_loss_action).rank > self.trading.state.rank:
            self.trading.escalate(TradingState(st.daily_loss_action), "DAILY_LOSS_LIMIT",
                                  context={"loss": round(loss, 6),
                                           "limit": st.max_daily_loss_fraction,
                                           "nav": round(nav, 2),
                                           "day_start_nav": round(watch.day_start_nav or 0, 2),
                                           "day": watch.day})
        peak = watch.peak_nav
        dd = 1.0 - nav / peak if peak else 0.0
        # (the state is read again: the daily loss may have escalated it)
        if dd > st.max_drawdown_fraction \
                and TradingState(st.drawdown_action).rank > self.trading.state.rank:
            self.trading.escalate(TradingState(st.drawdown_action), "DRAWDOWN_LIMIT",
                                  context={"drawdown": round(dd, 6),
                                           "limit": st.max_drawdown_fraction,
                                           "nav": round(nav, 2),
                                           "peak_nav": round(watch.peak_nav or 0, 2)})

    def _check_stale(self, now: float) -> None:
        if self._market_time:
            return  # bar time cannot run ahead of the bars
        age = now - self._last_bar_at
        if age > self.ctx.stale_after_s:
            self.trading.escalate(TradingState(self.limits.state.stale_action), "DATA_STALE",
                                  context={"age_s": round(age, 3),
                                           "max_age_s": self.ctx.stale_after_s})

    def heartbeat(self) -> None:
        """Checks that must run even when no order comes: stale data, an OMS halt, approved
        orders the OMS never took in."""
        try:
            now = self._now()
            self._sync_oms_halt()
            self._check_stale(now)
            for cid, (_, _, at) in list(self._in_flight.items()):
                if now - at > IN_FLIGHT_TTL_S:
                    del self._in_flight[cid]
        except Exception as exc:
            self._error("heartbeat", exc)

    async def start(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat(), name="risk-gate-heartbeat")

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        self.nav_watch.save(self.journal)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.limits.state.heartbeat_s)
            self.heartbeat()

    # -- orders ---------------------------------------------------------------------------
    def on_intent(self, intent: OrderIntent) -> None:
        try:
            denial = self.decide(intent)
        except Exception as exc:  # fail closed, never raise
            denial = Denial("GATE_INTERNAL_ERROR", {"error": f"{type(exc).__name__}: {exc}"})
            self._error("decide", exc)
        try:
            if denial is None:
                self._approve(intent)
            else:
                self._reject(intent, denial)
        except Exception as exc:
            self._error("publish_decision", exc)

    def decide(self, intent: OrderIntent) -> Denial | None:
        """The decision alone (no events, no counting): None to approve, else the denial."""
        ctx = self.ctx
        now = ctx.now = self._market_now if self._market_time else self.monotonic()
        # each call only when it can do something (per order, the calls cost more than
        # their tests): an OMS halt to mirror, data possibly stale, a new state record
        oms = self.oms
        if oms is not None and oms.halted_reason is not None:
            self._sync_oms_halt()
        if not self._market_time and now - self._last_bar_at > ctx.stale_after_s:
            self._check_stale(now)
        if self.trading.record is not self._loaded_record:
            self._load_state()
        ctx.book = ctx.effect = None
        if isinstance(intent.symbol, str) and intent.symbol not in self.market.rules:
            self._refresh_rules()  # a market listed since the last bar
        # the pass path in one call; on anything else the named checks make the denial
        if not _passes(order_checks_pass, intent, ctx):
            denial = evaluate(intent, ctx, ORDER_CHECKS)
            if denial is not None:
                return denial
        book = ctx.book = self._build_book()
        self._ensure_var(book)  # the bar's first order: the VaR model, the book's risk
        ctx.effect = order_effect(intent, ctx, book)
        self._check_loss_limits(book.nav)
        if self.trading.record is not self._loaded_record:
            self._load_state()  # a loss limit tripped just now
        if _passes(portfolio_checks_pass_before_var, intent, ctx):
            return evaluate(intent, ctx, VAR_CHECK)  # what the pipeline would end with
        return check_halted(intent, ctx) or evaluate(intent, ctx, PORTFOLIO_CHECKS)

    def _load_state(self) -> None:
        record = self.trading.record
        if record is self._loaded_record:
            return  # records are immutable: a new state is a new record
        self._loaded_record = record
        self.ctx.state = record.state.value
        self.ctx.state_reason = record.reason

    def _approve(self, intent: OrderIntent) -> None:
        now = self.ctx.now
        self.ctx.throttle.record_order(intent.symbol, now)
        self.ctx.duplicates.record(intent.symbol, intent.side._value_, intent.quantity,
                                   intent.client_order_id, intent.decision_id, now)
        effect = self.ctx.effect
        if effect is not None:
            self._in_flight[intent.client_order_id] = (effect.index, effect.signed_qty, now)
        self.approved += 1
        self.bus.publish(_order_approved(intent, self.clock()))

    def _reject(self, intent: OrderIntent, denial: Denial) -> None:
        code = denial.code
        self.rejections[code] += 1
        ts = self.clock()
        self.recent.appendleft({"ts": ts.isoformat(), "client_order_id": intent.client_order_id,
                                "symbol": intent.symbol, "side": str(intent.side),
                                "quantity": intent.quantity, "code": code,
                                "context": denial.context})
        log.warning("risk_rejected", client_order_id=intent.client_order_id,
                    symbol=intent.symbol, side=str(intent.side), quantity=intent.quantity,
                    code=code, **{f"ctx_{k}": v for k, v in denial.context.items()})
        self.bus.publish(RiskRejected(intent=intent, code=code, context=denial.context, ts=ts))
        if code.startswith("STATE_"):
            return  # the state's own refusals must not escalate it further
        now = self.ctx.now
        self._storm.add(now)
        count = self._storm.count(now)
        st = self.limits.state
        if count > st.max_rejections:
            self.trading.escalate(TradingState(st.rejection_action), "REJECTION_STORM",
                                  context={"rejections": count, "limit": st.max_rejections,
                                           "window_s": st.rejection_window_s,
                                           "last_code": code})

    def on_fill(self, fill: Fill) -> None:
        try:
            self._in_flight.pop(fill.client_order_id, None)
            nav = self._safe_nav()
            if nav is not None:
                self._check_loss_limits(nav)
        except Exception as exc:
            self._error("on_fill", exc)

    def on_order_rejected(self, event: OrderRejected) -> None:
        # refused by the OMS (halted) or the venue: it will never be working
        self._in_flight.pop(event.client_order_id, None)

    async def cancel(self, client_order_id: str, reason: str) -> Denial | None:
        """An operator's (or strategy's) cancel, counted against the cancel throttles. The
        kill switch's cancel-all bypasses this: it must never be throttled."""
        if self.oms is None:
            return Denial("GATE_NO_OMS", {"client_order_id": client_order_id})
        orders = getattr(self.oms, "orders", {})
        order = orders.get(client_order_id)
        symbol = order.intent.symbol if order is not None else ""
        now = self._now()
        v = self.ctx.throttle.check_cancel(symbol, now)
        if v is not None:
            log.warning("cancel_throttled", client_order_id=client_order_id, code=v[0], **v[1])
            return Denial(v[0], {"client_order_id": client_order_id, **v[1]})
        self.ctx.throttle.record_cancel(symbol, now)
        await self.oms.cancel(client_order_id, reason)
        return None

    # -- observing ------------------------------------------------------------------------
    def var_view(self) -> VarView:
        """This bar's VaR model (prepared now if no order has needed it yet this bar)."""
        self._ensure_var(self._safe_book())
        return self.ctx.var

    def var_usage(self) -> dict[str, Any]:
        """The book's VaR and CVaR at the last bar as fractions of NAV, with their limits."""
        book = self._safe_book()
        self._ensure_var(book)
        view, cfg = self.ctx.var, self.limits.var
        out: dict[str, Any] = {"var": None, "limit": cfg.max_var_fraction, "cvar": None,
                               "cvar_limit": cfg.max_cvar_fraction, "model": cfg.model,
                               "confidence": cfg.confidence, "horizon_bars": cfg.horizon_bars,
                               "bars": view.bars}
        if view.prepared is None:
            out["unavailable"] = view.unavailable
        elif view.book_risk is not None and book is not None and book.nav_valid:
            # young assets held: their proxied risk counts too, as in the checks
            var, cvar = book_var(view, book.values) if view.uncovered.size else view.book_risk
            out["var"] = round(var / book.nav, 6)
            out["cvar"] = round(cvar / book.nav, 6)
            if view.uncovered.size:
                out["young"] = {self.symbols[j]: view.history[j]
                                for j in view.uncovered.tolist()}
        return out

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot for `tradingd status`."""
        record = self.trading.record
        now = self._now()
        book = self._safe_book()
        var = self.var_usage()
        watch = self.nav_watch
        out: dict[str, Any] = {
            "state": record.state.value, "reason": record.reason, "by": record.by,
            "since": record.since.isoformat(), "state_context": record.context or {},
            "approved": self.approved, "rejected": sum(self.rejections.values()),
            "rejections_by_code": dict(self.rejections),
            "recent_rejections": list(self.recent),
            "throttle": self.ctx.throttle.usage(now), "in_flight": len(self._in_flight),
            "clock": "market" if self._market_time else "wall",
            "market_data_age_s": None if self._market_time else round(
                now - self._last_bar_at, 3),
            "peak_nav": watch.peak_nav, "day": watch.day, "day_start_nav": watch.day_start_nav,
            "drawdown": round(watch.drawdown, 6), "daily_loss": round(watch.daily_loss, 6),
            "var": var, "errors": self.errors,
        }
        if book is not None:
            nav = book.nav
            out["nav"] = nav if math.isfinite(nav) else None  # strict JSON has no NaN
            if book.nav_valid:
                out["gross_exposure"] = round(book.gross / nav, 6)
                out["net_exposure"] = round(book.net / nav, 6)
        return out

    def _error(self, where: str, exc: Exception) -> None:
        self.errors += 1
        with contextlib.suppress(Exception):
            log.error("risk_gate_error", where=where, error=f"{type(exc).__name__}: {exc}",
                      exc_info=exc)
