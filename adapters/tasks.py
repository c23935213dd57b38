"""Stopping background tasks reliably.

On Python 3.11 `asyncio.wait_for` (and code built on it, in libraries too) can swallow a
cancellation that arrives just as the awaited thing completes; a loop that then carries on
would make `await task` after one `cancel()` wait forever, hanging shutdown. `stop_task`
cancels again until the task is really done.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def stop_task(task: asyncio.Task[Any] | None, grace_s: float = 0.2) -> None:
    """Cancel `task` and wait until it has finished, re-cancelling every `grace_s`."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=grace_s)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()  # retrieved, so asyncio does not log "exception never retrieved"
