"""The torture suite's knobs and figures (issue 17).

`DURABLE_NB_TORTURE=long` (what `make torture` sets) runs every torture test at full size; otherwise each runs
a short version of itself inside `make test`. Tests add their figures with `figure(...)`; the session prints
them at the end (tests/conftest.py). Kernels import this module too (their PYTHONPATH holds tests/), to write
the content digests of the values they record to a side channel; so it imports nothing heavy at module level.
The torture tests share their kernels' environment, the no-traceback check and the read-only look at a log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from durable_nb.demo import CellRun

LONG = os.environ.get("DURABLE_NB_TORTURE", "").lower() == "long"
TESTS = Path(__file__).parent

FIGURES: dict[str, dict[str, Any]] = {}


def size(short: int, long: int) -> int:
    """A count (kills, copies, seconds) for the short or the long version."""
    return long if LONG else short


def figure(test: str, **values: Any) -> None:
    FIGURES.setdefault(test, {}).update(values)


def summary() -> list[str]:
    lines = [f"torture figures ({'long' if LONG else 'short'} version; DURABLE_NB_TORTURE=long for the long one)"]
    for test, values in FIGURES.items():
        lines.append(f"  {test}: " + ", ".join(f"{k} {v}" for k, v in values.items()))
    return lines


def digest(value: Any) -> str:
    """A content digest that equal values share in any process: arrays by dtype, shape and bytes, DataFrames by
    columns, dtypes and pandas' row hashes, anything else by its JSON."""
    h = hashlib.sha256()
    module = type(value).__module__.split(".")[0]
    if module == "numpy":
        import numpy as np

        h.update(f"ndarray {value.dtype.str} {value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif module == "pandas":
        import pandas as pd

        h.update(repr((list(value.columns), [str(d) for d in value.dtypes], value.shape)).encode())
        h.update(pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes())
    else:
        h.update(json.dumps(value, sort_keys=True).encode())
    return h.hexdigest()


def note(side: str, name: str, value: Any) -> None:
    """In a kernel: append `name digest` to the side channel `side` (one write(2), so a kill never tears it
    into a line another name could match)."""
    fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.write(fd, f"{name} {digest(value)}\n".encode())
    finally:
        os.close(fd)


def noted(side: Path) -> dict[str, str]:
    """The digests a side channel holds, by name (a line torn by a kill is ignored)."""
    found: dict[str, str] = {}
    if side.exists():
        for line in side.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and len(parts[1]) == 64:
                found[parts[0]] = parts[1]
    return found


def kernel_env(secret: Path, **extra: str) -> dict[str, str]:
    """A torture kernel's environment: its signing secret, a fixed hash seed, tests/ importable (for `note`)."""
    return {"DURABLE_NB_SECRET_FILE": str(secret), "PYTHONHASHSEED": "1",
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), **extra}


def new_notebook(path: Path) -> Path:
    import nbformat

    nbformat.write(nbformat.v4.new_notebook(), path)  # type: ignore[no-untyped-call]
    return path


def ok(run: CellRun) -> CellRun:
    """The cell ran and no traceback reached the user: no error message, no 'Traceback' in any output."""
    assert run.status == "ok", run.text()
    assert "Traceback" not in run.text(), run.text()
    return run


@contextlib.contextmanager
def sound(db: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a log that `PRAGMA integrity_check` finds sound."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", f"{db} fails integrity_check"
        yield conn
    finally:
        conn.close()


def assert_sound(db: Path) -> None:
    with sound(db):
        pass


def recorded_cells(db: Path) -> list[str]:
    """The names of the cells a sound log holds as recorded and replayable, in recording order."""
    with sound(db) as conn:
        return [r[0] for r in conn.execute(
            "SELECT cell_name FROM execution WHERE state = 'recorded' AND replayable = 1 ORDER BY id")]
