"""One log fixture over both storage backends: a SQLite file and a schema on the session's real PostgreSQL.

A test module that sets `BOTH_BACKENDS = True` runs each of its tests that use `log_location` (directly, or through
the `shell`/`new_shell` fixtures) twice, as `[sqlite]` and `[postgres]`; elsewhere `log_location` is the SQLite
file. `sql(location, ...)` runs a statement on the log at either, for the tests that inspect or tamper with rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

BACKENDS = ("sqlite", "postgres")
SCHEMA = "analysis"


def parametrize(metafunc: pytest.Metafunc) -> None:
    """pytest_generate_tests: both backends for the modules that ask for them; a test marked
    `@only(backend, reason=...)` runs on that backend alone, the reason in its marker for all to read."""
    if getattr(metafunc.module, "BOTH_BACKENDS", False) and "backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        metafunc.parametrize("backend", marker.args if marker else BACKENDS, indirect=True)


def only(*backends: str, reason: str) -> pytest.MarkDecorator:
    assert reason and set(backends) <= set(BACKENDS)
    return pytest.mark.backends(*backends, reason=reason)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def log_location(backend: str, tmp_path: Path, request: pytest.FixtureRequest,
                 monkeypatch: pytest.MonkeyPatch) -> Path | str:
    """Where the test's log is: tmp_path/t.durable.db, or a fresh database's `analysis` schema (a URL)."""
    if backend == "sqlite":
        return tmp_path / "t.durable.db"
    # What this machine keeps for a PostgreSQL log (its activity journal) stays in the test's folder.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    server = request.getfixturevalue("postgres")
    return str(server.url(request.getfixturevalue("pg_database"), query=f"schema={SCHEMA}"))


def is_postgres(location: Path | str) -> bool:
    return isinstance(location, str) and location.startswith("postgresql://")


def sql(location: Path | str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement (SQLite's `?` placeholders) on the log at `location`, committed; its rows."""
    if not is_postgres(location):
        import sqlite3

        with sqlite3.connect(location) as conn:
            return conn.execute(statement, params).fetchall()
    import psycopg

    from durable_nb.log.pg_connect import translate
    from durable_nb.log.pg_schema import BLOB_SCHEMA
    from durable_nb.pg_url import parse

    target = parse(str(location))
    with psycopg.connect(target.conninfo, autocommit=True) as conn:
        conn.execute(f"SET search_path TO {target.schema or 'public'}, {BLOB_SCHEMA}")
        cur = conn.execute(translate(statement), params)
        return cur.fetchall() if cur.description else []


def columns(location: Path | str, table: str) -> list[str]:
    """The columns of a table or view of the log at `location`, in order."""
    if is_postgres(location):
        return [r[0] for r in sql(location, "SELECT column_name FROM information_schema.columns WHERE "
                                  "table_schema = ? AND table_name = ? ORDER BY ordinal_position", (SCHEMA, table))]
    return [r[1] for r in sql(location, f"PRAGMA table_info({table})")]
