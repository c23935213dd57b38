"""`CloseHistory.window` hands the solve its returns without pandas: the same numbers in the
same memory layout as the DataFrame it replaced, so `solve` gives the same floats from
either."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from daemon.history import CloseHistory
from risk import solver_cache
from risk.allocation import AllocationConfig, ReturnsWindow, solve

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SYMBOLS = ["A", "B", "C", "D"]


def _history(capacity: int, bars: int, gaps: bool = True) -> CloseHistory:
    rng = np.random.default_rng(0)
    h = CloseHistory(SYMBOLS, capacity)
    for t in range(bars):
        for j, s in enumerate(SYMBOLS):
            if gaps and ((j == 2 and t < 60) or (j == 3 and t % 37 == 5)):
                continue  # C lists late, D has gaps
            h.add(s, T0 + timedelta(hours=t), float(100 * np.exp(rng.normal(0, 0.01) * t)))
    return h


@pytest.mark.parametrize("bars", [2, 3, 40, 61, 62, 90, 200, 251])
def test_window_is_the_returns_frame_with_its_layout(bars: int) -> None:
    h = _history(91, bars)
    for lookback in (1, 29, 30, 90, 200):
        frame = h.returns(lookback)
        window = h.window(lookback)
        pd.testing.assert_frame_equal(window.frame(), frame, check_exact=True)
        values = frame.to_numpy(dtype=float)
        # the layout of the frame `returns` built before (from a row-major array), which the
        # solve's estimators read; one row is both layouts, its strides are immaterial
        before = pd.DataFrame(np.ascontiguousarray(values), index=frame.index,
                              columns=frame.columns).to_numpy(dtype=float)
        if len(frame) > 1:
            assert window.values.strides == values.strides == before.strides
        assert window.assets == tuple(frame.columns)
        assert len(window) == len(frame)
        span = (str(frame.index[0]), str(frame.index[-1])) if len(frame) else None
        assert window.span() == span
        tail = window.tail(20)
        np.testing.assert_array_equal(tail.values, values[-20:])
        if len(tail) > 1:
            assert tail.values.strides == frame.iloc[-20:].to_numpy(dtype=float).strides


def test_window_of_a_short_history_is_empty() -> None:
    h = CloseHistory(SYMBOLS, 10)
    assert len(h.window(5)) == 0 and h.window(5).span() is None
    h.add("A", T0, 1.0)
    assert len(h.window(5)) == 0 and h.window(5).assets == ("A",)


def _key(alloc: object) -> str:
    fields = dataclasses.asdict(alloc)  # type: ignore[call-overload]
    fields.pop("solve_seconds")
    return repr(fields)


@pytest.mark.parametrize("method", ["min_variance", "max_sharpe", "hrp"])
def test_solve_gives_the_same_floats_from_a_window_and_from_its_frame(method: str) -> None:
    cfg = AllocationConfig(method=method, lookback_bars=60, min_history_bars=30,
                           max_weight=0.6)
    h = _history(61, 61, gaps=False)
    got: dict[str, list[str]] = {}
    for kind in ("frame", "window"):
        solver_cache.clear()
        out = []
        for step in range(8):  # warm-started re-solves as the window moves on
            for j, s in enumerate(SYMBOLS):
                h.add(s, T0 + timedelta(hours=400 + step), 100.0 + j + np.sin(step + j))
            window = h.window(cfg.lookback_bars)
            given: pd.DataFrame | ReturnsWindow = window.frame() if kind == "frame" else window
            alloc = solve(given, cfg, 3600, {s: 0.25 for s in SYMBOLS})
            assert len(alloc.weights) == len(SYMBOLS)
            out.append(_key(alloc))
        got[kind] = out
        h = _history(61, 61, gaps=False)
    assert got["window"] == got["frame"]
