"""Shared fixtures. `shared_data` points at ../shared/data (real Binance OHLCV): tests that need it
skip with a reason when it is absent on a developer machine, and fail under CI=true, where it
must be present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "binance-spot").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the shared market data is missing at {SHARED_DATA}")
        pytest.skip(f"shared market data not found at {SHARED_DATA} (clone beside ../shared)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _fresh_structlog():
    """A test that points structlog at its own (later closed) stream must not leak that
    configuration into the tests after it."""
    import structlog

    yield
    structlog.reset_defaults()
