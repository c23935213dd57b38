"""Cold riskfolio-lib solves vs this engine's steady-state re-solves, and event-loop lag.

    .venv/bin/python bench/bench_solve.py [--reps 5] [--sizes 10 50 200]

Steady state is the daemon's: the `Rebalancer` re-solves on the latest `lookback_bars` of a
history that grew since its last solve, so each re-solve sees the previous window moved on by
one bar per bar elapsed (same shape; one bar here, the most frequent schedule). The bench rolls
a 365-bar window over one seeded factor-model series (365 + reps + 1 bars, Ledoit-Wolf
covariance): the first window warms the cache (that cold first solve of the shape is printed
apart), then each of the next `reps` windows is solved by a cold riskfolio-lib call (a fresh
Portfolio, as riskfolio works, with the engine's Clarabel settings) and by
`solver_cache.solve_kind` carrying its state over from the previous window. Both run on one
BLAS thread, as in the daemon's solver worker.

One row per (objective, assets): median seconds of each, their ratio, the largest weight
difference from riskfolio-lib on the same data, and the engines that answered. The difference
asserted (< 1e-6) is against a second, untimed riskfolio-lib solve at tighter Clarabel
tolerances; the one against the timed call is printed beside it (at the engine's tolerances
riskfolio-lib's own weights can sit ~1e-6 off the optimum, with a worse objective than the
cache's). Then the p99 lateness of a 1 ms asyncio ticker while riskfolio-lib MV Sharpe solves
of 200 assets run back to back in a worker process (the slowest solve the daemon makes, the
worst case for the loop), next to the same ticker with nothing running, which is the shared
machine's own noise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import multiprocessing as mp
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from risk import solver_cache
from risk.allocation import AllocationConfig, solve
from risk.constraints import ConstraintsConfig, build
from risk.errors import SolveError
from risk.estimators import EstimatorConfig, estimate
from risk.methods import CLARABEL_TIGHT

T = 365
CASES = [("MV min risk", "mv_min", "MV", "MinRisk"), ("MV Sharpe", "mv_sharpe", "MV", "Sharpe"),
         ("CVaR min risk", "cvar_min", "CVaR", "MinRisk")]


def returns(n: int, seed: int, bars: int = T) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    k = 3
    f = rng.normal(0.0, 0.03, size=(bars, k))
    x = f @ rng.normal(0.5, 0.4, size=(k, n)) + rng.normal(0.0015, 0.02, size=(bars, n))
    return pd.DataFrame(x, columns=[f"A{i}" for i in range(n)])


def rolling_windows(n: int, count: int, seed: int = 0) -> list[pd.DataFrame]:
    """`count` windows of T bars, each the previous one moved on by one bar."""
    series = returns(n, seed, T + count - 1)
    return [series.iloc[i:i + T].reset_index(drop=True) for i in range(count)]


# riskfolio-lib's interior point with the engine's tolerances (CLARABEL_TIGHT) leaves its weights
# off the exact optimum by up to ~3e-6 on some windows (its objective is then above ours): the
# weights are compared with a second, untimed riskfolio-lib solve at these tolerances
CLARABEL_REFERENCE = {"tol_gap_abs": 1e-13, "tol_gap_rel": 1e-13, "tol_feas": 1e-13,
                      "tol_ktratio": 1e-11, "max_iter": 400}


def riskfolio_cold(r: pd.DataFrame, mu: np.ndarray, cov: np.ndarray, rm: str, obj: str,
                   params: dict[str, float] | None = None) -> np.ndarray:
    import riskfolio as rp

    port = rp.Portfolio(returns=r)
    port.solvers = ["CLARABEL"]
    port.sol_params = {"CLARABEL": params or CLARABEL_TIGHT}
    port.mu = pd.DataFrame(mu[None, :], columns=r.columns)
    port.cov = pd.DataFrame(cov, index=r.columns, columns=r.columns)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        w = port.optimization(model="Classic", rm=rm, obj=obj, rf=0, hist=True)
    return w.to_numpy().ravel()


def timed(fn, *args) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def bench_solves(sizes: list[int], reps: int) -> list[dict[str, object]]:
    """Cold riskfolio-lib vs steady-state re-solve per case and size on a rolling window; prints
    a table and returns one row per case for `make bench`."""
    est_cfg = EstimatorConfig(cov="ledoit")
    failures: list[str] = []
    rows: list[dict[str, object]] = []
    print(f"{'objective':<15}{'assets':>7}{'riskfolio cold s':>18}{'steady re-solve s':>19}"
          f"{'ratio':>8}{'max |dw|':>10}{'|dw| engine tol':>17}  engine (first solve, s)")
    for label, kind, rm, obj in CASES:
        for n in sizes:
            lc = build([f"A{i}" for i in range(n)], ConstraintsConfig(), 0.0, 1.0)
            data = rolling_windows(n, reps + 1)
            ests = [estimate(r, est_cfg) for r in data]
            solver_cache.clear()
            try:
                first, _ = timed(solver_cache.solve_kind, kind, data[0].to_numpy(), ests[0].mu,
                                 ests[0].cov, lc)
            except SolveError as exc:
                print(f"{label:<15}{n:>7}  warm-up solve failed: {exc}")
                first = float("nan")
            cold, warm, diff, diff_engine = [], [], 0.0, 0.0
            for r, e in zip(data[1:], ests[1:], strict=True):
                tc, w_rf = timed(riskfolio_cold, r, e.mu, e.cov, rm, obj)
                try:
                    tw, w_c = timed(solver_cache.solve_kind, kind, r.to_numpy(), e.mu, e.cov, lc)
                except SolveError as exc:
                    failures.append(f"{label} n={n}: cache solve failed: {exc}")
                    continue
                cold.append(tc)
                warm.append(tw)
                w_ref = riskfolio_cold(r, e.mu, e.cov, rm, obj, CLARABEL_REFERENCE)
                diff = max(diff, float(np.abs(w_ref - np.asarray(w_c)).max()))
                diff_engine = max(diff_engine, float(np.abs(w_rf - np.asarray(w_c)).max()))
            if not warm:
                continue
            c, w = statistics.median(cold), statistics.median(warm)
            engines = ", ".join(f"{k.split(':')[1]} {v}" for k, v in
                                sorted(solver_cache.ENGINES.items()))
            print(f"{label:<15}{n:>7}{c:>18.4f}{w:>19.4f}{c / w:>8.1f}{diff:>10.1e}"
                  f"{diff_engine:>17.1e}  {engines} ({first:.3f})", flush=True)
            rows.append({"metric": f"{label}, {n} assets: cold riskfolio / steady re-solve",
                         "value": c / w, "unit": "x", "goal": ">= 5", "ok": c / w >= 5.0,
                         "note": f"cold {c * 1e3:.1f} ms, steady {w * 1e3:.2f} ms, "
                                 f"max |dw| {diff:.1e} ({diff_engine:.1e} at the engine's "
                                 f"tolerances), {engines}"})
            if diff >= 1e-6:
                failures.append(f"{label} n={n}: cache differs from riskfolio-lib by {diff:.2e}")
    assert not failures, "\n".join(failures)
    return rows


def run() -> list[dict[str, object]]:
    """For `make bench`: the solve table at 10/50/200 assets (3 repetitions) and loop lag while
    200-asset solves run in the daemon's own solver pool."""
    with threadpool_limits(1):  # as in the daemon's solver worker (daemon/solver.py)
        rows = bench_solves([10, 50, 200], reps=3)
    idle = asyncio.run(idle_lag(2.0))
    p99, worst, done = asyncio.run(loop_lag(200, 4.0, daemon_pool=True))
    rows.append({"metric": "event-loop lag p99 while 200-asset solves run (SolverPool)",
                 "value": p99, "unit": "ms", "goal": "< 5", "ok": p99 < 5.0,
                 "note": f"max {worst:.1f} ms over {done} solves; "
                         f"{idle:.2f} ms with no solve running (the machine's own noise)"})
    return rows


