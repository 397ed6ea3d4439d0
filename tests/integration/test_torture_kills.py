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
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from s3server import S3Server, wait_for
from torture import digest, figure, kernel_env, new_notebook, noted, size, sound

from durable_nb import DurableLog
from durable_nb.demo import KernelDied, NotebookKernel
from durable_nb.replicate import restore

pytestmark = pytest.mark.integration
KILLS = int(os.environ.get("DURABLE_NB_TORTURE_KILLS", size(10, 110)))
MAX_MB = size(20, 50)
# A new notebook and log every few kills: what a kill costs (the log's size, Litestream's first snapshot of it,
# the restore) stays bounded instead of growing with every kill before it.
KILLS_PER_LOG = 10


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
    final_checked: int = 0
    phases: dict[str, int] = field(default_factory=dict)


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


def recorded_rows(db: Path) -> dict[int, tuple[str, str, int]]:
    """The log's recorded executions (id → cell name, key, bytes stored), after `PRAGMA integrity_check`."""
    with sound(db) as conn:
        rows = conn.execute("SELECT id, cell_name, key, bytes_stored FROM execution "
                            "WHERE state = 'recorded'").fetchall()
    return {int(i): (str(n), str(k), int(b)) for i, n, k, b in rows}


def check_log(db: Path, side: Path, reported: set[str], tally: Tally,
              before: dict[int, tuple[str, str, int]]) -> dict[int, tuple[str, str, int]]:
    """The checks after a kill. A kill can only touch what its kernel wrote, so the values loaded are those of
    the executions recorded since `before` (the rows the previous check saw); those rows must all still be
    there, unchanged. Returns the recorded executions, the next check's `before`."""
    recorded = recorded_rows(db)
    changed = {i: row for i, row in before.items() if recorded.get(i) != row}
    assert not changed, f"recorded executions vanished or changed after a kill: {sorted(changed)[:5]}"
    missing = reported - {name for name, _, _ in recorded.values()}
    assert not missing, f"cells reported recorded are missing from the log: {sorted(missing)}"
    digests = noted(side)
    with DurableLog(db) as log:  # opening it for writing also imports the dead kernel's activity journals
        for ex_id, (name, _, _) in sorted(recorded.items()):
            if ex_id in before:
                continue
            assert name in digests, f"{name} is recorded but its cell never finished computing its value"
            assert digest(log.load("val", execution=ex_id)) == digests[name], f"{name} replays another value"
            tally.recorded_checked += 1
    return recorded


@dataclass
class Log:
    """One notebook's log and what its kills have recorded so far."""

    nb: Path
    side: Path
    secret: Path
    recorded: dict[int, tuple[str, str, int]] = field(default_factory=dict)
    cells: dict[str, Cell] = field(default_factory=dict)

    @property
    def db(self) -> Path:
        return self.nb.with_name(self.nb.stem + ".durable.db")


def run_round(log: Log, rng: random.Random, index: int, tally: Tally, s3: S3Server | None) -> None:
    kernel = NotebookKernel(log.nb, kernel_env(log.secret))
    phase = ["start"]
    reported: set[str] = set()
    replicators: list[psutil.Process] = []
    url = f"s3://test/kills/{index}/k.durable.db"
    try:
        kernel.execute("%load_ext durable_nb")
        if s3 is not None:
            done = kernel.execute(f"%durable_replicate {url} --endpoint {s3.endpoint} --sync-interval 100ms")
            assert done.status == "ok" and "replicating" in done.text(), done.text()
            wait_for(lambda: bool(litestream_children(kernel.pid)), 15, "Litestream to start")
            replicators = litestream_children(kernel.pid)
        kernel.execute(ACTIVITY)
        if log.recorded:
            # A recorded cell replays in this fresh kernel with exactly the value its first run computed.
            name = rng.choice(sorted({name for name, _, _ in log.recorded.values()}))
            again = kernel.execute(log.cells[name].source)
            assert again.status == "ok", again.text()
            assert again.durable_states() == ["replayed"], (name, again.durable_statuses())
            shown = kernel.execute("from torture import digest\nprint(digest(val))").text().strip()
            assert shown == noted(log.side)[name], f"the replay of {name} differs from what was recorded"
            tally.replays_checked += 1
        work = [make_cell(rng, f"r{index}c{i}", log.side) for i in range(8)]
        log.cells.update({c.name: c for c in work})
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
    before = log.recorded
    log.recorded = check_log(log.db, log.side, reported, tally, before)
    if s3 is not None:
        check_restore(log, url, s3, tally, before)
    tally.survived += 1


def check_restore(log: Log, url: str, s3: S3Server, tally: Tally, before: dict[int, tuple[str, str, int]]) -> None:
    """A restore of the replica made during the round is a sound log holding a prefix of the local one: rows
    equal to the local log's, the values recorded in this round exact. Replica and restore are then deleted
    (each is a full copy of the log)."""
    restored = log.nb.with_name("restored.durable.db")
    # A kill before Litestream's first sync leaves no backup; any backup there restores to a sound log.
    if restore(url, restored, endpoint=s3.endpoint, timeout=120, if_replica_exists=True):
        rows = recorded_rows(restored)
        assert all(log.recorded.get(i) == row for i, row in rows.items()), "the restore differs from the log"
        check_log(restored, log.side, set(), tally, {i: r for i, r in rows.items() if i in before})
        tally.restores_checked += 1
    for path in restored.parent.glob(restored.name + "*"):
        path.unlink()
    shutil.rmtree(s3.root / url.removeprefix("s3://").rsplit("/", 1)[0], ignore_errors=True)


