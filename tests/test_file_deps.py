"""Files and environment variables a cell reads are found without being declared."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from durable_nb import file_deps
from tests.shells import Shell

READERS = {
    "csv": ("sales.csv", "import pandas as pd\nout = pd.read_csv('sales.csv').amount.sum()"),
    "parquet": ("sales.parquet", "import pyarrow.parquet as pq\nout = pq.read_table('sales.parquet').num_rows"),
    "open": ("notes.txt", "with open('notes.txt') as f:\n    out = f.read()"),
    "npy": ("arr.npy", "import numpy as np\nout = float(np.load('arr.npy').sum())"),
    "read_text": ("notes.txt", "from pathlib import Path\nout = Path('notes.txt').read_text()"),
}


def write_inputs(tmp_path: Path) -> None:
    pd.DataFrame({"amount": [1, 2, 3]}).to_csv(tmp_path / "sales.csv", index=False)
    pd.DataFrame({"amount": [1, 2, 3]}).to_parquet(tmp_path / "sales.parquet")
    (tmp_path / "notes.txt").write_text("hello")
    np.save(tmp_path / "arr.npy", np.arange(4.0))


def edit(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "same size":
        # Same size, other bytes, mtime moved back and forth: only the content hash can tell.
        stat = path.stat()
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    elif how == "deleted":
        path.unlink()
    elif path.suffix == ".parquet":
        pd.DataFrame({"amount": [1, 2, 3, 4]}).to_parquet(path)
    elif path.suffix == ".npy":
        np.save(path, np.arange(5.0))
    else:
        path.write_bytes(data + b"\n")


# Flipping a byte keeps the size but makes a binary format unreadable: same-size edits go to the text readers.
CASES = [(r, h) for r in sorted(READERS) for h in ("content", "same size", "deleted")
         if not (h == "same size" and r in ("parquet", "npy"))]


@pytest.mark.parametrize(("reader", "how"), CASES)
def test_an_edited_file_makes_the_cell_run_and_says_which(new_shell: Callable[[], Shell], tmp_path: Path,
                                                           reader: str, how: str) -> None:
    write_inputs(tmp_path)
    name, cell = READERS[reader]
    new_shell().durable(cell)
    sh = new_shell()
    sh.durable(cell)
    assert sh.last_status()["state"] == "replayed", "an unchanged file replays"
    edit(tmp_path / name, how)
    sh = new_shell()
    with contextlib.suppress(OSError):  # the re-run reads a deleted file and fails, as a plain cell would
        sh.durable(cell)
    status = sh.last_status()
    assert status["state"] in ("recorded", "failed")
    assert f"file {name} {'is missing' if how == 'deleted' else 'changed'}" in status["reason"]


def test_an_unchanged_file_costs_a_stat_not_a_hash(new_shell: Callable[[], Shell], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write_inputs(tmp_path)
    new_shell().durable(READERS["csv"][1])
    file_deps._HASHED.clear()
    hashed: list[str] = []
    real = file_deps.fingerprint_file
    monkeypatch.setattr(file_deps, "fingerprint_file", lambda p: hashed.append(str(p)) or real(p))
    sh = new_shell()
    sh.durable(READERS["csv"][1])
    assert sh.last_status()["state"] == "replayed"
    assert hashed == [], "size and mtime matched: no read of the file"
    (tmp_path / "sales.csv").touch()  # mtime moved, content the same: hashed again, still a replay
    time.sleep(0.01)
    sh.durable(READERS["csv"][1])
    assert sh.last_status()["state"] == "replayed" and len(hashed) == 1


def test_a_new_file_matching_a_glob_makes_the_cell_run(new_shell: Callable[[], Shell], tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text("x\n1\n")
    cell = "import glob\nparts = sorted(glob.glob('data/*.csv'))"
    new_shell().durable(cell)
    (tmp_path / "data" / "b.csv").write_text("x\n2\n")
    sh = new_shell()
    sh.durable(cell)
    assert sh.last_status()["state"] == "recorded"
    assert "files matching data/*.csv changed" in sh.last_status()["reason"]
    assert sh.ns["parts"] == ["data/a.csv", "data/b.csv"]


def test_a_file_the_cell_wrote_and_someone_edited_replays(new_shell: Callable[[], Shell], tmp_path: Path) -> None:
    cell = "with open('out.txt', 'w') as f:\n    f.write('x')\ndone = True"
    new_shell().durable(cell)
    (tmp_path / "out.txt").write_text("changed by someone else")
    sh = new_shell()
    sh.durable(cell)
    assert sh.last_status()["state"] == "replayed"
    assert (tmp_path / "out.txt").read_text() == "changed by someone else"


def test_a_file_the_cell_wrote_that_is_gone_makes_it_run_and_write_it_again(
        new_shell: Callable[[], Shell], tmp_path: Path) -> None:
    """`np.save('some_array', arr)`, `np.load('some_array.npy')` and a cleanup `!rm` at the end of a tutorial:
    after a restart the saving cell replayed, wrote nothing, and the loading cell failed."""
    cells = ["import numpy as np\nnp.save('some_array', np.arange(4))", "back = np.load('some_array.npy').sum()"]
    first = new_shell()
    for cell in cells:
        first.durable(cell)
    (tmp_path / "some_array.npy").unlink()
    sh = new_shell()
    sh.durable(cells[0])
    assert sh.last_status()["state"] == "recorded"
    assert sh.last_status()["reason"] == "file some_array.npy it wrote is missing"
    sh.durable(cells[1])
    assert sh.last_status()["state"] == "replayed" and sh.ns["back"] == 6


def test_no_auto_deps_turns_detection_off(new_shell: Callable[[], Shell], tmp_path: Path) -> None:
    write_inputs(tmp_path)
    new_shell().durable(READERS["open"][1], "--no-auto-deps")
    (tmp_path / "notes.txt").write_text("edited")
    sh = new_shell()
    sh.durable(READERS["open"][1], "--no-auto-deps")
    assert sh.last_status()["state"] == "replayed"


def test_detected_files_are_in_the_history(shell: Shell, tmp_path: Path) -> None:
    import durable_nb

    write_inputs(tmp_path)
    shell.durable(READERS["csv"][1])
    history = durable_nb.history(tmp_path / "t.durable.db")
    assert str(tmp_path / "sales.csv") in history.files_read.iloc[-1]
    shell.run("%durable_status")
    from durable_nb.views import status

    assert "files read: 1 files and listings read or files written" in str(status(tmp_path / "t.durable.db"))


def test_an_environment_variable_is_keyed_by_value_and_never_stored(
        new_shell: Callable[[], Shell], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-value-that-must-not-leak"
    monkeypatch.setenv("MODEL_TOKEN", secret)
    cell = "import os\ntoken_length = len(os.environ['MODEL_TOKEN'])"
    new_shell().durable(cell)
    sh = new_shell()
    sh.durable(cell)
    assert sh.last_status()["state"] == "replayed"
    monkeypatch.setenv("MODEL_TOKEN", secret + "2")
    sh.durable(cell)
    assert sh.last_status()["state"] == "recorded"
    assert "environment variable MODEL_TOKEN changed" in sh.last_status()["reason"]
    from durable_nb import session

    session.close_log()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("t.durable.db*"))
    assert secret.encode() not in stored


def test_an_async_cell_finds_the_files_it_reads(new_shell: Callable[[], Shell], tmp_path: Path) -> None:
    write_inputs(tmp_path)
    cell = "import asyncio\nawait asyncio.sleep(0)\nwith open('notes.txt') as f:\n    text = f.read()"
    new_shell().durable(cell)
    (tmp_path / "notes.txt").write_text("edited")
    sh = new_shell()
    sh.durable(cell)
    assert sh.last_status()["reason"] == "file notes.txt changed" and sh.ns["text"] == "edited"
