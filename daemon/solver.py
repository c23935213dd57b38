"""Runs target-weight solves off the event loop, with a timeout.

A process pool by default: cvxpy and riskfolio-lib hold the GIL for long stretches, which in a
thread would stall the loop (bars, fills, heartbeats). The single worker process keeps its
imports and any warm solver state between solves. On timeout the worker is replaced, because a
running solve cannot be interrupted any other way.

"inline" runs the solve in the caller's thread, without a timeout: only for a lockstep replay,
which waits for every solve anyway; a worker would add only its hand-over.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Literal

from risk.allocation import SolveError


def _init_worker() -> None:
    """Keep the solver from competing with the event loop for a small VPS's cores: one math
    thread (BLAS, OpenMP) and a lower scheduling priority. `bench/bench_solve.py` measures loop
    lag with this pool against a plain one."""
    os.environ.update({k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                         "MKL_NUM_THREADS")})
    with contextlib.suppress(OSError):
        os.nice(5)
    with contextlib.suppress(Exception):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)


def _warm() -> bool:
    import riskfolio  # noqa: F401  (pay the import once, at start-up)

    return True


class SolverPool:
    def __init__(self, kind: Literal["process", "thread", "inline"] = "process",
                 timeout_s: float = 60.0) -> None:
        self.kind = kind
        self.timeout_s = timeout_s
        self._executor: Executor | None = None

    def _pool(self) -> Executor:
        if self._executor is None:
            if self.kind == "process":
                ctx = multiprocessing.get_context("spawn")
                self._executor = ProcessPoolExecutor(max_workers=1, mp_context=ctx,
                                                     initializer=_init_worker)
            else:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="solver")
        return self._executor

    async def warm_up(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool(), _warm)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            if self.kind == "inline":
                return fn(*args)
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._pool(), fn, *args)
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            self._discard()
            raise SolveError(f"solve timed out after {self.timeout_s:g} s") from None
        except SolveError:
            raise
        except Exception as exc:  # a crashed worker or a solver bug: still just a failed solve
            if isinstance(exc, Exception) and "BrokenProcessPool" in type(exc).__name__:
                self._discard()
            raise SolveError(f"{type(exc).__name__}: {exc}") from exc

    def _discard(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if isinstance(executor, ProcessPoolExecutor):
            for proc in list(getattr(executor, "_processes", {}).values()):
                proc.terminate()
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            if isinstance(executor, ProcessPoolExecutor):
                for proc in list(getattr(executor, "_processes", {}).values()):
                    proc.terminate()
            executor.shutdown(wait=False, cancel_futures=True)
