"""The first activity call of a plain script, beyond `import durable_nb` (issue 15: ≤ 30 ms).

A script pays for what its first call imports and for creating the log; it must not pay for IPython (asked only
when already imported) or asyncio. Both figures come from fresh processes in the same run, each median of 7.
Where valgrind is installed, the instructions the first call executes are counted too: a figure a busy machine
cannot blur (callgrind, one run).
"""

from __future__ import annotations

import os
import re
import shutil
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


def _instructions(folder: Path, script: str) -> int:
    run = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c",
                          script], cwd=folder, capture_output=True, text=True, check=True, env=_ENV)
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise RuntimeError(f"valgrind printed no instruction count: {run.stderr[-300:]}")
    return int(found.group(1))


def _count_instructions() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _once(Path(tmp))  # bytecode caches
        imported = _instructions(Path(tmp), "import durable_nb")
        for leftover in Path(tmp).glob("durable.db*"):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        whole = _instructions(Path(tmp), _SCRIPT)
        again = _instructions(Path(tmp), _SCRIPT)
    report("instructions of the first call, new log (callgrind)", (whole - imported) / 1e6, imported / 1e6,
           baseline_name="python + import durable_nb", unit="M")
    report("instructions of the first call, log exists (callgrind)", (again - imported) / 1e6, imported / 1e6,
           baseline_name="python + import durable_nb", unit="M")


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
    if shutil.which("valgrind"):
        _count_instructions()
    else:
        print("    (valgrind is not installed: the instruction count is not measured)")
