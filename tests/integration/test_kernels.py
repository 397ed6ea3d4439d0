"""Durable cells on real kernels: restarts, SIGKILLs at random instants, two kernels on one log."""

from __future__ import annotations

import random
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import nbformat
import pytest

from durable_nb.demo import CellRun, NotebookKernel, run_all

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).parents[2] / "example_notebooks"


def make_notebook(path: Path, sources: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def states(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT state FROM execution ORDER BY id")]


@pytest.fixture
def kernel_env(tmp_path: Path) -> dict[str, str]:
    return {"DURABLE_NB_SECRET_FILE": str(tmp_path / "secret"), "PYTHONHASHSEED": "1"}


def test_crash_resume_notebook(tmp_path: Path, kernel_env: dict[str, str]) -> None:
    nb = tmp_path / "crash_resume.ipynb"
    shutil.copy(EXAMPLES / "crash_resume.ipynb", nb)
    first = run_all(nb, kill_when="the slow cell", kill_after=1.5, env=kernel_env)
    assert first[-1].status == "killed"
    db = tmp_path / "crash_resume.durable.db"
    assert integrity(db) == "ok"
    kernel_env["PYTHONHASHSEED"] = "4242"
    second = run_all(nb, env=kernel_env)
    assert all(r.status == "ok" for r in second)
    assert [r.durable_states() for r in second[1:5]] == [["replayed"], ["replayed"], ["recorded"], ["recorded"]]
    assert "previous run crashed" in second[3].durable_statuses()[0]["message"]
    with sqlite3.connect(db) as conn:
        ended = conn.execute("SELECT ended_at IS NOT NULL FROM run ORDER BY id").fetchall()
    assert ended == [(0,), (1,)], "the killed run never ended; the clean one did, with its replay rows"
    assert states(db).count("replayed") == 2
    assert "loaded 200,000 sales" in second[1].text()
    shown = [o["msg_type"] for o in second[2].outputs if o["msg_type"] != "update_display_data"]
    assert shown[-1] == "execute_result", "the replayed result is shown as Out[n]"
    assert states(db).count("crashed") == 1
    # The report cell shows the chart the README promises, as a PNG, when recorded and when replayed.
    assert pngs(second[4]) == 1
    third = run_all(nb, env=kernel_env)
    assert third[4].durable_states() == ["replayed"] and pngs(third[4]) == 1


def pngs(run: CellRun) -> int:
    return sum("image/png" in o["content"].get("data", {}) for o in run.outputs
               if o["msg_type"] in ("display_data", "execute_result"))


def test_restart_replays_namespace_result_and_classes(tmp_path: Path, kernel_env: dict[str, str]) -> None:
    nb = make_notebook(tmp_path / "nb.ipynb", [
        "%load_ext durable_nb",
        "%%durable\nimport numpy as np\nclass Box:\n    def __init__(self, v):\n        self.v = v\n"
        "boxes = [Box(i) for i in range(3)]\narr = np.arange(5)\nsame = arr\nprint('built')\narr.sum()",
        "assert isinstance(boxes[0], Box) and same is arr\nassert _ == 10 and Out[2] == 10\nprint('checked')",
        "%%durable\nimport matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 3, 2])\nprint('plotted')",
    ])
    first = run_all(nb, env=kernel_env)
    assert [r.status for r in first] == ["ok"] * 4, first[-1].text()
    second = run_all(nb, env=kernel_env)
    assert [r.status for r in second] == ["ok"] * 4, second[-1].text()
    assert second[1].durable_states() == ["replayed"] and second[3].durable_states() == ["replayed"]
    assert "built" in second[1].text() and "checked" in second[2].text()
    pngs = [o for o in second[3].outputs if "image/png" in o["content"].get("data", {})]
    assert len(pngs) == 1, "the inline figure is recorded with the cell and replayed"


def test_sigkill_at_random_instants_never_replays_half_records(tmp_path: Path, kernel_env: dict[str, str]) -> None:
    nb = make_notebook(tmp_path / "kill.ipynb", [
        "%load_ext durable_nb",
        "%%durable\nimport numpy as np\nbig = np.random.default_rng(7).random(12_000_000)\nsmall = big[:10].copy()",
    ])
    db = tmp_path / "kill.durable.db"
    rng = random.Random(5)
    for _ in range(5):
        run_all(nb, kill_when="big =", kill_after=rng.uniform(0.05, 1.5), env=kernel_env)
        assert integrity(db) == "ok"
        with sqlite3.connect(db) as conn:
            broken = conn.execute(
                "SELECT count(*) FROM execution e WHERE e.state = 'recorded' AND NOT EXISTS "
                "(SELECT 1 FROM output o WHERE o.execution_id = e.id AND o.name = 'big')").fetchone()[0]
        assert broken == 0
    final = run_all(nb, env=kernel_env)
    assert final[1].status == "ok"
    assert final[1].durable_states()[0] in ("replayed", "recorded")


def test_two_kernels_share_one_log(tmp_path: Path, kernel_env: dict[str, str]) -> None:
    db = tmp_path / "shared.durable.db"
    cells = [f"%%durable --db {db}\nimport numpy as np\nv{i} = np.full(300_000, {i})" for i in range(15)]
    results: dict[str, list[CellRun]] = {}

    def work(name: str) -> None:
        kernel = NotebookKernel(make_notebook(tmp_path / f"{name}.ipynb", []), kernel_env)
        try:
            kernel.execute("%load_ext durable_nb")
            results[name] = [kernel.execute(c + f"\nwho = {name!r}") for c in cells]
        finally:
            kernel.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for name in ("a", "b"):
        bad = [r.text() for r in results[name] if r.status != "ok"]
        assert not bad, bad[0]
    assert states(db).count("recorded") == 30
    assert integrity(db) == "ok"


def test_kernel_exit_marks_run_ended_and_reaps_crashes(tmp_path: Path, kernel_env: dict[str, str]) -> None:
    nb = make_notebook(tmp_path / "nb.ipynb", [
        "%load_ext durable_nb", "%%durable\nimport time\ntime.sleep(30)"])
    run_all(nb, kill_when="sleep", kill_after=1.0, env=kernel_env)
    db = tmp_path / "nb.durable.db"
    assert states(db) == ["running"], "a killed kernel leaves its execution as running"
    kernel = NotebookKernel(nb, kernel_env)
    try:
        kernel.execute("%load_ext durable_nb")
        kernel.execute("%durable_status")
        time.sleep(0.2)
    finally:
        kernel.close()
    assert states(db) == ["crashed"]


def test_an_edited_data_file_reruns_its_cell_in_a_new_kernel(tmp_path: Path, kernel_env: dict[str, str]) -> None:
    import pandas as pd

    pd.DataFrame({"amount": [1, 2, 3]}).to_parquet(tmp_path / "sales.parquet")
    (tmp_path / "region.txt").write_text("north")
    nb = make_notebook(tmp_path / "files.ipynb", [])
    cells = ["%load_ext durable_nb",
             "%%durable\nimport pyarrow.parquet as pq, os\nfrom pathlib import Path\n"
             "total = pq.read_table('sales.parquet').column('amount').to_pylist()\n"
             "region = Path('region.txt').read_text()\nmode = os.getenv('REPORT_MODE', 'full')\n"
             "print(sum(total), region, mode)"]

    def run(env: dict[str, str]) -> CellRun:
        kernel = NotebookKernel(nb, env)
        try:
            return [kernel.execute(c) for c in cells][-1]
        finally:
            kernel.close()

    assert run(kernel_env).durable_states() == ["recorded"]
    assert run(kernel_env).durable_states() == ["replayed"]
    pd.DataFrame({"amount": [1, 2, 3, 4]}).to_parquet(tmp_path / "sales.parquet")  # read by Arrow's own I/O
    again = run(kernel_env)
    assert again.durable_statuses()[0]["reason"] == "file sales.parquet changed" and "10 north full" in again.text()
    again = run({**kernel_env, "REPORT_MODE": "short"})
    assert "environment variable REPORT_MODE changed" in again.durable_statuses()[0]["reason"]
    assert "10 north short" in again.text()
