"""The turnover cap gives the same bits in every process: Python salts string hashes per
process, so anything summed in a set's order would change its last bits from run to run, and a
replay's metrics.json would no longer repeat byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import random
from risk.constraints import limit_turnover, turnover
rng = random.Random(5)
names = [f"C{i}/USDT" for i in range(40)]
w = {s: rng.random() * 10 ** rng.randint(-6, 0) for s in names[:30]}
previous = {s: rng.random() * 10 ** rng.randint(-6, 0) for s in names[10:]}
blended, a = limit_turnover(w, previous, 0.3)
print(repr(turnover(w, previous)), repr(a), [repr(blended[s]) for s in sorted(blended)])
"""


def test_turnover_and_its_cap_do_not_depend_on_the_hash_seed() -> None:
    outputs = set()
    for seed in ("1", "2", "3", "4", "5", "6"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True)
        outputs.add(done.stdout)
    assert len(outputs) == 1
