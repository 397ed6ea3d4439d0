"""Torture (issue 17): a soak of 4 real kernels on one log, recording cells and activity loops for 10 minutes
(about 40 s in the short version): no lock errors, no lost record, each kernel's memory growth after warm-up
bounded per cell.

Where a soak kernel's memory goes (one kernel, 1,500 cells, RSS after every 100, tracemalloc between cells 200 and
900 or 1,200): RSS rises linearly, by ~6.5 KiB a cell from cell 200, with no step. Dropping IPython's own
per-cell history after each cell (linecache's copy of every cell, `In`, `_iN`, `Out`, the history's outputs:
kept by IPython by design) leaves ~4.3 KiB, of which ~2.6 KiB is Python heap: our bounded caches filling (the
cell analyses, 512 at most; each activity's index of recorded calls), ipykernel's and jupyter_client's per-message
bits, and one dead weakref per blob opened (~90 bytes), which CPython 3.11's sqlite3 keeps in the connection's
list until it closes. The rest is the allocator's. In the 10 minute soak, past warm-up, the growth is ~2.7 KiB a
cell. So the test bounds the growth per cell after warm-up: a leak of anything a cell records (each records
400 KB here) shows as many times the bound.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

import psutil
import pytest
from torture import figure, new_notebook, size, sound

from durable_nb.demo import NotebookKernel

pytestmark = pytest.mark.integration
KERNELS = 4
SECONDS = int(os.environ.get("DURABLE_NB_TORTURE_SOAK_SECONDS", size(40, 600)))
ACTIVITY = "from durable_nb import activity\n@activity\ndef halve(i):\n    return i / 2\n"
# RSS growth allowed per cell after warm-up (the first third of the run): IPython's history and the
# allocator take ~6.5 KiB a cell (above); a record of 400 KB kept alive every 25 cells would take 16.
BOUND_KIB_PER_CELL = 16


def growth_after_warmup(samples: list[tuple[int, float]]) -> tuple[float, float]:
    """(MiB, KiB per cell) RSS grew from the end of warm-up to the end of the run, each end the median of a few
    samples (RSS moves by a page or two either way from one cell to the next)."""
    warm = len(samples) // 3
    start, end = samples[warm:warm + 5], samples[-5:]
    mib = statistics.median(r for _, r in end) - statistics.median(r for _, r in start)
    cells = statistics.median(n for n, _ in end) - statistics.median(n for n, _ in start)
    return mib, mib * 1024 / max(cells, 1)


def test_four_kernels_soak_one_log(tmp_path: Path) -> None:
    db = tmp_path / "soak.durable.db"
    reported: dict[int, int] = {}
    problems: list[str] = []
    locks: list[str] = []
    rss: dict[int, list[tuple[int, float]]] = {}

    def work(k: int) -> None:
        kernel = NotebookKernel(new_notebook(tmp_path / f"k{k}.ipynb"),
                                {"DURABLE_NB_DB": str(db), "DURABLE_NB_SECRET_FILE": str(tmp_path / "s")})
        try:
            for setup in ("%load_ext durable_nb", ACTIVITY):
                assert kernel.execute(setup).status == "ok"
            proc = psutil.Process(kernel.pid)
            samples = rss.setdefault(k, [])
            n, deadline = 0, time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                n += 1
                run = kernel.execute(
                    f"%%durable --name k{k}n{n}\nimport numpy as np\nv = np.full(50_000, {n}.0) + {k}\n"
                    f"h = [halve(i) for i in range({n % 7 * 40}, {n % 7 * 40 + 200})]\nlen(h)", timeout=120)
                text = run.text()
                if "locked" in text:
                    locks.append(f"kernel {k} cell {n}: {text[-300:]}")
                if run.status != "ok" or run.durable_states() != ["recorded"]:
                    problems.append(f"kernel {k} cell {n}: {run.durable_states()} {text[-300:]}")
                else:
                    reported[k] = reported.get(k, 0) + 1
                samples.append((n, proc.memory_info().rss / 2**20))
        finally:
            kernel.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(KERNELS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SECONDS + 300)
    with sound(db) as conn:
        in_log = conn.execute("SELECT count(*) FROM execution WHERE state = 'recorded'").fetchone()[0]
        calls = conn.execute("SELECT count(*) FROM activity_call WHERE state = 'recorded'").fetchone()[0]
    written = sum(reported.values())
    growth = {k: growth_after_warmup(s) for k, s in rss.items() if len(s) >= 30}
    figure("soak", kernels=KERNELS, seconds=SECONDS, records_written=written, records_lost=written - in_log,
           activity_calls=calls, lock_errors=len(locks), other_problems=len(problems),
           cells_per_kernel={k: len(s) for k, s in rss.items()},
           rss_mib_at_end={k: round(s[-1][1]) for k, s in rss.items() if s},
           growth_mib_after_warmup={k: round(mib, 1) for k, (mib, _) in growth.items()},
           growth_kib_per_cell_after_warmup={k: round(per, 1) for k, (_, per) in growth.items()})
    assert not locks and not problems, (locks + problems)[:3]
    assert len(growth) == KERNELS and written > 0, f"a kernel ran too few cells to measure: {rss.keys()}"
    assert in_log == written, "records reported recorded are missing from the log"
    assert all(per < BOUND_KIB_PER_CELL for _, per in growth.values()), \
        f"a kernel's memory grows after warm-up (KiB per cell): {growth}"