def test_sigkill_at_random_instants(tmp_path: Path, s3: S3Server) -> None:
    rng = random.Random(int(os.environ.get("DURABLE_NB_TORTURE_SEED", "17")))
    tally = Tally()
    logs: list[Log] = []
    t0 = time.monotonic()
    try:
        for index in range(KILLS):
            if index % KILLS_PER_LOG == 0:
                if logs:
                    finish(logs[-1], tally)
                folder = tmp_path / f"log{len(logs)}"
                folder.mkdir()
                logs.append(Log(new_notebook(folder / "k.ipynb"), folder / "side.txt", tmp_path / "secret"))
            run_round(logs[-1], rng, index, tally, s3 if index % 3 == 1 else None)
        finish(logs[-1], tally)
    finally:
        figure("sigkill", kills_survived=f"{tally.survived}/{tally.kills}", kills_by_phase=tally.phases,
               logs=len(logs), recorded_values_verified=tally.recorded_checked,
               verified_again_at_end=tally.final_checked, fresh_kernel_replays_verified=tally.replays_checked,
               replica_restores_verified=tally.restores_checked, seconds=round(time.monotonic() - t0))
    assert tally.survived == KILLS
    assert tally.recorded_checked > 0 and tally.replays_checked > 0 and tally.restores_checked > 0
    assert tally.final_checked >= len({i for log in logs for i in log.recorded}) > 0


def finish(log: Log, tally: Tally) -> None:
    """Once a log has taken its kills: every value it holds checked again, then the log deleted (disk space)."""
    verified = tally.recorded_checked
    assert check_log(log.db, log.side, set(), tally, {}) == log.recorded
    tally.final_checked += tally.recorded_checked - verified
    tally.recorded_checked = verified
    shutil.rmtree(log.db.with_name(log.db.name + "-activities"), ignore_errors=True)
    for path in log.db.parent.glob(log.db.name + "*"):
        if path.is_file():
            path.unlink()


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
journal = durable_nb.session.current_log().call_recorder(lambda: None).journal
files, per_file = int(sys.argv[2]), int(sys.argv[3])
for i in range(files * per_file):
    cube(i)
    if i % per_file == per_file - 1:
        os.close(journal.rotate()[0])  # the next call starts the next file, as after a flush
os.kill(os.getpid(), signal.SIGKILL)
"""

# The importer stops where argv[2] says and reports it, to be killed there: `open N` is the N-th journal being
# read inside the import's transaction (the journals before it upserted, nothing committed), `remove N` the
# N-th imported journal about to be deleted after the commit. Python's audit events name both (no patching).
IMPORTER = """
import sys, time
from durable_nb import DurableLog
stop, seen = sys.argv[2:], {"open": 0, "os.remove": 0}
def halt(event, args):
    if stop and event in seen and str(args[0]).endswith(".jsonl"):
        seen[event] += 1
        if [event.removeprefix("os."), str(seen[event])] == stop:
            print("stopped at", *stop, flush=True)
            time.sleep(600)
sys.addaudithook(halt)
DurableLog(sys.argv[1], readonly=False).close()
print("imported")
"""


def recorded_cubes(db: Path) -> int:
    with sound(db) as conn:
        return int(conn.execute("SELECT count(DISTINCT key) FROM activity_call WHERE state = 'recorded' "
                                "AND function LIKE '%cube'").fetchone()[0])


def test_sigkill_while_importing_activity_journals(tmp_path: Path) -> None:
    runs, per_run = 4, size(3_000, 15_000)  # journal files, calls in each
    source = tmp_path / "src" / "j.durable.db"
    source.parent.mkdir()
    made = subprocess.run([sys.executable, "-c", JOURNALER, str(source), str(runs), str(per_run)],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == -signal.SIGKILL, made.stderr
    journals = list((source.parent / "j.durable.db-activities").glob("*.jsonl"))
    assert len(journals) == runs and recorded_cubes(source) == 0, "the calls are all in journals, none in the log"
    points = [(event, n) for event in ("open", "remove") for n in range(1, runs + 1)]
    kills, survived, interrupted = size(len(points), 4 * len(points)), 0, 0
    t0 = time.monotonic()
    for k in range(kills):
        event, n = points[k % len(points)]
        copy = tmp_path / f"copy{k}"
        subprocess.run(["cp", "-a", str(source.parent), str(copy)], check=True)
        db = copy / source.name
        proc = subprocess.Popen([sys.executable, "-c", IMPORTER, str(db), event, str(n)], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None
        said = proc.stdout.readline()
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert said.split() == ["stopped", "at", event, str(n)], f"the importer never reached {event} {n}: {said!r}"
        interrupted += 1
        left = len(list((copy / "j.durable.db-activities").glob("*.jsonl")))
        # Killed inside the transaction: every journal is still there; after the commit: those not yet deleted.
        assert left == (runs if event == "open" else runs - n + 1), (event, n, left)
        assert recorded_cubes(db) == (0 if event == "open" else runs * per_run), "a half import was committed"
        # The next process imports what is left; a call imported twice is still one call.
        done = subprocess.run([sys.executable, "-c", IMPORTER, str(db)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert recorded_cubes(db) == runs * per_run, "calls were lost by an import killed part way"
        assert not list((copy / "j.durable.db-activities").glob("*.jsonl")), "imported journals are removed"
        shutil.rmtree(copy)
        survived += 1
    figure("journal_import_kills", survived=f"{survived}/{kills}", killed_mid_import=interrupted,
           calls_each=runs * per_run, journals_each=runs, seconds=round(time.monotonic() - t0))
    assert survived == kills == interrupted
