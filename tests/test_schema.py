"""A new log is made from the baseline file in one go, an older one by the migrations it lacks: both end with the
same schema, and the baseline is what the migrations generate (so the migrations stay the one source)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from durable_nb.log import connect
from durable_nb.log.schema import MIGRATIONS, SCHEMA_VERSION


def shape(db: Path) -> tuple[list[tuple[object, ...]], dict[str, list[tuple[object, ...]]], list[tuple[object, ...]]]:
    """What a log's schema is: its objects' SQL (but the bookkeeping table's own), every table's columns and
    foreign keys, and the migrations it says it has."""
    with sqlite3.connect(db) as conn:
        objects = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name != 'schema_migration' "
                               "ORDER BY type, name").fetchall()
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        columns = {t: conn.execute(f"PRAGMA table_info({t})").fetchall()
                   + conn.execute(f"PRAGMA foreign_key_list({t})").fetchall() for t in tables}
        applied = conn.execute("SELECT version, name FROM schema_migration ORDER BY version").fetchall()
    return objects, columns, applied


def log_at(db: Path, version: int) -> Path:
    """A log as a durable_nb of schema `version` left it: migrations 1..version, applied one by one."""
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute("CREATE TABLE schema_migration (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                     "applied_at REAL NOT NULL)")
        for m in MIGRATIONS[:version]:
            conn.executescript(m.sql)
            conn.execute("INSERT INTO schema_migration VALUES (?, ?, 0)", (m.version, m.name))
    return db


def opened(db: Path) -> Path:
    connect.connect(db).close()
    return db


def test_the_committed_baseline_is_generated_from_the_migrations() -> None:
    assert connect.BASELINE.read_text(encoding="utf-8") == connect.baseline(), (
        "durable_nb/log/baseline.sql is stale: python -m durable_nb.log.connect > durable_nb/log/baseline.sql")
    assert connect.BASELINE.read_text(encoding="utf-8").startswith(f"-- version {SCHEMA_VERSION}\n")


@pytest.mark.parametrize("version", [1, 4, SCHEMA_VERSION - 1])
def test_a_new_log_has_the_schema_an_old_one_is_migrated_to(tmp_path: Path, version: int) -> None:
    new = shape(opened(tmp_path / "new.db"))
    migrated = shape(opened(log_at(tmp_path / "old.db", version)))
    assert migrated == new
    assert new[2] == [(m.version, m.name) for m in MIGRATIONS]


def test_migrations_newer_than_the_baseline_apply_to_a_new_log(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # A migration added without regenerating the file: a new log is made at the file's version, then migrated.
    older = log_at(tmp_path / "older.db", SCHEMA_VERSION - 1)
    with sqlite3.connect(older) as conn:
        sql = [s for (s,) in conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid")]
    stale = tmp_path / "baseline.sql"
    stale.write_text(f"-- version {SCHEMA_VERSION - 1}\n" + "".join(f"{s};\n" for s in sql), encoding="utf-8")
    monkeypatch.setattr(connect, "BASELINE", stale)
    made = shape(opened(tmp_path / "new.db"))
    monkeypatch.undo()
    assert made == shape(opened(tmp_path / "reference.db"))



def settings(conn: sqlite3.Connection) -> dict[str, object]:
    return {p: conn.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("journal_mode", "synchronous", "temp_store", "foreign_keys")}


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_a_log_keeps_its_settings_whether_it_was_just_made_migrated_or_already_current(
        tmp_path: Path, durability: connect.Durability) -> None:
    # A schema's commit runs unsynced: the connection must come back at its durability's level all the same.
    want = {"journal_mode": "wal", "synchronous": 2 if durability == "full" else 1, "temp_store": 2,
            "foreign_keys": 1}
    for db in (tmp_path / "new.db", log_at(tmp_path / "old.db", 4), tmp_path / "new.db"):
        conn = connect.connect(db, durability=durability)
        try:
            assert settings(conn) == want, db.name
        finally:
            conn.close()
    with sqlite3.connect(tmp_path / "new.db") as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == connect.PAGE_SIZE
    assert not list(tmp_path.glob("*-journal")), "a rollback journal was left beside a log"


_MAKE_LOGS = """
import itertools, sys
from pathlib import Path
from typing import Any
from durable_nb.log import connect
folder = Path(sys.argv[1])
for n in itertools.count():
    connect.connect(folder / f"{n}.db").close()
    print(n, flush=True)
"""


@pytest.mark.parametrize("after", [0.0, 0.013, 0.031, 0.057, 0.101, 0.149])
def test_a_log_killed_while_it_is_made_opens_as_a_whole_log(tmp_path: Path, after: float) -> None:
    # A child makes log after log and is SIGKILLed mid-way through one: whatever the kill left (no file, an empty
    # one, one switched to WAL, a schema half in the WAL), the next open must give a whole log, never a damaged one.
    child = subprocess.Popen([sys.executable, "-c", _MAKE_LOGS, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        child.stdout.readline()  # the interpreter and our imports are up: from here on it only makes logs
        time.sleep(after)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    made = sorted(tmp_path.glob("*.db"), key=lambda p: int(p.stem))
    assert shape(opened(made[-1])) == shape(opened(made[0]))


def test_a_log_another_process_is_making_opens_without_a_lock_error(tmp_path: Path) -> None:
    # Another kernel has switched the new file to WAL and not yet committed its schema (four kernels starting on
    # one log meet this): opening it must not try to take the file out of WAL, which SQLite refuses at once
    # ("database is locked") while that kernel is connected.
    db = tmp_path / "shared.db"
    maker = sqlite3.connect(db, isolation_level=None)
    try:
        maker.execute(f"PRAGMA page_size={connect.PAGE_SIZE}")
        assert maker.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        assert shape(opened(db)) == shape(opened(tmp_path / "reference.db"))
    finally:
        maker.close()


def _open_and_write(path: Path, start: Any, failures: Any) -> None:
    try:
        start.wait()
        conn = connect.connect(path)
        try:
            with connect.write_transaction(conn, path):
                conn.execute("CREATE TABLE IF NOT EXISTS note (x)")
                conn.execute("INSERT INTO note VALUES (1)")
        finally:
            conn.close()
    except Exception as exc:  # reported to the test, which names it
        failures.put(f"{type(exc).__name__}: {exc}")


def test_kernels_starting_together_on_a_new_log_all_open_it(tmp_path: Path) -> None:
    # Four processes open one new log at the same moment (a team's kernels started by one script, a soak test):
    # each must get the whole log; SQLite's "database is locked" from the race to switch it to WAL is retried.
    import multiprocessing

    # Fresh interpreters, as kernels are: a fork of this test process could inherit SQLite's allocator mutex
    # held by a background checkpoint of an earlier test, and hang.
    context = multiprocessing.get_context("spawn")
    failures = context.Queue()
    for trial in range(8):
        db = tmp_path / f"{trial}.db"
        start = context.Barrier(4)
        kernels = [context.Process(target=_open_and_write, args=(db, start, failures)) for _ in range(4)]
        for k in kernels:
            k.start()
        for k in kernels:
            k.join()
        found = [failures.get() for _ in range(failures.qsize())]
        assert not found, found[:3]
        assert [k.exitcode for k in kernels] == [0] * 4
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM note").fetchone()[0] == 4
        assert shape(db)[2] == [(m.version, m.name) for m in MIGRATIONS]
