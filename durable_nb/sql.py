"""Read-only SQL over a log's documented views: `durable_nb.query(sql)` and `durable-nb query LOG SQL`.

The SQL runs on a connection of its own that cannot write. On SQLite three times over: the file is opened
read-only (`mode=ro`), `PRAGMA query_only` is on, and an authorizer allows reading only (SELECT, WITH, reading
PRAGMAs), so a write, an ATTACH or a PRAGMA that changes a setting is refused before it runs, with a clear error.
On PostgreSQL the statement runs alone in a READ ONLY transaction that is never committed.

(Not called `query.py`: a submodule of that name would shadow the `durable_nb.query` function once imported.)
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DurableError
from .log.connect import connect
from .pg_url import is_postgres_url
from .views import opened

if TYPE_CHECKING:
    import pandas as pd

    from .log.store import LogStore
    from .pg_url import PostgresTarget

Params = Mapping[str, Any] | Sequence[Any] | None

VIEWS = ("executions", "runs", "activities", "outputs")  # documented in docs/schema.md

# PRAGMAs that only describe the schema or the file. Any other PRAGMA (query_only, writable_schema, ...) is
# refused, so the SQL cannot switch the connection's own protection off.
READING_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list",
    "database_list", "function_list", "pragma_list", "collation_list", "compile_options", "page_count",
    "page_size", "freelist_count", "user_version", "schema_version", "data_version", "encoding",
    "integrity_check", "quick_check", "foreign_key_check",
})
_READING = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}


class QueryError(DurableError):
    """The SQL is refused (it would write) or SQLite rejects it (syntax, unknown table, wrong parameters)."""


def _authorize(action: int, arg1: str | None, _arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    """SQLITE_OK for what only reads; SQLITE_DENY for the rest, before the statement runs."""
    if action in _READING:
        return sqlite3.SQLITE_OK
    # SQLite asks this while preparing a table-valued PRAGMA (`SELECT * FROM pragma_table_info('runs')`); a real
    # UPDATE of the schema table is refused by SQLite itself (writable_schema is off) and by query_only.
    if action == sqlite3.SQLITE_UPDATE and arg1 == "sqlite_master":
        return sqlite3.SQLITE_OK
    # Setting one of these (user_version = 5) gets past here but not past query_only and the read-only file.
    if action == sqlite3.SQLITE_PRAGMA and arg1 is not None and arg1.lower() in READING_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _location(log: LogStore | str | os.PathLike[str] | None) -> Path | str:
    """The log's path, or its postgresql:// URL."""
    if isinstance(log, str) and is_postgres_url(log):
        return log
    if isinstance(log, str | os.PathLike):
        return Path(log)
    with opened(log) as found:  # the current log, flushed: the SQL sees what this process deferred
        return found.location if is_postgres_url(found.location) else found.path


@contextmanager
def results(sql: str, params: Params = None, *,
            log: LogStore | str | os.PathLike[str] | None = None) -> Iterator[tuple[list[str], Iterator[Any]]]:
    """The column names and a row iterator of one read-only statement; the log stays open inside the block."""
    location = _location(log)
    if isinstance(location, str):
        with _pg_results(sql, params, location) as found:
            yield found
        return
    path = location
    conn = connect(path, readonly=True)
    # The user's SQL: "no such table" is a typo of theirs, not a sign of a damaged file (connect's reading).
    vars(conn).pop("log_path", None)
    try:
        conn.execute("PRAGMA query_only=ON")
        conn.set_authorizer(_authorize)
        with _explained(sql, path):
            cursor = conn.execute(sql, params if params is not None else ())
        _check_rows(cursor.description, sql, path)
        rows = _rows(cursor, sql, path)
        try:
            yield [d[0] for d in cursor.description], rows
        finally:
            rows.close()  # before the connection: a generator left open would fetch from a closed one
    finally:
        conn.close()


