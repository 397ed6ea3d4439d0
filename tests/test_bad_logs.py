"""Bad logs and bad places: a clear message naming the file, the cell still runs, nothing is overwritten."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from shells import Shell

from durable_nb import session
from durable_nb.errors import CorruptLogError, NewerLogError, NotALogError
from durable_nb.log.connect import connect
from durable_nb.log.schema import SCHEMA_VERSION


def snapshot(path: Path) -> tuple[bytes, float]:
    return path.read_bytes(), path.stat().st_mtime


def use_log(sh: Shell, path: Path) -> None:
    sh.run(f"%config DurableMagics.db = {str(path)!r}")


def test_not_a_sqlite_file_is_named_and_left_alone(shell: Shell, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("my precious notes\n" * 100)
    before = snapshot(bad)
    use_log(shell, bad)
    shell.durable("x = 40 + 2")
    assert shell.ns["x"] == 42, "the cell still runs"
    err = capsys.readouterr().err
    assert "not recorded" in err and str(bad) in err and "not a SQLite file" in err
    assert snapshot(bad) == before
    with pytest.raises(NotALogError, match="not a SQLite file"):
        connect(bad)


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE users(id)")
    before = snapshot(other)
    with pytest.raises(NotALogError, match="not a durable_nb log"):
        connect(other)
    assert snapshot(other) == before


def test_newer_schema_is_refused_and_not_written(new_shell: Callable[[], Shell], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    sh = new_shell()
    sh.durable("x = 1")
    session.close_log()
    db = tmp_path / "t.durable.db"
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO schema_migration VALUES (?, 'from the future', 0)", (SCHEMA_VERSION + 5,))
    conn.close()
    before = snapshot(db)
    with pytest.raises(NewerLogError, match="Upgrade durable_nb"):
        connect(db)
    sh2 = new_shell()
    sh2.durable("x = 1")
    assert sh2.ns["x"] == 1
    assert "newer than this durable_nb" in capsys.readouterr().err
    assert snapshot(db) == before


def test_corrupt_log_is_named(tmp_path: Path) -> None:
    db = tmp_path / "c.durable.db"
    connect(db).close()
    data = bytearray(db.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)
    db.write_bytes(bytes(data))
    with pytest.raises((CorruptLogError, NotALogError), match=str(db)):
        connect(db)


def test_unwritable_location_still_runs_the_cell(shell: Shell, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    use_log(shell, blocker / "sub" / "x.durable.db")
    shell.durable("y = 'still computed'")
    assert shell.ns["y"] == "still computed"
    err = capsys.readouterr().err
    assert "cannot open durable log" in err and "DurableMagics.db" in err


def test_full_disk_keeps_the_variables_and_says_so(shell: Shell) -> None:
    shell.durable("small = 1")
    log = session.current_if_open()
    assert log is not None
    pages = log.conn.execute("PRAGMA page_count").fetchone()[0]
    log.conn.execute(f"PRAGMA max_page_count={pages + 2}")
    shell.durable("import numpy as np\nbig = np.random.default_rng(1).random(2_000_000)")
    assert shell.ns["big"].shape == (2_000_000,), "the user's result is still in the kernel"
    status = shell.last_status()
    assert status["state"] == "not-replayable"
    assert "could not write the log" in status["problems"][0] and "full" in status["problems"][0]
    assert log.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_the_db_file_catches_up_with_the_wal_soon_after_a_cell(shell: Shell, tmp_path: Path) -> None:
    """Copying only the .db file of an idle kernel's log (a common way to share) must not lose records."""
    import shutil
    import time

    shell.durable("shared = [1, 2, 3]")
    time.sleep(2.0)
    copy = tmp_path / "copy.durable.db"
    shutil.copy(tmp_path / "t.durable.db", copy)
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT state FROM execution").fetchall() == [("recorded",)]


def test_closing_waits_for_a_checkpoint_under_way_and_folds_the_wal(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A background checkpoint still running at close used to keep the file open, so the close could not fold
    the WAL and the next open had to scan all of it (300 ms per GiB)."""
    import threading

    from durable_nb import DurableLog
    from durable_nb.log import connect as connect_module

    started, release = threading.Event(), threading.Event()
    real = connect_module._checkpoint

    def slow_checkpoint(path: Path) -> None:
        started.set()
        release.wait(5)
        real(path)

    monkeypatch.setattr(connect_module, "CHECKPOINT_DELAY", 0.0)
    monkeypatch.setattr(connect_module, "_checkpoint", slow_checkpoint)
    path = tmp_path / "t.durable.db"
    log = DurableLog(path, readonly=False)
    with connect_module.write_transaction(log.conn, path):
        log.conn.execute("CREATE TABLE scratch (x)")
    assert started.wait(5)
    threading.Timer(0.2, release.set).start()
    log.close()
    assert release.is_set() and not path.with_name(path.name + "-wal").exists()