async def idle_lag(seconds: float) -> float:
    """p99 lateness of the same 1 ms ticker with nothing else running: what the shared
    machine alone costs, to read the lag under solves against."""
    lags: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - t - 0.001)
    lags.sort()
    return lags[int(0.99 * (len(lags) - 1))] * 1e3


async def loop_lag(n: int, seconds: float, daemon_pool: bool = False
                   ) -> tuple[float, float, int]:
    """Event-loop lag while solves run back to back in a worker process: either a plain
    ProcessPoolExecutor, or the daemon's own SolverPool (one math thread, lower priority)."""
    from daemon.solver import SolverPool

    loop = asyncio.get_running_loop()
    r = returns(n, 0)
    cfg = AllocationConfig(method="max_sharpe", lookback_bars=T, use_solver_cache=False)
    lags: list[float] = []
    done = 0
    if daemon_pool:
        solver_pool = SolverPool("process", timeout_s=600)
        run = solver_pool.run
    else:
        # spawn, not fork: forking a parent that already runs BLAS/solver threads can deadlock
        executor = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))

        async def run(*args: object) -> object:
            return await loop.run_in_executor(executor, *args)  # type: ignore[arg-type]
    try:
        await run(solve, r, cfg, 86_400)  # worker start-up, imports
        stop = time.perf_counter() + seconds

        async def ticker() -> None:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                await asyncio.sleep(0.001)
                lags.append(time.perf_counter() - t - 0.001)

        async def solver() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await run(solve, r, cfg, 86_400)
                done += 1

        await asyncio.gather(ticker(), solver())
    finally:
        if daemon_pool:
            solver_pool.close()
        else:
            executor.shutdown(wait=True)
    lags.sort()
    return lags[int(0.99 * (len(lags) - 1))] * 1e3, lags[-1] * 1e3, done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--lag-seconds", type=float, default=5.0)
    args = ap.parse_args()
    with threadpool_limits(1):  # as in the daemon's solver worker (daemon/solver.py)
        bench_solves(args.sizes, args.reps)
    print(f"\nevent-loop lag, 1 ms ticker, no solve running: p99 "
          f"{asyncio.run(idle_lag(2.0)):.2f} ms")
    for label, daemon_pool in (("plain ProcessPoolExecutor", False),
                               ("daemon SolverPool", True)):
        p99, worst, done = asyncio.run(loop_lag(200, args.lag_seconds, daemon_pool))
        print(f"\nevent-loop lag, 1 ms ticker, {done} riskfolio MV-Sharpe solves of 200 assets, "
              f"{label}: p99 {p99:.2f} ms, max {worst:.2f} ms (goal p99 < 5 ms)")


if __name__ == "__main__":
    main()
