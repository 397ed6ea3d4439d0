"""The first activity call of a plain script, beyond `import durable_nb` (issue 15: ≤ 30 ms).

A script pays for what its first call imports and for creating the log; it must not pay for IPython (asked only
when already imported) or asyncio. Both figures come from fresh processes in the same run, each median of 7.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import report

RUNS = 7
_SCRIPT = """
import time
t0 = time.perf_counter()
import durable_nb
t1 = time.perf_counter()

@durable_nb.activity
def double(x):
    return 2 * x

double(21)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def _once(folder: Path, *, fresh: bool = True) -> tuple[float, float]:
    for leftover in folder.glob("durable.db*") if fresh else ():
        if leftover.is_dir():
            for f in leftover.iterdir():
                f.unlink()
            leftover.rmdir()
        else:
            leftover.unlink()
    out = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=folder, capture_output=True, text=True, check=True,
                         env=_ENV)
    imported, first_call = (float(x) for x in out.stdout.split())
    return imported, first_call


# A user's installed package has its bytecode cached: a PYTHONDONTWRITEBYTECODE inherited from a test setup
# would compile every module of ours from source in every process and measure that instead.
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _once(Path(tmp))  # writes the bytecode caches
        runs = [_once(Path(tmp)) for _ in range(RUNS)]
        again = [_once(Path(tmp), fresh=False) for _ in range(RUNS)]  # the log exists: the call replays
    report("import durable_nb (fresh process)", statistics.median(r[0] for r in runs))
    report("first activity call of a script, new log (beyond the import)", statistics.median(r[1] for r in runs),
           limit=0.030, unit="s", limit_kind="abs")
    report("first activity call of a script, log exists (beyond the import)",
           statistics.median(r[1] for r in again), limit=0.030, unit="s", limit_kind="abs")
    print(f"    median of {RUNS} fresh processes each")
