"""`durable-nb run` on real kernels: SIGKILLs at random moments with resume, parameters, exit codes; and
`%durable on` in a real kernel. Nothing mocked: real `durable-nb` processes, real ipykernels, real SIGKILLs.

A side channel file (`side.log` beside the notebook) gets a line each time a cell body or an activity call
actually completes; replays write nothing there, so it counts what really ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nbformat
import pytest

from durable_nb import run_notebook
from durable_nb.demo import NotebookKernel
from durable_nb.status import MIME

pytestmark = pytest.mark.integration
DURABLE_NB = str(Path(sys.executable).with_name("durable-nb"))

# (cell id, side-channel word, source); the word is None for cells that write nothing.
CELLS: list[tuple[str, str | None, str]] = [
    # Left alone by the durable mode (it starts with a magic), so it runs in every kernel. The activity is defined
    # here rather than in a durable cell: a wrapper restored by a replay fingerprints differently from the
    # original (fingerprint.py), which would make the loop cell re-run once (its calls still replay).
    ("setup", None, "%load_ext durable_nb\nimport time\nimport durable_nb\n\ndef mark(word):\n"
                    "    with open('side.log', 'a') as f:\n        f.write(word + '\\n')\n\n"
                    "@durable_nb.activity()\ndef square(i):\n    time.sleep(0.15)\n    mark(f'call {i}')\n"
                    "    return i * i"),
    ("params", None, "rows = 3000\nscale = 1.0\nfail = False"),
    ("load", "load", "import numpy as np\nimport pandas as pd\n"
                     "df = pd.DataFrame({'x': np.arange(rows), 'y': np.arange(rows) * scale})\n"
                     "print(f'loaded {len(df)} rows')\nmark('load')"),
    ("slow", "slow", "import time\ntime.sleep(1.5)\ntotal = float(df['y'].sum())\nprint('total', total)\n"
                     "mark('slow')"),
    ("half", "half", "half = rows // 2\nprint('half', half)\nmark('half')"),
    ("loop", "loop", "squares = [square(i) for i in range(16)]\nprint('squares', sum(squares))\nmark('loop')"),
    ("figure", "figure", "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(3, 2))\n"
                         "ax.plot(squares)\nprint('plotted')\nmark('figure')"),
    ("summary", "summary", "summary = df.describe()\nmark('summary')\nsummary"),
    ("doubled", "doubled", "doubled = total * 2\nprint('doubled', doubled)\nmark('doubled')"),
    ("check", "check", "if fail:\n    raise ValueError('asked to fail')\nchecked = True\nmark('check')"),
    ("rows", "rows", "print('rows', rows)\nmark('rows')"),
    ("report", "report", "report = {'rows': rows, 'total': total, 'squares': sum(squares), 'checked': checked}\n"
                         "mark('report')\nreport"),
]
WORDS = {cell_id: word for cell_id, word, _ in CELLS if word}


def write_notebook(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# A batch job", id="title")]
    for cell_id, _, source in CELLS:
        cell = nbformat.v4.new_code_cell(source, id=cell_id)
        if cell_id == "params":
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    assert sum(c.cell_type == "code" for c in nb.cells) == 12
    path = folder / "job.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "DURABLE_NB_SECRET_FILE": str(tmp_path / "secret"), "PYTHONHASHSEED": "0"}


def cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DURABLE_NB, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def side(folder: Path) -> Counter[str]:
    path = folder / "side.log"
    return Counter(path.read_text().split("\n")[:-1]) if path.exists() else Counter()


def visible(path: Path) -> list[tuple[str, list[Any]]]:
    """What a reader sees of each code cell: streams, rich outputs, errors; not the durable status badges,
    execution counts or metadata."""
    nb = nbformat.read(path, as_version=4)
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        items: list[Any] = []
        for out in cell.outputs:
            if out.output_type == "stream":
                text = "".join(line for line in out.text.splitlines(keepends=True)
                               if "building the font cache" not in line)
                items.append(["stream", out.name, text])
            elif out.output_type in ("display_data", "execute_result"):
                if MIME not in out.data:
                    items.append([out.output_type, json.dumps(out.data, sort_keys=True)])
            elif out.output_type == "error":
                items.append(["error", out.ename, out.evalue])
        cells.append((cell.source, items))
    return cells


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_twenty_sigkills_resume_to_the_uninterrupted_output(tmp_path: Path, env: dict[str, str]) -> None:
    reference = write_notebook(tmp_path / "reference")
    done = cli(["run", str(reference)], env, reference.parent)
    assert done.returncode == 0, done.stderr
    assert "12 code cells: 11 recorded · 1 ran" in done.stderr, done.stderr

    nb = write_notebook(tmp_path / "killed")
    rng = random.Random(20261126)
    kills: list[str] = []
    attempts = 0
    while len(kills) < 20:
        attempts += 1
        assert attempts <= 40, f"only {len(kills)} kills landed in {attempts} runs"
        errors = nb.parent / f"run-{attempts}.err"
        with errors.open("w") as err:
            proc = subprocess.Popen([DURABLE_NB, "run", str(nb)], stdout=subprocess.DEVNULL, stderr=err, env=env,
                                    cwd=nb.parent, start_new_session=True)
        # Kernel OOM (the kernel alone dies; the runner must notice and say so) or a preempted machine (the
        # runner and its kernel die at the same instant), at a random moment of the run.
        machine = len(kills) % 2 == 1
        time.sleep(rng.uniform(0.3, 5.0))
        kernels = [c for c in children(proc.pid) if b"ipykernel" in Path(f"/proc/{c}/cmdline").read_bytes()]
        if proc.poll() is not None:
            assert proc.returncode == 0, errors.read_text()
            continue  # it finished first: not a kill
        if machine:
            kill(proc.pid)
            for k in kernels:
                kill(k)
            proc.wait(timeout=30)
            kills.append("machine")
            continue
        while not kernels and proc.poll() is None:
            time.sleep(0.05)
            kernels = [c for c in children(proc.pid) if b"ipykernel" in Path(f"/proc/{c}/cmdline").read_bytes()]
        for k in kernels:
            kill(k)
        rc = proc.wait(timeout=60)
        if rc == 0:
            continue  # the kernel was killed after the last cell, while shutting down: not a kill of the run
        message = errors.read_text()
        assert rc == 4, message
        assert "durable-nb run: the kernel died while" in message and "Traceback" not in message, message
        kills.append("kernel")

    final = cli(["run", str(nb)], env, nb.parent)
    assert final.returncode == 0, final.stderr
    assert visible(nb.with_name("job.out.ipynb")) == visible(reference.with_name("job.out.ipynb"))
    assert nbformat.read(nb, as_version=4).cells[2].outputs == [], "the input notebook is never written"

    ran = side(nb.parent)
    with sqlite3.connect(nb.with_name("job.durable.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        executions = conn.execute("SELECT cell_id, state FROM execution").fetchall()
        calls = conn.execute("SELECT key, state FROM activity_call").fetchall()
    for cell_id, word in WORDS.items():
        states = Counter(s for c, s in executions if c == cell_id)
        assert states["recorded"] == 1, f"cell {cell_id} was recorded {states['recorded']} times: {states}"
        # A body completes at most once per execution that was not a replay (recorded, or crashed right after).
        assert 1 <= ran[word] <= states["recorded"] + states["crashed"], (cell_id, ran[word], states)
    recorded_calls = [k for k, s in calls if s == "recorded"]
    assert len(recorded_calls) == len(set(recorded_calls)) == 16, "each activity call recorded exactly once"
    call_runs = sum(n for w, n in ran.items() if w.startswith("call "))
    assert {w for w in ran if w.startswith("call ")} == {f"call {i}" for i in range(16)}
    assert call_runs <= len(calls), "a completed call always has a row: no recorded call ran again"
    assert kills.count("kernel") == 10 and kills.count("machine") == 10
    print(f"{attempts} runs for 20 kills")


def test_parameters_rerun_exactly_the_dependent_cells_and_exit_codes(tmp_path: Path, env: dict[str, str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    nb = write_notebook(tmp_path / "params")
    monkeypatch.setenv("DURABLE_NB_SECRET_FILE", env["DURABLE_NB_SECRET_FILE"])
    first = run_notebook(nb)
    assert first.ok and first.count("recorded") == 11, str(first)
    before = side(nb.parent)

    second = run_notebook(nb, parameters={"scale": 2.0})
    assert second.ok, str(second)
    states = {c.cell_id: c.state for c in second.cells}
    reran = {c for c, s in states.items() if s == "recorded"}
    assert reran == {"injected-parameters", "load", "slow", "summary", "doubled", "report"}, states
    assert {c for c, s in states.items() if s == "replayed"} == {"params", "half", "loop", "figure", "check",
                                                                 "rows"}
    assert side(nb.parent) - before == Counter(["load", "slow", "summary", "doubled", "report"])
    assert second.time_saved > 1.5, "the slow activity loop replayed"
    out = nbformat.read(nb.with_name("job.out.ipynb"), as_version=4)
    injected = out.cells[3]
    assert injected.metadata.tags == ["injected-parameters"] and "scale = 2.0" in injected.source
    assert "doubled 17994000.0" in "".join(o.get("text", "") for o in out.cells[10].outputs)
    assert "replayed" in second._repr_html_() and "time saved" in str(second)

    failing = cli(["run", str(nb), "-p", "fail", "True", "-o", "failed.ipynb"], env, nb.parent)
    assert failing.returncode == 3, failing.stderr
    last = failing.stderr.strip().splitlines()[-1]
    assert last.startswith("durable-nb run: cell 11 (if fail:) of job.ipynb failed: ValueError: asked to fail"), last
    assert "Traceback" not in failing.stderr and (nb.parent / "failed.ipynb").is_file()

    (nb.parent / "broken.ipynb").write_text('{"cells": [')
    cases = [
        (["run", str(nb), "-p", "alpha", "1"], "unknown parameter alpha: the parameters cell of job.ipynb sets"),
        (["run", "missing.ipynb"], "notebook missing.ipynb does not exist"),
        (["run", str(nb), "--kernel", "no-such-kernel"], "no kernel named 'no-such-kernel'"),
        (["run", "broken.ipynb"], "broken.ipynb is not a readable notebook"),
        (["run", str(nb), "-o", str(nb)], "is the input notebook"),
    ]
    for argv, message in cases:
        done = cli(argv, env, nb.parent)
        assert done.returncode == 1, (argv, done.stderr)
        assert done.stderr.startswith("durable-nb run: ") and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_mode_on_in_a_real_kernel_records_replays_and_opts_out(tmp_path: Path, env: dict[str, str]) -> None:
    nb = tmp_path / "mode.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), nb)
    cells: list[tuple[str, str, list[str]]] = [
        ("c-load", "%load_ext durable_nb\n%durable on", []),
        ("c-x", "x = 6 * 7\nprint('x is', x)", []),
        ("c-tagged", "y = x + 1\nprint('tagged', y)", ["durable-off"]),
        ("c-off", "%%durable --off\nz = x + 2", []),
        ("c-shell", "!echo from-shell", []),
        ("c-w", "w = x + y + z\nw", []),
    ]
    kernel_env = {k: env[k] for k in ("DURABLE_NB_SECRET_FILE", "PYTHONHASHSEED")}
    for expected in (["recorded"], ["replayed"]):
        kernel = NotebookKernel(nb, kernel_env)
        try:
            runs = [kernel.execute(src, cell_id=cid, tags=tags) for cid, src, tags in cells]
        finally:
            kernel.close()
        assert [r.status for r in runs] == ["ok"] * 6, [r.text() for r in runs]
        assert [r.durable_states() for r in runs] == [[], expected, [], [], [], expected]
        assert "x is 42" in runs[1].text() and "tagged 43" in runs[2].text() and "from-shell" in runs[4].text()
        # The cell's value (Out[n]); the status badge may be updated in place after it.
        results = [o for o in runs[5].outputs if o["msg_type"] == "execute_result"]
        assert [r["content"]["data"]["text/plain"] for r in results] == ["129"]
    with sqlite3.connect(tmp_path / "mode.durable.db") as conn:
        assert sorted(conn.execute("SELECT DISTINCT cell_id FROM execution")) == [("c-w",), ("c-x",)]
