"""Run the notebooks of tests/notebooks/ through real kernels with nbclient, plainly or with every cell durable.

Shared by tests/integration/test_corpus.py and benchmarks/bench_corpus.py.

- `durable_variant(nb)`: `%load_ext durable_nb` as a first code cell, `%%durable\\n` in front of every other code
  cell (cells starting with `%` or `!` are left alone).
- `run(path, env)`: executes the notebook at `path` in a fresh kernel started in its folder and told its path as
  Jupyter does (JPY_SESSION_NAME), so the log is `<stem>.durable.db` beside it. Returns the executed notebook,
  every durable status payload as the kernel sent it, and per-cell times.

Cells carry `metadata.corpus` so results map back to the original notebook: `{"index": i}` for the original
cell i (plus `"durable": true` when the variant made it durable), `{"role": "load"}` for the inserted
`%load_ext`, `{"role": "fingerprints"}` for the appended namespace fingerprint cell.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from shells import user_env

NOTEBOOKS = Path(__file__).parent / "notebooks"
STATUS_MIME = "application/vnd.durable-nb.status+json"
FINGERPRINT_MARK = "CORPUS-FINGERPRINTS "

# Appended to every run: the fingerprint of every user-visible variable, as JSON on one line. IPython's own names
# (In, Out, exit, quit, get_ipython, and ipykernel's `open` wrapper), names starting with `_` and modules are left
# out; a value whose fingerprint raises is "unfingerprintable".
FINGERPRINT_CELL = f'''
def _corpus_fingerprints():
    import types
    from durable_nb.fingerprint import fingerprint
    skip = {{"In", "Out", "exit", "quit", "get_ipython", "open"}}
    found = {{}}
    for name, value in sorted(get_ipython().user_ns.items()):
        if name.startswith("_") or name in skip or isinstance(value, types.ModuleType):
            continue
        try:
            found[name] = fingerprint(value)
        except Exception:
            found[name] = "unfingerprintable"
    return found
print({FINGERPRINT_MARK!r} + __import__("json").dumps(_corpus_fingerprints(), sort_keys=True))
'''


def corpus() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def largest() -> Path:
    """The corpus notebook with the most code cells (ties: the biggest file)."""
    def size(p: Path) -> tuple[int, int]:
        nb = nbformat.read(p, as_version=4)
        return sum(c.cell_type == "code" for c in nb.cells), p.stat().st_size

    return max(corpus(), key=size)


def load(path: Path, *, fingerprints: bool = True) -> nbformat.NotebookNode:
    """The notebook with `metadata.corpus` on each cell and (optionally) the fingerprint cell appended."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        cell.metadata["corpus"] = {"index": i}
    if fingerprints:
        cell = nbformat.v4.new_code_cell(FINGERPRINT_CELL.strip())
        cell.metadata["corpus"] = {"role": "fingerprints"}
        nb.cells.append(cell)
    return nb


def is_durable_candidate(cell: Any) -> bool:
    return (cell.cell_type == "code" and bool(cell.source.strip())
            and cell.metadata.get("corpus", {}).get("role") is None
            and not cell.source.lstrip().startswith(("%", "!")))


def durable_variant(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    out = copy.deepcopy(nb)
    for cell in out.cells:
        if is_durable_candidate(cell):
            cell.source = "%%durable\n" + cell.source
            cell.metadata["corpus"]["durable"] = True
    loader = nbformat.v4.new_code_cell("%load_ext durable_nb")
    loader.metadata["corpus"] = {"role": "load"}
    out.cells.insert(0, loader)
    return out


def copy_notebook(src: Path, folder: Path, nb: nbformat.NotebookNode) -> Path:
    """Write `nb` as folder/<src name>, with the corpus data files beside it (data/ is read relatively)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = src.parent / "data"
    if data.is_dir() and not (folder / "data").exists():
        (folder / "data").mkdir()
        for f in data.iterdir():
            (folder / "data" / f.name).write_bytes(f.read_bytes())
    target = folder / src.name
    nbformat.write(nb, target)
    return target


@dataclass
class Run:
    nb: nbformat.NotebookNode
    # cell index -> every status payload in the order the kernel sent them (display_data, then updates)
    status_messages: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    cell_seconds: dict[int, float] = field(default_factory=dict)
    kernel_start_seconds: float = 0.0
    total_seconds: float = 0.0

    def cells(self) -> list[tuple[int, Any]]:
        """(original cell index, cell) for the cells of the original notebook."""
        return [(c.metadata["corpus"]["index"], c) for c in self.nb.cells if "index" in c.metadata["corpus"]]

    def role(self, role: str) -> Any:
        return next(c for c in self.nb.cells if c.metadata["corpus"].get("role") == role)

    def run_all_seconds(self) -> float:
        """Run All of the notebook's own cells (and the inserted %load_ext), kernel start excluded; the
        appended fingerprint cell is not counted."""
        return sum(s for i, s in self.cell_seconds.items()
                   if self.nb.cells[i].metadata["corpus"].get("role") != "fingerprints")

    def fingerprints(self) -> dict[str, str] | None:
        for out in self.role("fingerprints").outputs:
            if out.get("output_type") == "stream":
                for line in out.get("text", "").splitlines():
                    if line.startswith(FINGERPRINT_MARK):
                        return dict(json.loads(line[len(FINGERPRINT_MARK):]))
        return None


class _Client(NotebookClient):  # type: ignore[misc]
    """NotebookClient that also keeps the raw status messages and times each cell."""

    def __init__(self, nb: nbformat.NotebookNode, run: Run, **kw: Any) -> None:
        super().__init__(nb, **kw)
        self._run = run
        self._t0 = time.perf_counter()
        self._cell_t0 = 0.0
        self.on_notebook_start = self._notebook_start
        self.on_cell_execute = self._cell_start
        self.on_cell_executed = self._cell_done

    def _notebook_start(self, notebook: Any) -> None:
        self._run.kernel_start_seconds = time.perf_counter() - self._t0

    def _cell_start(self, cell: Any, cell_index: int) -> None:
        self._cell_t0 = time.perf_counter()

    def _cell_done(self, cell: Any, cell_index: int, execute_reply: Any) -> None:
        self._run.cell_seconds[cell_index] = time.perf_counter() - self._cell_t0

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        data = msg.get("content", {}).get("data") or {}
        if msg.get("msg_type") in ("display_data", "update_display_data") and STATUS_MIME in data:
            self._run.status_messages.setdefault(cell_index, []).append(copy.deepcopy(data[STATUS_MIME]))
        return super().process_message(msg, cell, cell_index)


def kernel_env(secret_file: Path, hash_seed: str = "1") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DURABLE_NB_DB", "JPY_SESSION_NAME")}
    env.update({**user_env(secret_file), "PYTHONHASHSEED": hash_seed})
    return env


def run(path: Path, env: dict[str, str], *, timeout: int = 600) -> Run:
    """Run All in a fresh kernel; errors do not stop the run (they are in the outputs)."""
    nb = nbformat.read(path, as_version=4)
    result = Run(nb)
    client = _Client(nb, result, timeout=timeout, kernel_name="python3", allow_errors=True,
                     resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute(env={**env, "JPY_SESSION_NAME": str(path.resolve())})
    result.total_seconds = time.perf_counter() - t0
    return result
