"""Torture (issue 17): SIGKILLs at random instants of real kernels recording small values, 1-50 MB arrays and
DataFrames, activity loops, during the background checkpoints that follow each record, with Litestream
replicating; and SIGKILLs of the process that imports activity journals.

After every kill: the log opens, `PRAGMA integrity_check` says ok, every execution the log holds as recorded
loads the exact value its cell computed (the cell wrote its digest to a side channel before recording), every
cell the kernel reported as recorded is in the log, and a fresh kernel replays a recorded cell exactly.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import psutil
import pytest
from s3server import S3Server, wait_for
from torture import LONG, TESTS, digest, figure, noted, size

from durable_nb import DurableLog
from durable_nb.demo import KernelDied, NotebookKernel
from durable_nb.replicate import restore

pytestmark = pytest.mark.integration
KILLS = int(os.environ.get("DURABLE_NB_TORTURE_KILLS", size(10, 110)))
MAX_MB = size(20, 50)


@dataclass
class Cell:
    name: str
    kind: str
    source: str


@dataclass
class Tally:
    kills: int = 0
    survived: int = 0
    recorded_checked: int = 0
    replays_checked: int = 0
    restores_checked: int = 0
    phases: dict[str, int] = field(default_factory=dict)


def kernel_env(tmp_path: Path) -> dict[str, str]:
    return {"DURABLE_NB_SECRET_FILE": str(tmp_path / "secret"), "PYTHONHASHSEED": "1",
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def new_notebook(path: Path) -> Path:
    nbformat.write(nbformat.v4.new_notebook(), path)  # type: ignore[no-untyped-call]
    return path


def make_cell(rng: random.Random, name: str, side: Path) -> Cell:
    """One durable cell of a random kind; it notes the digest of `val` in `side` before it is recorded."""
    seed = rng.randrange(1 << 30)
    kind = rng.choice(["small", "array", "array", "frame", "activities"])
    head = f"%%durable --name {name}\nfrom torture import note\n"
    tail = f"note({str(side)!r}, {name!r}, val)\n"
    if kind == "small":
        body = f"val = {{'seed': {seed}, 'items': list(range({seed % 200})), 'text': 'x' * {seed % 5000}}}\n"
    elif kind == "array":
        mb = rng.uniform(1, MAX_MB)
        body = f"import numpy as np\nval = np.random.default_rng({seed}).random({int(mb * 131072)})\n"
    elif kind == "frame":
        rows = int(rng.uniform(1, MAX_MB) * 1e6 / 24)
        body = (f"import numpy as np, pandas as pd\n_r = np.random.default_rng({seed})\n"
                f"val = pd.DataFrame({{'a': _r.random({rows}), 'b': _r.integers(0, 1000, {rows}), "
                f"'c': pd.Categorical(_r.integers(0, 50, {rows}).astype(str))}})\n")
    else:
        # An activity loop: calls already recorded (earlier rounds) replay, the others run and are journaled.
        count = rng.randrange(200, 3000)
        body = (f"val = [square(i) for i in range({count})]\n"
                f"assert val == [i * i for i in range({count})], 'an activity replayed a wrong result'\n")
    return Cell(name, kind, head + body + tail)


ACTIVITY = "from durable_nb import activity\n@activity\ndef square(i):\n    return i * i\n"


def litestream_children(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if p.name() == "litestream"]
    except psutil.Error:
        return []


def check_log(db: Path, side: Path, reported: set[str], tally: Tally) -> dict[int, str]:
    """The checks after a kill; returns the recorded executions (id → cell name)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", f"{db} fails integrity_check"
        rows = conn.execute("SELECT id, cell_name FROM execution WHERE state = 'recorded'").fetchall()
        calls = conn.execute("SELECT count(*) FROM activity_call WHERE state = 'recorded'").fetchone()[0]
    finally:
        conn.close()
    recorded = {int(i): str(n) for i, n in rows}
    missing = reported - set(recorded.values())
    assert not missing, f"cells reported recorded are missing from the log: {sorted(missing)}"
    digests = noted(side)
    with DurableLog(db) as log:
        for ex_id, name in recorded.items():
            assert name in digests, f"{name} is recorded but its cell never finished computing its value"
            assert digest(log.load("val", execution=ex_id)) == digests[name], f"{name} replays another value"
            tally.recorded_checked += 1
    assert calls >= 0
    return recorded


