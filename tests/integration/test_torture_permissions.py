"""Torture (issue 17): the log's file and folder made read-only mid-session, and the activity journal beside the
log unwritable, seen by kernels that file modes bind.

The suite runs as root, whose CAP_DAC_OVERRIDE ignores file modes: a chmod would prove nothing. So the kernels
here run without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv drops them from the bounding set), still as
uid 0: file modes bind them as they bind any unprivileged user, and the interpreter under /root (0700) stays
reachable, which a fresh account's kernel could not execute. Run by a normal user, the kernels need no wrapper.

What POSIX promises decides what a user sees: a mode is checked when a file is opened, so a session whose log is
already open keeps recording into it after a chmod; whatever opens a file afresh (`%%durable --db`, a kernel
started now, a new activity journal) meets the new modes and must say so clearly, lose nothing, and record again
once the modes are restored.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from torture import figure, kernel_env, new_notebook, ok, recorded_cells, sound

from durable_nb.demo import NotebookKernel

pytestmark = pytest.mark.integration
BOUND_KERNEL = "durable-nb-file-modes"
# A cell that proves its kernel is bound by file modes (else the test would prove nothing).
PROBE = ("import os as _os, tempfile as _tf\n_d = _tf.mkdtemp()\n_p = _os.path.join(_d, 'ro')\n"
         "open(_p, 'w').close(); _os.chmod(_p, 0o444)\n"
         "try:\n    open(_p, 'a')\nexcept PermissionError:\n    print('bound by file modes')\n")
ACTIVITY = ("import durable_nb\ncalls_{name} = 0\n@durable_nb.activity\ndef {name}(i):\n"
            "    global calls_{name}\n    calls_{name} += 1\n    return {{'i': i, 'square': i * i}}\n"
            "got_{name} = [{name}(i) for i in range(20)]\n"
            "print('{name}', calls_{name}, sum(r['square'] for r in got_{name}))")


@pytest.fixture
def bound_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A kernelspec whose kernels file modes bind; found through JUPYTER_PATH."""
    spec = tmp_path / "jupyter" / "kernels" / BOUND_KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "these tests drop root's file-mode override with setpriv (util-linux)"
        argv = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-all", *argv]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": BOUND_KERNEL,
                                                  "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    yield


def start(folder: Path, tmp_path: Path) -> NotebookKernel:
    folder.mkdir(exist_ok=True)
    nb = folder / "nb.ipynb"
    kernel = NotebookKernel(nb if nb.exists() else new_notebook(nb), kernel_env(tmp_path / "secret"),
                            kernel_name=BOUND_KERNEL)
    assert "bound by file modes" in ok(kernel.execute(PROBE)).text(), "the kernel ignores file modes"
    ok(kernel.execute("%load_ext durable_nb"))
    return kernel


def flip(folder: Path, writable: bool) -> None:
    """The log's files, the journal folder and the log's folder read-only (or back)."""
    for path in sorted(folder.iterdir()):
        if path.name.startswith("nb.durable.db"):
            path.chmod((0o755 if path.is_dir() else 0o644) if writable else (0o555 if path.is_dir() else 0o444))
    folder.chmod(0o755 if writable else 0o555)
    assert bool(folder.stat().st_mode & stat.S_IWUSR) == writable


def recorded_calls(db: Path) -> dict[str, int]:
    """Recorded activity calls by function name, in a sound log."""
    with sound(db) as conn:
        return dict(conn.execute("SELECT substr(function, instr(function, '.') + 1), count(*) FROM activity_call "
                                 "WHERE state = 'recorded' GROUP BY function").fetchall())


