"""`make bench`: every benchmark in bench/, one table.

    .venv/bin/python -m bench [--only bus replay ...] [--timeout 240]

Each module `bench/bench_<name>.py` exposes `run()`, returning a list of rows
(`{"metric", "value", "unit", "goal"?, "ok"?, "note"?}`) or, for modules written before this
runner, a dict the adapters below turn into rows. Every module runs in its own child process:
one benchmark's imports, caches, worker pools and memory never colour another's numbers, a
crash or a timeout costs one row, and each module's peak RSS is its own.

The machine is shared, so absolute numbers are noisy; read ratios measured within one run
(bus / raw queue, cold / steady solve) rather than comparing absolute figures across runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ORDER = ("bus", "gate", "solve", "pipeline", "replay")
Row = dict[str, Any]


def _adapt_gate(result: dict[str, Any]) -> list[Row]:
    """bench_gate.run(): {"rows": [{assets, model, p50_us, p99_us, ...}], goal_p99_us, ...}."""
    goal = result.get("goal_p99_us")
    rows: list[Row] = []
    for r in result.get("rows", []):
        headline = r["assets"] == 50 and r["model"] == "parametric_ewma"
        rows.append({
            "metric": f"risk gate per order p99 ({r['assets']} assets, {r['model']})",
            "value": r["p99_us"], "unit": "µs",
            "goal": f"< {goal:g}" if headline and goal else "",
            "ok": (r["p99_us"] < goal) if headline and goal else None,
            "note": f"p50 {r['p50_us']:.1f} µs, {r['orders_per_s']:,.0f} orders/s, "
                    f"per bar {r['per_bar_ms']:.2f} ms"})
    if "reference_loop_us" in result:
        rows.append({"metric": "machine speed: sum(range(1000))",
                     "value": result["reference_loop_us"], "unit": "µs",
                     "note": "about 10 µs on an idle core"})
    return rows


ADAPTERS = {"gate": _adapt_gate}


def _rows(name: str, result: Any) -> list[Row]:
    if isinstance(result, list):
        return [dict(r) for r in result]
    if isinstance(result, dict) and name in ADAPTERS:
        return ADAPTERS[name](result)
    if isinstance(result, dict) and isinstance(result.get("rows"), list):
        return [dict(r) for r in result["rows"]]
    return [{"metric": str(k), "value": v, "unit": ""} for k, v in dict(result).items()]


def child(name: str, out: Path) -> None:
    module = importlib.import_module(f"bench.bench_{name}")
    run = getattr(module, "run", None)
    if run is None:
        rows: list[Row] = [{"metric": f"bench_{name}.py", "value": None, "unit": "",
                            "note": "has no run(); run it alone: "
                                    f".venv/bin/python bench/bench_{name}.py"}]
    else:
        rows = _rows(name, run())
        rows.append({"metric": "peak RSS of this benchmark process",
                     "value": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                     "unit": "MB"})
    out.write_text(json.dumps(rows, default=str))


def _run_child(name: str, timeout: float) -> tuple[list[Row], float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        started = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "bench", "--child", name,
                                   "--out", f.name], cwd=ROOT, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return [{"metric": f"bench_{name}", "value": None, "unit": "",
                     "note": f"timed out after {timeout:g} s"}], time.perf_counter() - started
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return [{"metric": f"bench_{name}", "value": None, "unit": "",
                     "note": f"failed: {last[:150]}"}], elapsed
        return json.loads(Path(f.name).read_text()), elapsed


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.2f}"
    return str(v)


def print_table(results: list[tuple[str, list[Row]]]) -> None:
    head = ("bench", "metric", "value", "unit", "goal", "ok", "note")
    lines = [(name, r.get("metric", ""), _fmt(r.get("value")), r.get("unit", ""),
              r.get("goal", "") or "", {True: "yes", False: "NO"}.get(r.get("ok"), ""),
              r.get("note", "") or "") for name, rows in results for r in rows]
    widths = [max(len(h), *(len(str(x[i])) for x in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    widths[-1] = len(head[-1])  # the note runs to the end of the line

    def fmt(cols: tuple[Any, ...]) -> str:
        cells = [str(c).rjust(w) if i == 2 else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(cols, widths, strict=True))]
        return "  ".join(cells).rstrip()

    print(fmt(head))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print(fmt(line))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=ORDER, help="run only these benchmarks")
    ap.add_argument("--timeout", type=float, default=240.0, help="per benchmark, seconds")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.out)
        return
    names = [n for n in ORDER if (not args.only or n in args.only)
             and (ROOT / "bench" / f"bench_{n}.py").exists()]
    results: list[tuple[str, list[Row]]] = []
    started = time.perf_counter()
    for name in names:
        print(f"running bench_{name} ...", file=sys.stderr, flush=True)
        rows, elapsed = _run_child(name, args.timeout)
        print(f"  done in {elapsed:.1f} s", file=sys.stderr, flush=True)
        results.append((name, rows))
    print_table(results)
    print(f"\n{len(names)} benchmarks in {time.perf_counter() - started:.0f} s on a shared "
          "machine: compare ratios within this table, not absolute numbers across runs.")


if __name__ == "__main__":
    main()
