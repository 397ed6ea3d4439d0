"""Sharing and trust: pickles load only when signed by this user, tampering is found and never decoded, and a
replay elsewhere says what differs in the environment.

Two "users" are two secret files (DURABLE_NB_SECRET_FILE) and two folders; each shell stands in for a kernel.
"""

from __future__ import annotations

import importlib
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from shells import Shell, become

from durable_nb import DurableLog, session
from durable_nb.cli import main as cli
from durable_nb.trust import trust_log, verify_log

Kernel = Callable[[Path, Path], Shell]

SAFE = ("import numpy as np, pandas as pd\narr = np.arange(10.0)\nframe = pd.DataFrame({'x': [1, 2]})\n"
        "conf = {'k': [1, 2]}")
PICKLED = "class Point:\n    def __init__(self, x):\n        self.x = x\np = Point(7)"


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Kernel]:
    """A factory: a new kernel of the user whose secret is `secret`, on the log `db`, in the log's folder."""

    def make(db: Path, secret: Path) -> Shell:
        session.close_log()
        become(monkeypatch, secret, user=secret.parent.name)
        monkeypatch.chdir(db.parent)
        return Shell(db)

    yield make
    session.close_log()
    InteractiveShell.clear_instance()


@pytest.fixture
def users(tmp_path: Path) -> tuple[Path, Path]:
    """Alice's and Bob's folders; each holds its user's secret."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice.mkdir()
    bob.mkdir()
    return alice, bob


def share(src: Path, *dsts: Path) -> None:
    """What the sender does: `durable-nb export` (a self-contained copy; copying a live log's file alone can
    miss what its write-ahead log still holds)."""
    from durable_nb.log.maintenance import export

    for dst in dsts:
        export(src, dst)


def executions(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT execution_id, state, replayed_from, reason FROM executions "
                            "ORDER BY execution_id").fetchall()


def evil_cell(marker: Path) -> str:
    """A cell whose variable, when unpickled, writes `marker`: what a hostile shared log would hold."""
    return (f"import builtins\nclass Evil:\n    def __reduce__(self):\n"
            f"        return (builtins.open, ({str(marker)!r}, 'w'))\nevil = Evil()")


def test_hostile_pickle_never_runs_until_trusted(kernel: Kernel, users: tuple[Path, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = users
    marker = bob / "PWNED"
    cell = evil_cell(marker)
    kernel(alice / "x.durable.db", alice / "secret").durable(cell)
    shared = bob / "x.durable.db"
    share(alice / "x.durable.db", shared, bob / "copy.durable.db")
    become(monkeypatch, bob / "secret", user="bob")  # from here on, Bob
    assert not marker.exists(), "pickling must not run __reduce__'s callable"

    from durable_nb.errors import UntrustedError
    from durable_nb.log.maintenance import export
    from durable_nb.views import history, load

    with DurableLog(shared, readonly=False):  # opening it (writable: crash reaping runs)
        pass
    assert list(history(shared)["state"]) == ["recorded"]  # listing its history
    assert [r[1] for r in executions(shared)] == ["recorded"]
    with pytest.raises(UntrustedError, match="durable-nb trust"):
        load("evil", log=shared)
    export(shared, bob / "exported.durable.db")
    assert verify_log(bob / "exported.durable.db").ok
    review = verify_log(shared)
    assert review.ok and [v.where for v in review.unsigned] == ["execution 1 variable Evil (type)",
                                                                "execution 1 variable evil (Evil)"]
    assert cli(["trust", "log", str(shared), "--dry-run"]) == 0
    sh = kernel(bob / "copy.durable.db", bob / "secret")  # replaying from it (a copy: the cell records anew)
    sh.durable(cell)
    reason = sh.last_status()["reason"]
    assert reason.startswith("untrusted: variable Evil (type): it is pickled and signed by SHA256:"), reason
    assert "a key you do not trust; to trust them, review what they recorded and trust their key with " \
           "`durable-nb trust user alice@" in reason and reason.endswith(" copy.durable.db`"), reason
    assert [r[1] for r in executions(bob / "copy.durable.db")] == ["recorded", "recorded"]
    assert not marker.exists(), "an unsigned pickle must never be loaded"

    assert cli(["trust", "log", str(shared)]) == 0
    sh = kernel(shared, bob / "secret")
    sh.durable(cell)
    assert sh.last_status()["state"] == "replayed"
    assert marker.exists(), "once trusted, the log's pickles load (this proves the test can see the marker)"


def test_colleague_safe_values_replay_pickles_ask_for_trust(kernel: Kernel, users: tuple[Path, Path],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    alice, bob = users
    sh = kernel(alice / "analysis.durable.db", alice / "secret")
    sh.durable(SAFE, "--name safe")
    sh.durable(PICKLED, "--name pickled")
    share(alice / "analysis.durable.db", bob / "colleague.durable.db", bob / "trusted.durable.db")

    sh = kernel(bob / "colleague.durable.db", bob / "secret")
    sh.durable(SAFE, "--name safe")
    assert sh.last_status()["state"] == "replayed" and sh.ns["conf"] == {"k": [1, 2]}
    sh.durable(PICKLED, "--name pickled")
    status = sh.last_status()
    assert status["state"] == "recorded"
    assert "a key you do not trust" in status["reason"]
    assert "durable-nb trust user alice@" in status["message"] and "colleague.durable.db" in status["message"]

    assert cli(["trust", "log", str(bob / "trusted.durable.db")]) == 0
    out = capsys.readouterr().out
    assert "signed 2 pickled values" in out and "variable p (Point)" in out
    sh = kernel(bob / "trusted.durable.db", bob / "secret")
    sh.durable(SAFE, "--name safe")
    sh.durable(PICKLED, "--name pickled")
    assert [s["state"] for s in sh.statuses()] == ["replayed", "replayed"]
    assert sh.ns["p"].x == 7 and isinstance(sh.ns["p"], sh.ns["Point"])
    session.close_log()  # replays are bookkeeping written at the next commit or on close
    assert [r[2] for r in executions(bob / "trusted.durable.db")][-2:] == [1, 2], "replayed Alice's records"


def test_trust_magic_signs_the_current_log(kernel: Kernel, users: tuple[Path, Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    alice, bob = users
    kernel(alice / "x.durable.db", alice / "secret").durable(PICKLED)
    share(alice / "x.durable.db", bob / "x.durable.db")
    sh = kernel(bob / "x.durable.db", bob / "secret")
    sh.run("%durable_trust")
    assert "signed 2 pickled values" in capsys.readouterr().out
    sh.durable(PICKLED)
    assert sh.last_status()["state"] == "replayed"
    sh.run("%durable_trust")
    out = capsys.readouterr().out
    assert "signed 0 pickled values" in out and "(2 were already signed by you)" in out


def flip_byte(db: Path, blob_id: int, offset: int) -> None:
    with sqlite3.connect(db) as conn:
        rowid, data = conn.execute("SELECT id, data FROM chunk WHERE blob_id = ? AND seq = 0", (blob_id,)).fetchone()
        data = bytearray(data)
        data[offset] ^= 0xFF
        conn.execute("UPDATE chunk SET data = ? WHERE id = ?", (bytes(data), rowid))


def blob_of(db: Path, name: str) -> int:
    """The first blob of `name`: for a pickled value, the stream of the cell's pickled outputs it is part of."""
    with sqlite3.connect(db) as conn:
        meta = conn.execute("SELECT meta FROM output WHERE name = ? ORDER BY execution_id LIMIT 1", (name,)).fetchone()
        holder = json.loads(meta[0]).get("bundle_of", name)
        return int(conn.execute("SELECT blob_id FROM output_blob WHERE name = ? ORDER BY execution_id, seq "
                                "LIMIT 1", (holder,)).fetchone()[0])