def test_log_and_journal_made_read_only_mid_session(bound_kernels: None, tmp_path: Path) -> None:
    folder = tmp_path / "work"
    db = folder / "nb.durable.db"
    kernel = start(folder, tmp_path)
    cold: NotebookKernel | None = None
    faults = 0
    first = "%%durable --name first\nimport numpy as np\nfirst = np.arange(300_000) * 3"
    try:
        assert ok(kernel.execute(first)).durable_states() == ["recorded"]
        assert "before 20 2470" in ok(kernel.execute(ACTIVITY.format(name="before"))).text()
        # The journal file of those calls is closed once they are in the log; a loaded machine's flusher may not
        # have got there yet, and an open file keeps its write access whatever the modes say.
        ok(kernel.execute("from durable_nb.log.calls import flush\nflush()"))
        flip(folder, writable=False)
        try:
            # The open log keeps its write access (modes are checked at open): nothing to report, nothing lost.
            second = ok(kernel.execute("%%durable --name second\nsecond = first[::2] + 1\nprint(second[-1])"))
            assert "899995" in second.text() and second.durable_states() == ["recorded"], second.text()
            # A new journal file cannot be created: the calls go straight into the log, said once.
            during = ok(kernel.execute(ACTIVITY.format(name="during"))).text()
            assert "during 20 2470" in during, during
            assert f"activity journal {db}-activities cannot be written (Permission denied)" in during, during
            assert "nothing is lost" in during and during.count("cannot be written") == 1, during
            faults += 1
            # A cell that opens the log afresh meets the modes: a clear status, the cell's values kept.
            fresh = ok(kernel.execute(f"%%durable --db {db} --name third\nthird = len(second)\nprint(third)"))
            said = fresh.text()
            assert "150000" in said and fresh.durable_states() == [], said
            assert "cell 'third' is not recorded" in said and f"cannot write durable log {db}" in said, said
            assert "read-only (permissions" in said and "Make both writable" in said, said
            faults += 1
            # A kernel started now: its cells and activities run, unrecorded, each said clearly.
            cold = start(folder, tmp_path)
            cold_cell = ok(cold.execute("%%durable --name cold\ncold = 7 * 6\nprint(cold)")).text()
            assert "42" in cold_cell and "cell 'cold' is not recorded" in cold_cell, cold_cell
            assert str(db) in cold_cell and "read-only" in cold_cell, cold_cell
            cold_calls = ok(cold.execute(ACTIVITY.format(name="cold_calls"))).text()
            assert "cold_calls 20 2470" in cold_calls and "runs unrecorded" in cold_calls, cold_calls
            assert str(db) in cold_calls, cold_calls
            faults += 1
            assert "899995 900000" in ok(kernel.execute("print(second[-1], len(first) * 3)")).text()
        finally:
            flip(folder, writable=True)
        # Modes restored: the cell that could not record records, the journal is used again.
        again = ok(kernel.execute(f"%%durable --db {db} --name third\nthird = len(second)\nprint(third)"))
        assert again.durable_states() == ["recorded"], again.durable_statuses()
        probe = ("\nfrom durable_nb import session\n"
                 "print('journal', session.current_log().call_recorder(lambda: None).journal.path is not None)")
        after = ok(kernel.execute(ACTIVITY.format(name="after") + probe))
        assert "after 20 2470" in after.text() and "journal True" in after.text(), after.text()
        assert "cannot be written" not in after.text(), after.text()
    finally:
        for k in (kernel, cold):
            if k is not None:
                with contextlib.suppress(Exception):
                    k.close()
    cells, calls = recorded_cells(db), recorded_calls(db)
    assert cells == ["first", "second", "third"], cells
    assert calls == {"before": 20, "during": 20, "after": 20}, calls
    replay = start(folder, tmp_path)
    try:
        for name in ("before", "during", "after"):
            out = ok(replay.execute(ACTIVITY.format(name=name))).text()
            assert f"{name} 0 2470" in out, f"the recorded calls of {name} replay without running: {out}"
        assert ok(replay.execute(first)).durable_states() == ["replayed"]
        assert str(3 * sum(range(300_000))) in ok(replay.execute("print(int(first.sum()))")).text()
    finally:
        replay.close()
    figure("read_only_permissions", faults_survived=f"{faults}/3", calls_recorded=sum(calls.values()),
           calls_lost=60 - sum(calls.values()), recorded_after_restore=True)
