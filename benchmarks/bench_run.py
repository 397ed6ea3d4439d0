"""`durable-nb run` of a 50-cell notebook whose cells are all recorded (everything replays), against a plain
nbclient run of the same notebook with every cell emptied (the floor: kernel start and messaging), in the same
run. Medians of 5 interleaved runs after an uncounted warm-up; the per-cell overhead is the difference divided by
the number of cells.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import nbformat

from benchmarks.harness import report

CELLS = 50
REPEAT = 5


def _notebook(path: Path, empty: bool) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    sources = ["import math\nvalues = [math.sqrt(i) for i in range(100)]"] + [
        f"x{i} = sum(values) * {i}\nprint('cell {i}', round(x{i}, 3))" for i in range(1, CELLS)]
    nb.cells = [nbformat.v4.new_code_cell("pass" if empty else s, id=f"c{i}") for i, s in enumerate(sources)]
    nbformat.write(nb, path)
    return path


def _durable_run(nb: Path) -> float:
    from durable_nb.jobs import run_notebook

    t0 = time.perf_counter()
    result = run_notebook(nb)
    elapsed = time.perf_counter() - t0
    assert result.ok and result.count("replayed") == CELLS, str(result)
    return elapsed


def _plain_run(nb: Path) -> float:
    from nbclient import NotebookClient

    t0 = time.perf_counter()
    client = NotebookClient(nbformat.read(nb, as_version=4), kernel_name="python3",
                            resources={"metadata": {"path": str(nb.parent)}})
    client.execute()
    nbformat.write(client.nb, nb.with_name("plain.out.ipynb"))
    return time.perf_counter() - t0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DURABLE_NB_SECRET_FILE"] = str(Path(tmp) / "secret")
        os.environ["DURABLE_NB_KEYS_DIR"] = str(Path(tmp) / "keys")
        durable_nb = _notebook(Path(tmp) / "bench.ipynb", empty=False)
        plain_nb = _notebook(Path(tmp) / "plain.ipynb", empty=True)
        from durable_nb.jobs import run_notebook

        assert run_notebook(durable_nb).count("recorded") == CELLS  # record once; every later run replays
        _durable_run(durable_nb)
        _plain_run(plain_nb)  # warm-up
        durable, plain = [], []
        for _ in range(REPEAT):
            durable.append(_durable_run(durable_nb))
            plain.append(_plain_run(plain_nb))
    d, p = statistics.median(durable), statistics.median(plain)
    report(f"nbclient, {CELLS} empty cells (baseline)", p)
    report(f"durable-nb run, {CELLS} cells all replayed", d, p, baseline_name="plain nbclient")
    report("durable-nb run: overhead per cell", (d - p) / CELLS)


if __name__ == "__main__":
    main()