def test_flipped_byte_is_reported_and_never_decoded(kernel: Kernel, users: tuple[Path, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    alice, _ = users
    db, secret = alice / "x.durable.db", alice / "secret"
    marker = alice / "DECODED"
    cell = evil_cell(marker) + "\nimport numpy as np\nnoise = np.random.default_rng(1).random(50_000)"
    kernel(db, secret).durable(cell, "--name tampered")
    assert cli(["verify", str(db)]) == 0
    assert "no tampering found; every pickled value is signed by you" in capsys.readouterr().out
    flip_byte(db, blob_of(db, "evil"), 3)  # the pickle stream of a value this user signed
    flip_byte(db, blob_of(db, "noise"), 1000)

    assert cli(["verify", str(db)]) == 1
    out = capsys.readouterr().out
    assert "TAMPERED execution 1 (cell tampered) variable evil" in out
    assert "TAMPERED execution 1 (cell tampered) variable noise (numpy.ndarray): blob" in out
    assert "fails its content hash" in out
    assert cli(["trust", "log", str(db)]) == 1, "trust refuses tampered values"
    assert "NOT SIGNED execution 1 (cell tampered) variable evil" in capsys.readouterr().out

    sh = kernel(db, secret)
    sh.durable(cell, "--name tampered")
    status = sh.last_status()
    assert status["state"] == "recorded" and "failed verification" in status["reason"]
    assert not marker.exists(), "a tampered pickle stream is never unpickled, even when signed"


def test_tampered_signature_metadata_is_untrusted(kernel: Kernel, users: tuple[Path, Path]) -> None:
    alice, _ = users
    db = alice / "x.durable.db"
    kernel(db, alice / "secret").durable(PICKLED)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE output SET meta = json_set(meta, '$.buffers', 1) WHERE name = 'p'")
    review = verify_log(db)
    assert not review.unsigned and [f.where for f in review.tampered] == ["execution 1 variable p (Point)"]
    assert "does not match the value" in review.tampered[0].problem


def write_module(folder: Path, version: str, class_name: str) -> None:
    (folder / "shared_mod_xyz.py").write_text(
        f"__version__ = {version!r}\nclass {class_name}:\n    def __init__(self):\n        self.v = {version!r}\n"
        f"def make():\n    return {class_name}()\n")
    sys.modules.pop("shared_mod_xyz", None)
    importlib.invalidate_caches()


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "mods"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    sys.modules.pop("shared_mod_xyz", None)


MODULE_CELL = "obj = __import__('shared_mod_xyz').make()\nkind = type(obj).__name__"


def test_recorded_package_version_differs_is_explained(kernel: Kernel, users: tuple[Path, Path]) -> None:
    alice, _ = users
    db = alice / "x.durable.db"
    kernel(db, alice / "secret").durable("import pandas as pd\nframe = pd.DataFrame({'x': [1.5]})")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE run SET packages = json_set(packages, '$.pandas', '2.2.1')")
    sh = kernel(db, alice / "secret")
    sh.durable("import pandas as pd\nframe = pd.DataFrame({'x': [1.5]})")
    status = sh.last_status()
    import pandas

    assert status["state"] == "replayed"
    assert status["reason"] == f"recorded with pandas 2.2.1, here {pandas.__version__}"
    assert f"recorded with pandas 2.2.1, here {pandas.__version__}" in status["message"]


def test_incompatible_class_reruns_with_explanation(kernel: Kernel, users: tuple[Path, Path],
                                                    module_dir: Path) -> None:
    alice, _ = users
    db = alice / "x.durable.db"
    write_module(module_dir, "1.0", "Thing")
    kernel(db, alice / "secret").durable(MODULE_CELL)
    write_module(module_dir, "2.0", "Renamed")  # the colleague's version of the package
    sh = kernel(db, alice / "secret")
    sh.durable(MODULE_CELL)
    reason = sh.last_status()["reason"]
    assert sh.last_status()["state"] == "recorded", "the cell ran again"
    assert reason.startswith("recorded value could not be loaded here: variable obj (shared_mod_xyz.Thing)")
    assert "recorded with shared_mod_xyz 1.0, here 2.0" in reason
    assert sh.ns["kind"] == "Renamed"


def test_missing_module_reruns_and_restores_nothing(kernel: Kernel, users: tuple[Path, Path],
                                                    module_dir: Path) -> None:
    alice, _ = users
    db = alice / "x.durable.db"
    write_module(module_dir, "1.0", "Thing")
    kernel(db, alice / "secret").durable(MODULE_CELL)
    (module_dir / "shared_mod_xyz.py").unlink()
    sys.modules.pop("shared_mod_xyz", None)
    importlib.invalidate_caches()
    sh = kernel(db, alice / "secret")
    with pytest.raises(ModuleNotFoundError):
        sh.durable(MODULE_CELL)  # the re-run needs the module too: the user sees the real cause
    status = sh.last_status()
    assert status["state"] == "failed"
    assert ("variable obj (shared_mod_xyz.Thing) needs module shared_mod_xyz, which cannot be imported here"
            in status["reason"])
    assert "recorded with shared_mod_xyz 1.0, here not installed" in status["reason"]
    assert "obj" not in sh.ns and "kind" not in sh.ns, "nothing is restored from a record that failed to load"


def test_trust_of_a_missing_log_is_a_clear_error(tmp_path: Path, secret: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["trust", "log", str(tmp_path / "nope.durable.db")]) == 1
    assert "nope.durable.db does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nope.durable.db").exists()
    with pytest.raises(Exception, match="does not exist"):
        trust_log(tmp_path / "nope.durable.db")


class Box:
    """A result that only pickle can store (an activity returning it is signed like a cell output)."""

    def __init__(self, n: int) -> None:
        self.n = n


def test_trust_signs_activity_results(users: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import durable_nb.calls as act
    from durable_nb.log.calls import flush

    alice, bob = users
    calls = str(alice / "calls.log")  # a file, not a list: a closure that changes would change the call's key

    @act.activity
    def build(n: int) -> Box:
        with open(calls, "a") as fh:
            fh.write(f"{n}\n")
        return Box(n)

    def open_as(secret: Path, db: Path) -> None:
        flush()
        session.close_log()
        become(monkeypatch, secret)
        session.open_log(db)
        act.reset_scope()

    try:
        open_as(alice / "secret", alice / "a.durable.db")
        assert build(3).n == 3
        flush()
        share(alice / "a.durable.db", bob / "a.durable.db")
        become(monkeypatch, bob / "secret", user="bob")
        review = verify_log(bob / "a.durable.db")
        assert [v.where for v in review.unsigned if "Box" in v.where and v.where.startswith("activity call 1 (")]
        assert any("activity call 1 (" in v.where for v in trust_log(bob / "a.durable.db").signed)
        after = verify_log(bob / "a.durable.db")
        assert after.ok and not after.unsigned and after.signed_by_you == review.pickled
    finally:
        flush()
        session.close_log()
