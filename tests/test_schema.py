"""A new log is made from the baseline file in one go, an older one by the migrations it lacks: both end with the
same schema, and the baseline is what the migrations generate (so the migrations stay the one source)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
