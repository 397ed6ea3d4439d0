"""Torture (issue 17): a soak of 4 real kernels on one log, recording cells and activity loops for 10 minutes
(about 40 s in the short version): no lock errors, no lost record, and each kernel's memory stays flat."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from torture import figure, size

from durable_nb.demo import NotebookKernel

pytestmark = pytest.mark.integration
KERNELS = 4
SECONDS = int(os.environ.get("DURABLE_NB_TORTURE_SOAK_SECONDS", size(40, 600)))
ACTIVITY = "from durable_nb import activity\n@activity\ndef halve(i):\n    return i / 2\n"


def test_four_kernels_soak_one_log(tmp_path: Path) -> None:
    db = tmp_path / "soak.durable.db"
    reported: dict[int, int] = {}
    problems: list[str] = []
    locks: list[str] = []
    memory: dict[int, tuple[float, float]] = {}

    def work(k: int) -> None:
        nb = tmp_path / f"k{k}.ipynb"
        nbformat.write(nbformat.v4.new_notebook(), nb)  # type: ignore[no-untyped-call]
        kernel = NotebookKernel(nb, {"DURABLE_NB_DB": str(db), "DURABLE_NB_SECRET_FILE": str(tmp_path / "s")})
        try:
            for setup in ("%load_ext durable_nb", ACTIVITY):
                assert kernel.execute(setup).status == "ok"
            proc = psutil.Process(kernel.pid)
            n, warm, deadline = 0, 0.0, time.monotonic() + SECONDS
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
                if n == 20:
                    warm = proc.memory_info().rss / 2**20  # after imports and caches settled
            memory[k] = (warm, proc.memory_info().rss / 2**20)
        finally:
            kernel.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(KERNELS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SECONDS + 300)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        in_log = conn.execute("SELECT count(*) FROM execution WHERE state = 'recorded'").fetchone()[0]
        calls = conn.execute("SELECT count(*) FROM activity_call WHERE state = 'recorded'").fetchone()[0]
    finally:
        conn.close()
    written = sum(reported.values())
    growth = {k: round(end - warm, 1) for k, (warm, end) in memory.items()}
    figure("soak", kernels=KERNELS, seconds=SECONDS, records_written=written, records_lost=written - in_log,
           activity_calls=calls, lock_errors=len(locks), other_problems=len(problems),
           memory_growth_mib_after_warmup=growth)
    assert not locks and not problems, (locks + problems)[:3]
    assert len(memory) == KERNELS and written > 0
    assert in_log == written, "records reported recorded are missing from the log"
    assert all(g < 60 for g in growth.values()), f"a kernel's memory grows: {growth} MiB"
