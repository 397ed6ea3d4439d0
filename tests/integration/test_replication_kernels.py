"""Replication seen from real kernels: `%durable_replicate` and the replication settings, the real Litestream, a
real rclone S3 server, real SIGKILLs. A side-channel file counts the real executions of every cell, so that a
replay that secretly re-ran a cell is caught."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import psutil
import pytest
from s3server import S3Server, wait_for

from durable_nb.demo import CellRun, KernelDied, NotebookKernel, code_cells
from durable_nb.replicate import restore

pytestmark = pytest.mark.integration
SYNC_TIMEOUT = 15.0

WAIT_FOR_SYNC = """\
import json as _json, time as _time
from durable_nb import session as _session
from durable_nb.replicate import replication_of as _replication_of
_rep = _replication_of(_session.current_log().path)
# A sync that starts this long after the last commit has shipped it (100 ms sync and monitor intervals).
_after = _time.time() + 0.3
_deadline = _time.monotonic() + {timeout}
while _rep is not None and (_rep.status()["last_sync"] or 0) <= _after and _time.monotonic() < _deadline:
    _time.sleep(0.05)
print(_json.dumps(_rep and _rep.status()))
"""


def durable_cells(counts: Path) -> list[str]:
    """Three durable cells with numpy values and prints; each appends its name to `counts` when it really runs."""
    def mark(name: str) -> str:
        return f"open({str(counts)!r}, 'a').write('{name}\\n')\n"

    return [
        "%%durable --name load\nimport numpy as np\n" + mark("load")
        + "data = np.arange(1000, dtype=np.float64)\nprint('loaded', data.size)",
        "%%durable --name stats\n" + mark("stats") + "scaled = data * 2\nmean = float(scaled.mean())\n"
        "print(f'mean {mean}')",
        "%%durable --name total\n" + mark("total") + "total = int(scaled.sum())\ntotal",
    ]


def make_notebook(path: Path, sources: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]  # type: ignore[no-untyped-call]
    nbformat.write(nb, path)  # type: ignore[no-untyped-call]
    return path


def copy_notebook(nb: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(nb, folder / nb.name))


def log_of(nb: Path) -> Path:
    return nb.with_name(nb.stem + ".durable.db")


def executions(db: Path) -> list[tuple[object, ...]]:
    """Every execution of a log after checking its integrity, read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", f"{db} fails integrity_check"
        return conn.execute("SELECT id, cell_name, key, state FROM execution ORDER BY id").fetchall()
    finally:
        conn.close()


def real_runs(counts: Path) -> list[str]:
    return counts.read_text().split() if counts.exists() else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def litestream_for(db: Path) -> list[psutil.Process]:
    """Live Litestream processes replicating `db`: named on their command line, in their config, or open."""
    target = str(db.resolve())
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if not cmd or Path(cmd[0]).name != "litestream" or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        texts = [" ".join(cmd)]
        if "-config" in cmd[:-1]:
            with contextlib.suppress(OSError):
                texts.append(Path(cmd[cmd.index("-config") + 1]).read_text())
        with contextlib.suppress(psutil.Error):
            texts += [f.path for f in proc.open_files()]
        if any(target in text for text in texts):
            found.append(proc)
    return found