@contextmanager
def _pg_results(sql: str, params: Params, url: str) -> Iterator[tuple[list[str], Iterator[Any]]]:
    """The PostgreSQL side: a connection of its own, the statement in a READ ONLY transaction (the server
    refuses any write), rolled back when the connection closes."""
    import psycopg

    from .log.pg_connect import PgConnection, user_sql
    from .pg_url import parse

    target = parse(url)
    values: Sequence[Any] | dict[str, Any] = (dict(params) if isinstance(params, Mapping)
                                              else list(params) if params is not None else [])
    conn = PgConnection(target, readonly=True)
    try:
        try:
            cursor = conn.read_only(user_sql(sql, values), values)
            _check_rows(cursor.description, sql, target)
            rows = list(cursor)
        except psycopg.Error as exc:
            raise QueryError(_explain_pg(exc, sql, target)) from None
        yield [d[0] for d in cursor.description or ()], iter(rows)
    finally:
        conn.close()


def _check_rows(description: Any, sql: str, log: object) -> None:
    if description is None:
        raise QueryError(f"the SQL returned no rows to show: {_short(sql)!r}. durable-nb query runs one "
                         f"SELECT over {log}'s views ({', '.join(VIEWS)}; docs/schema.md).")


def _explain_pg(exc: Exception, sql: str, target: PostgresTarget) -> str:
    import psycopg

    text = target.scrub(str(exc)).strip().splitlines()[0].rstrip(".")
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction | psycopg.errors.InsufficientPrivilege):
        return (f"{_keyword(sql)} refused: queries of {target} are read-only (SELECT, WITH ... SELECT); the log "
                "was not changed.")
    if "multiple commands" in text:
        return f"one SQL statement at a time, please: {_short(sql)!r} holds several. Nothing was run."
    if isinstance(exc, psycopg.ProgrammingError) and ("parameter" in text or "placeholder" in text
                                                       or "query has" in text):
        return f"{text}: give each :name of the SQL a value (--param NAME VALUE; params= in Python)."
    return f"SQL error in {_short(sql)!r}: {text}. The views of {target} are {', '.join(VIEWS)} (docs/schema.md)."


def _rows(cursor: sqlite3.Cursor, sql: str, path: Path) -> Generator[Any, None, None]:
    with _explained(sql, path):
        yield from cursor


@contextmanager
def _explained(sql: str, path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise QueryError(_explain(exc, sql, path)) from exc


def _explain(exc: sqlite3.Error, sql: str, path: Path) -> str:
    text = str(exc).rstrip(".")
    if "authoriz" in text or "readonly" in text or "may not be modified" in text:
        return (f"{_keyword(sql)} refused: queries of {path} are read-only (SELECT, WITH ... SELECT, and PRAGMAs "
                "that read, such as table_info); the log was not changed. Write with sqlite3 on a copy.")
    if "one statement at a time" in text:
        return f"one SQL statement at a time, please: {_short(sql)!r} holds several. Nothing was run."
    if "binding" in text.lower() or "parameter" in text:
        return f"{text}: give each :name of the SQL a value (--param NAME VALUE; params= in Python)."
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return (f"durable log {path} is damaged ({text}). Restore it from its replica (durable-nb restore URL -o "
                "FILE), or salvage what SQLite can read with `sqlite3 FILE .recover`.")
    return f"SQL error in {_short(sql)!r}: {text}. The views of {path} are {', '.join(VIEWS)} (docs/schema.md)."


def _keyword(sql: str) -> str:
    words = [w for w in (line.split("--", 1)[0] for line in sql.strip().splitlines()) if w.strip()]
    first = " ".join(words).split()
    return first[0].upper() if first else "an empty statement"


def _short(sql: str, limit: int = 80) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def query(sql: str, params: Params = None, *, log: LogStore | str | os.PathLike[str] | None = None
          ) -> pd.DataFrame:
    """Rows of one read-only SQL statement over the log's views as a DataFrame (values as SQLite returns them:
    times are epoch seconds). `params` fills `?` (a sequence) or `:name` (a mapping). A write is refused."""
    import pandas as pd

    with results(sql, params, log=log) as (columns, rows):
        return pd.DataFrame.from_records(list(rows), columns=columns)
