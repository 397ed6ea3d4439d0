"""Torture (issue 17): replication faults while cells keep recording. The S3 server (a real rclone) is stopped
for 30 s (a few seconds in the short version) and Litestream is SIGKILLed: local work never blocks or fails,
replication catches up by itself, and a restore equals the local log.

The restore made as soon as `last_sync` passed the last commit used to miss the cells recorded during and after
the outage: the supervisor took Litestream's first upload of its backlog for a sync, and then a WAL read in
64 MB chunks for one that reached the WAL's end (durable_nb.replicate.Replicator._observe now reckons from the
WAL reads, and config() turns the chunks off). Litestream 0.5.17 itself reads no WAL while the server is
down, so the whole outage is read and shipped after it (README, Replication)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from s3server import S3Server, wait_for
from torture import figure, new_notebook, size, sound

from durable_nb.demo import CellRun, NotebookKernel
from durable_nb.replicate import restore

pytestmark = pytest.mark.integration
OUTAGE = size(6, 30)
URL = "s3://test/faults/nb.durable.db"
STATUS = ("from durable_nb import session as _s\nfrom durable_nb.replicate import replication_of as _r\n"
          "import json as _j\nprint(_j.dumps(_r(_s.current_log().path).status()))")


def rows(db: Path) -> list[tuple[object, ...]]:
    with sound(db) as conn:
        found: list[tuple[object, ...]] = conn.execute(
            "SELECT id, cell_name, key, state, bytes_stored FROM execution WHERE state = 'recorded' ORDER BY id"
        ).fetchall()
    return found


def status(kernel: NotebookKernel) -> dict[str, object]:
    run = kernel.execute(STATUS)
    assert run.status == "ok", run.text()
    return dict(json.loads(run.text().strip().splitlines()[-1]))


def test_s3_outage_and_litestream_kill_never_block_cells(tmp_path: Path, s3: S3Server) -> None:
    nb = new_notebook(tmp_path / "nb.ipynb")
    db = tmp_path / "nb.durable.db"
    kernel = NotebookKernel(nb, {"DURABLE_NB_SECRET_FILE": str(tmp_path / "secret"), **s3.env()})
    slowest = 0.0
    cells = 0

    def record(phase: str) -> CellRun:
        nonlocal slowest, cells
        cells += 1
        run = kernel.execute(f"%%durable --name {phase}{cells}\nimport numpy as np\n"
                             f"v{cells} = np.random.default_rng({cells}).random(250_000)", timeout=60)
        assert run.status == "ok" and run.durable_states() == ["recorded"], (phase, run.text())
        slowest = max(slowest, run.seconds)
        return run

    try:
        assert kernel.execute("%load_ext durable_nb").status == "ok"
        started = kernel.execute(f"%durable_replicate {URL} --endpoint {s3.endpoint} --sync-interval 100ms")
        assert "replicating" in started.text(), started.text()
        for _ in range(3):
            record("before")
        wait_for(lambda: status(kernel)["last_sync"] is not None, 20, "a first sync")

        s3.stop()  # the bucket's server is gone; cells keep recording locally at full speed
        outage_end = time.monotonic() + OUTAGE
        during = 0
        while time.monotonic() < outage_end:
            record("outage")
            during += 1
            time.sleep(0.3)
        s3.start()

        pid = status(kernel)["pid"]
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGKILL)  # Litestream dies; its supervisor restarts it
        for _ in range(3):
            record("after")
        wait_for(lambda: status(kernel)["pid"] not in (None, pid) and bool(status(kernel)["running"]), 30,
                 "Litestream to be restarted")
        settled = time.time() + 0.5
        wait_for(lambda: float(status(kernel)["last_sync"] or 0) > settled, 60, "replication to catch up")
        local = rows(db)
        restored = tmp_path / "restored.durable.db"
        assert restore(URL, restored, endpoint=s3.endpoint, timeout=60)
        assert rows(restored) == local, "the restore differs from the local log"
        final = status(kernel)
    finally:
        with contextlib.suppress(Exception):
            kernel.close()
        for proc in psutil.process_iter(["name", "cmdline"]):
            if proc.info["name"] == "litestream" and str(db) in " ".join(proc.info["cmdline"] or []):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
    assert slowest < 5.0, f"a cell waited {slowest:.1f} s for replication"
    figure("replication_faults", outage_seconds=OUTAGE, cells_recorded_during_outage=during,
           slowest_cell_seconds=round(slowest, 2), litestream_restarts=final["restarts"],
           restore_equals_local=True, executions=len(local))