def run_round(tmp_path: Path, nb: Path, rng: random.Random, index: int, tally: Tally, recorded: dict[int, str],
              cells: dict[str, Cell], s3: S3Server | None) -> None:
    db = nb.with_name(nb.stem + ".durable.db")
    side = tmp_path / "side.txt"
    kernel = NotebookKernel(nb, kernel_env(tmp_path))
    phase = ["start"]
    reported: set[str] = set()
    replicators: list[psutil.Process] = []
    try:
        kernel.execute("%load_ext durable_nb")
        if s3 is not None:
            done = kernel.execute(f"%durable_replicate s3://test/kills/{index}/k.durable.db "
                                  f"--endpoint {s3.endpoint} --sync-interval 100ms")
            assert done.status == "ok" and "replicating" in done.text(), done.text()
            wait_for(lambda: bool(litestream_children(kernel.pid)), 15, "Litestream to start")
            replicators = litestream_children(kernel.pid)
        kernel.execute(ACTIVITY)
        if recorded:
            # A recorded cell replays in this fresh kernel with exactly the value its first run computed.
            name = rng.choice(sorted(set(recorded.values())))
            again = kernel.execute(cells[name].source)
            assert again.status == "ok", again.text()
            assert again.durable_states() == ["replayed"], (name, again.durable_statuses())
            shown = kernel.execute("from torture import digest\nprint(digest(val))").text().strip()
            assert shown == noted(side)[name], f"the replay of {name} differs from what was recorded"
            tally.replays_checked += 1
        work = [make_cell(rng, f"r{index}c{i}", side) for i in range(8)]
        cells.update({c.name: c for c in work})
        # The kill comes at a random instant from the start of a random cell: inside a record, an activity
        # loop, or the pause after a commit in which the background checkpoint runs.
        target = rng.randrange(len(work))
        killer = threading.Timer(rng.uniform(0.0, 0.6), kernel.kill)
        for i, cell in enumerate(work):
            phase[0] = cell.kind
            if i == target:
                killer.start()
            try:
                run = kernel.execute(cell.source, timeout=300)
            except KernelDied:
                break
            assert not [o for o in run.outputs if o["msg_type"] == "error"], run.text()
            if run.durable_states() == ["recorded"]:
                reported.add(cell.name)
            phase[0] = "checkpoint"
            try:
                kernel.execute(f"import time\ntime.sleep({rng.uniform(0, 0.4):.2f})")
            except KernelDied:
                break
        else:
            phase[0] = "idle"
        killer.join()
        kernel.kill()
        tally.kills += 1
        tally.phases[phase[0]] = tally.phases.get(phase[0], 0) + 1
        for proc in replicators:  # it exits by itself when its kernel dies; never leave one behind
            with contextlib.suppress(psutil.Error):
                proc.kill()
    finally:
        kernel.kc.stop_channels()
        kernel.km.cleanup_resources()
    recorded.clear()
    recorded.update(check_log(db, side, reported, tally))
    if s3 is not None:
        restored = tmp_path / f"restored-{index}.durable.db"
        # A kill before Litestream's first sync leaves no backup; any backup there restores to a sound log.
        if restore(f"s3://test/kills/{index}/k.durable.db", restored, endpoint=s3.endpoint, timeout=60,
                   if_replica_exists=True):
            check_log(restored, side, set(), tally)
            tally.restores_checked += 1
    tally.survived += 1