class Kernels:
    """Starts real kernels; closes them, and kills any Litestream left on their logs, even when a test fails."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.started: list[tuple[NotebookKernel, Path]] = []

    def start(self, nb: Path, **env: str) -> NotebookKernel:
        kernel = NotebookKernel(nb, {**self.env, **env})
        self.started.append((kernel, log_of(nb)))
        return kernel

    def run_all(self, nb: Path, **env: str) -> list[CellRun]:
        kernel = self.start(nb, **env)
        try:
            return run_cells(kernel, nb)
        finally:
            kernel.close()

    def close(self) -> None:
        for kernel, db in self.started:
            with contextlib.suppress(Exception):
                kernel.close()
            for proc in litestream_for(db):
                with contextlib.suppress(psutil.Error):
                    proc.kill()


def run_cells(kernel: NotebookKernel, nb: Path, *, stop: int | None = None) -> list[CellRun]:
    """Run the notebook's code cells (the first `stop` of them) with their ids, as Run All does; every one must
    succeed."""
    runs = []
    for index, (cell_id, source) in enumerate(code_cells(nb)[:stop]):
        run = kernel.execute(source, cell_id=cell_id, timeout=120)
        run.index = index
        assert run.status == "ok", f"cell {index} failed:\n{source}\n{run.text()}{run.outputs[-1:]}"
        runs.append(run)
    return runs


def wait_for_sync(kernel: NotebookKernel) -> dict[str, object]:
    """Replication status inside the kernel, once a sync happened after everything committed so far."""
    run = kernel.execute(WAIT_FOR_SYNC.format(timeout=SYNC_TIMEOUT), timeout=SYNC_TIMEOUT + 30)
    assert run.status == "ok", run.text()
    status = json.loads(run.text().strip().splitlines()[-1])
    assert status is not None, "the kernel is not replicating its log"
    assert status["error"] is None, f"replication reports an error: {status['error']}"
    assert status["last_sync"] is not None and status["running"], f"no sync within {SYNC_TIMEOUT} s: {status}"
    return dict(status)


@pytest.fixture
def kernel_env(tmp_path: Path, s3: S3Server) -> dict[str, str]:
    return {"DURABLE_NB_SECRET_FILE": str(tmp_path / "secret"), **s3.env()}


@pytest.fixture
def kernels(kernel_env: dict[str, str]) -> Iterator[Kernels]:
    started = Kernels(kernel_env)
    try:
        yield started
    finally:
        started.close()


def test_replicate_restore_elsewhere_and_replay(s3: S3Server, tmp_path: Path, kernels: Kernels) -> None:
    counts = tmp_path / "real-runs.txt"
    url = "s3://test/team/nb.durable.db"
    nb_a = make_notebook(tmp_path / "a" / "nb.ipynb", [
        "%load_ext durable_nb",
        f"%durable_replicate {url} --endpoint {s3.endpoint} --sync-interval 100ms",
        *durable_cells(counts),
    ])
    kernel = kernels.start(nb_a)
    first = run_cells(kernel, nb_a)
    assert "replicating nb.durable.db → s3://test/team/nb.durable.db" in first[1].text()
    assert [r.durable_states() for r in first[2:]] == [["recorded"]] * 3
    wait_for_sync(kernel)
    status = kernel.execute("%durable_status").text()
    assert "replicating nb.durable.db" in status and "last sync" in status, status

    restored = tmp_path / "b" / "nb.durable.db"
    cli = Path(sys.executable).parent / "durable-nb"
    done = subprocess.run([str(cli), "restore", url, "-o", str(restored), "--endpoint", s3.endpoint],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    recorded = executions(log_of(nb_a))
    assert [r[3] for r in recorded] == ["recorded"] * 3
    assert executions(restored) == recorded, "the restore misses executions committed before the last sync"
    kernel.close()

    second = kernels.run_all(copy_notebook(nb_a, tmp_path / "b"))
    assert [r.durable_states() for r in second[2:]] == [["replayed"]] * 3
    assert "loaded 1000" in second[2].text() and "mean 999.0" in second[3].text()
    (result,) = [o for o in second[4].outputs if o["msg_type"] == "execute_result"]
    assert result["content"]["data"]["text/plain"] == "999000"
    assert real_runs(counts) == ["load", "stats", "total"], "a replayed cell really ran again"


def test_sigkilled_kernel_leaves_no_litestream_and_resumes_elsewhere(
        s3: S3Server, tmp_path: Path, kernels: Kernels) -> None:
    counts = tmp_path / "real-runs.txt"
    url = "s3://test/killed/nb.durable.db"
    slow = ("%%durable --name slow\nimport os, time\n" f"open({str(counts)!r}, 'a').write('slow\\n')\n"
            "time.sleep(float(os.environ['SLOW_SECONDS']))\nslept = True")
    nb_a = make_notebook(tmp_path / "a" / "nb.ipynb", [
        "%load_ext durable_nb",
        f"%durable_replicate {url} --endpoint {s3.endpoint} --sync-interval 100ms",
        *durable_cells(counts)[:2],
        slow,
    ])
    kernel = kernels.start(nb_a, SLOW_SECONDS="120")
    run_cells(kernel, nb_a, stop=4)
    pid = wait_for_sync(kernel)["pid"]
    assert isinstance(pid, int)
    assert pid in {p.pid for p in psutil.Process(kernel.pid).children(recursive=True)}
    assert [p.pid for p in litestream_for(log_of(nb_a))] == [pid]

    # 1 s into the slow cell: ten sync intervals, so its `running` row is shipped too.
    timer = threading.Timer(1.0, kernel.kill)
    timer.start()
    try:
        with pytest.raises(KernelDied):
            kernel.execute(code_cells(nb_a)[4][1], cell_id=code_cells(nb_a)[4][0], timeout=60)
    finally:
        timer.cancel()
    wait_for(lambda: not litestream_for(log_of(nb_a)), 10, "Litestream to exit after its kernel was SIGKILLed")

    resumed = tmp_path / "b" / "nb.durable.db"
    assert restore(url, resumed, endpoint=s3.endpoint)
    assert [r[1:] for r in executions(resumed)] == [r[1:] for r in executions(log_of(nb_a))]
    assert [r[3] for r in executions(resumed)] == ["recorded", "recorded", "running"]

    nb_b = copy_notebook(nb_a, tmp_path / "b")
    kernel = kernels.start(nb_b, SLOW_SECONDS="0.1")
    second = run_cells(kernel, nb_b)
    assert [r.durable_states() for r in second[2:]] == [["replayed"], ["replayed"], ["recorded"]]
    assert real_runs(counts) == ["load", "stats", "slow", "slow"]
    # The resumed kernel keeps streaming to the same replica: a new restore sees the finished slow cell.
    wait_for_sync(kernel)
    again = tmp_path / "c" / "nb.durable.db"
    assert restore(url, again, endpoint=s3.endpoint)
    rows = {(r[1], r[3]) for r in executions(again)}
    assert {("load", "recorded"), ("stats", "recorded"), ("slow", "crashed"), ("slow", "recorded")} <= rows


def test_settings_restore_missing_log_then_replay(s3: S3Server, tmp_path: Path, kernels: Kernels) -> None:
    counts = tmp_path / "real-runs.txt"
    settings = {"DURABLE_NB_REPLICATE_URL": "s3://test/settings/nb.durable.db",
                "DURABLE_NB_REPLICATE_ENDPOINT": s3.endpoint, "DURABLE_NB_SYNC_INTERVAL": "100ms"}
    nb_a = make_notebook(tmp_path / "a" / "nb.ipynb", ["%load_ext durable_nb", *durable_cells(counts)])
    kernel = kernels.start(nb_a, **settings)
    first = run_cells(kernel, nb_a)
    assert "restored" not in first[0].text(), "there was no replica to restore from yet"
    assert [r.durable_states() for r in first[1:]] == [["recorded"]] * 3
    wait_for_sync(kernel)
    kernel.close()

    nb_b = copy_notebook(nb_a, tmp_path / "b")
    assert not log_of(nb_b).exists()
    second = kernels.run_all(nb_b, **settings)
    assert f"restored {log_of(nb_b)} from s3://test/settings/nb.durable.db" in second[0].text()
    assert [r.durable_states() for r in second[1:]] == [["replayed"]] * 3
    assert real_runs(counts) == ["load", "stats", "total"]
    # Replay bookkeeping rows are deferred and may die with the kernel; the restored records never do.
    assert [r[1:] for r in executions(log_of(nb_b))][:3] == [r[1:] for r in executions(log_of(nb_a))]


def test_unreachable_endpoint_fails_the_magic_and_cells_stay_local(
        tmp_path: Path, kernels: Kernels) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    counts = tmp_path / "real-runs.txt"
    nb = make_notebook(tmp_path / "nb.ipynb", [
        "%load_ext durable_nb", *durable_cells(counts)[:1], *durable_cells(counts)[1:2]])
    kernel = kernels.start(nb)
    cells = code_cells(nb)
    assert kernel.execute(cells[0][1], cell_id=cells[0][0]).status == "ok"
    t0 = time.perf_counter()
    failed = kernel.execute(f"%durable_replicate s3://test/x --endpoint {endpoint}")
    assert time.perf_counter() - t0 < 15, "the reachability check must fail fast"
    # IPython shows a UsageError as one stderr line, without a traceback.
    error = failed.text()
    assert failed.outputs[-1]["content"].get("name") == "stderr" and error.startswith("UsageError: "), error
    assert f"cannot reach the S3 endpoint {endpoint}" in error and "keeps working with its local log" in error
    runs = [kernel.execute(source, cell_id=cell_id) for cell_id, source in cells[1:]]
    assert [r.durable_states() for r in runs] == [["recorded"], ["recorded"]]
    assert "replicating" not in kernel.execute("%durable_status").text()
    assert not litestream_for(log_of(nb))
    assert [r[3] for r in executions(log_of(nb))] == ["recorded", "recorded"]
    assert real_runs(counts) == ["load", "stats"]