def test_sigkill_at_random_instants(tmp_path: Path, s3: S3Server) -> None:
    nb = new_notebook(tmp_path / "k.ipynb")
    rng = random.Random(int(os.environ.get("DURABLE_NB_TORTURE_SEED", "17")))
    tally = Tally()
    recorded: dict[int, str] = {}
    cells: dict[str, Cell] = {}
    t0 = time.monotonic()
    try:
        for index in range(KILLS):
            run_round(tmp_path, nb, rng, index, tally, recorded, cells, s3 if index % 3 == 1 else None)
    finally:
        figure("sigkill", kills_survived=f"{tally.survived}/{tally.kills}", kills_by_phase=tally.phases,
               recorded_values_verified=tally.recorded_checked, fresh_kernel_replays_verified=tally.replays_checked,
               replica_restores_verified=tally.restores_checked, seconds=round(time.monotonic() - t0))
    assert tally.survived == KILLS
    assert tally.recorded_checked > 0 and tally.replays_checked > 0 and tally.restores_checked > 0


# ------------------------------------------------------------------------------------ journal imports

JOURNALER = """
import os, signal, sys
import durable_nb
from durable_nb.log import calls
calls._FLUSHER.wake = lambda recorder: None      # nothing moves into the log: every call stays journaled
durable_nb.open_log(sys.argv[1])
@durable_nb.activity
def cube(i):
    return {"i": i, "cube": i ** 3}
for i in range(int(sys.argv[2])):
    cube(i)
os.kill(os.getpid(), signal.SIGKILL)
"""

IMPORTER = """
import sys
from durable_nb import DurableLog
DurableLog(sys.argv[1], readonly=False).close()
print("imported")
"""


def recorded_cubes(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return int(conn.execute("SELECT count(DISTINCT key) FROM activity_call WHERE state = 'recorded' "
                                "AND function LIKE '%cube'").fetchone()[0])
    finally:
        conn.close()


def test_sigkill_while_importing_activity_journals(tmp_path: Path) -> None:
    calls_made = size(20_000, 60_000)
    source = tmp_path / "src" / "j.durable.db"
    source.parent.mkdir()
    made = subprocess.run([sys.executable, "-c", JOURNALER, str(source), str(calls_made)], capture_output=True,
                          text=True, timeout=300)
    assert made.returncode == -signal.SIGKILL, made.stderr
    journals = list((source.parent / "j.durable.db-activities").glob("*.jsonl"))
    assert journals and recorded_cubes(source) == 0, "the calls are all in the journal, none in the log"
    # How long an undisturbed import takes, to aim the kills inside it.
    probe = tmp_path / "probe"
    subprocess.run(["cp", "-a", str(source.parent), str(probe)], check=True)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", IMPORTER, str(probe / source.name)], check=True, timeout=300)
    took = time.monotonic() - t0
    assert recorded_cubes(probe / source.name) == calls_made
    rng = random.Random(3)
    kills, survived, interrupted = size(6, 30), 0, 0
    for k in range(kills):
        copy = tmp_path / f"copy{k}"
        subprocess.run(["cp", "-a", str(source.parent), str(copy)], check=True)
        db = copy / source.name
        proc = subprocess.Popen([sys.executable, "-c", IMPORTER, str(db)], stdout=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.3 * took, took))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        interrupted += "imported" not in out
        # The next process imports what is left; a call imported twice is still one call.
        done = subprocess.run([sys.executable, "-c", IMPORTER, str(db)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert recorded_cubes(db) == calls_made, "calls were lost by an import killed part way"
        assert not list((copy / "j.durable.db-activities").glob("*.jsonl")), "imported journals are removed"
        survived += 1
    figure("journal_import_kills", survived=f"{survived}/{kills}", killed_mid_import=interrupted,
           calls_each=calls_made, import_seconds=round(took, 2))
    assert survived == kills and interrupted > 0
    if LONG:
        assert interrupted >= kills // 2
