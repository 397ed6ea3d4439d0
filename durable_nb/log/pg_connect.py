"""A connection to a log on PostgreSQL that the storage layer's SQL runs on unchanged.

The SQL of cells, activities, blobs and queries is written once, with SQLite's `?` placeholders; `PgConnection`
offers the part of sqlite3.Connection that it uses (`execute`, `executemany`, `in_transaction`, cursors with
`fetchone`/`fetchall`/iteration) over psycopg 3, translating the placeholders. Results come in binary format:
a bytea chunk arrives as the bytes sent, not as hex text twice its size.

A dropped connection (a server restart, a network cut) is reopened on the next statement outside a transaction
and on the next transaction's BEGIN: a cell that fails to record because the server went away mid-transaction is
reported by the cell runtime as failed, and the next one records. psycopg is imported when a PostgreSQL log is
opened, never by `import durable_nb`.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LogError, LogNotWritableError, LogTransactionLost, NewerLogError, NotALogError
from ..pg_url import PostgresTarget
from .pg_schema import BLOB_SCHEMA, MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:
    import psycopg

# How long a transaction's BEGIN keeps trying to reach a server that went away (a restart takes seconds).
RECONNECT_SECONDS = 30.0
CONNECT_TIMEOUT = 10
# One lock id for every migration in the database: logs share BLOB_SCHEMA, and two kernels opening a new log
# at once must not both create it.
_MIGRATION_LOCK = 0x64757261626c65  # "durable"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_translated: dict[str, str] = {}


def translate(sql: str) -> str:
    """SQLite's `?` placeholders as psycopg's `%s` (a literal `%` doubled). Our SQL has no `?` in literals."""
    found = _translated.get(sql)
    if found is None:
        found = _translated[sql] = sql.replace("%", "%%").replace("?", "%s")
    return found


def user_sql(sql: str, params: Sequence[Any] | dict[str, Any]) -> str:
    """A user's SQL written for SQLite (`?` and `:name` placeholders) in psycopg's (`%s`, `%(name)s`, a literal
    `%` doubled), leaving string literals, quoted names, comments and `::` casts as they are."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            end = sql.find(c, i + 1)
            while end != -1 and sql[end + 1:end + 2] == c:  # a doubled quote inside the literal
                end = sql.find(c, end + 2)
            end = n if end == -1 else end + 1
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("--", i) or sql.startswith("/*", i):
            end = sql.find("\n" if c == "-" else "*/", i)
            end = n if end == -1 else end + (1 if c == "-" else 2)
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif c == "%":
            out.append("%%")
            i += 1
        elif c == "?" and not isinstance(params, dict):
            out.append("%s")
            i += 1
        elif c == ":" and sql.startswith("::", i):
            out.append("::")
            i += 2
        elif c == ":" and isinstance(params, dict) and _NAME.match(sql, i + 1):
            name = _NAME.match(sql, i + 1)
            assert name is not None
            out.append(f"%({name.group()})s")
            i = name.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PgConnection:
    """One psycopg connection (autocommit; transactions are explicit) on the log's schema."""

    def __init__(self, target: PostgresTarget, *, readonly: bool, migrate_schema: bool = False) -> None:
        self.target = target
        self.schema = target.schema or "public"
        self.readonly = readonly
        self.log_path: Path | None = None  # set by the store: the local folder of this log (error messages)
        self._lock = threading.RLock()
        self._depth = 0
        # BEGIN is sent with a transaction's first statement, in one pipeline: a round trip fewer for each.
        self._begin_pending = False
        self._synchronous = True  # the open transaction's COMMIT waits for the server's fsync
        self._conn = self._open()
        if migrate_schema:
            migrate(self)
        else:
            check_version(self)

    # -- what the storage layer's SQL uses of a sqlite3.Connection

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        import psycopg

        with self._lock:
            if self._begin_pending:
                cursor: psycopg.Cursor[Any] = self._begin(sql, parameters)
                return cursor
            try:
                return self._conn.cursor(binary=True).execute(translate(sql), parameters)
            except psycopg.OperationalError as exc:
                if self._depth or not self._conn.broken:
                    raise self.error(exc) from exc
            try:
                self._reopen()  # outside a transaction a statement is safely sent again on a new connection
                return self._conn.cursor(binary=True).execute(translate(sql), parameters)
            except psycopg.Error as exc:
                raise self.error(exc) from exc

    def scalar(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        row = self.execute(sql, parameters).fetchone()
        return None if row is None else row[0]

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]] | Iterator[Sequence[Any]]) -> None:
        """Pipelined by psycopg (libpq's pipeline mode): one round trip for the batch, not one per row; none
        for no rows (psycopg would still sync the empty pipeline)."""
        import psycopg

        found = iter(rows)
        first = next(found, None)
        if first is None:
            return
        rows = itertools.chain((first,), found)
        with self._lock:
            if self._begin_pending:
                self._begin()
            try:
                self._conn.cursor(binary=True).executemany(translate(sql), rows)
            except psycopg.Error as exc:
                raise self.error(exc) from exc

    def read_only(self, sql: str, parameters: Sequence[Any] | dict[str, Any]) -> psycopg.Cursor[Any]:
        """A user's statement (psycopg's placeholders) in a READ ONLY transaction, which the server keeps from
        writing; the transaction stays open until the connection closes. The extended protocol (always used for
        binary results) takes one statement, so no `COMMIT; DELETE ...` can follow it."""
        self._conn.execute("BEGIN READ ONLY")
        return self._conn.cursor(binary=True).execute(sql, parameters)

    def copy(self, statement: str) -> contextlib.AbstractContextManager[psycopg.Copy]:
        """COPY ... FROM STDIN (binary rows in bulk, the cheapest way into PostgreSQL)."""
        if self._begin_pending:
            self._begin()
        return self._conn.cursor().copy(statement)

    def copy_upsert(self, table: str, columns: Sequence[str], key: str, updated: Sequence[str],
                    rows: Sequence[Sequence[Any]]) -> None:
        """Inside a transaction: `rows` (of `columns`) inserted into `table`, or their `updated` columns set
        where a row of the same `key` exists; COPYed into a temporary table of this connection, emptied by the
        commit. `rows` hold each key once (ON CONFLICT updates a row once per statement)."""
        if not rows:
            return
        names = ", ".join(columns)
        stage = quote_ident(f"stage_{table}")
        self.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
                     f"SELECT {names} FROM {table} WITH NO DATA")
        with self.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        self.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage} ON CONFLICT ({key}) DO UPDATE "
                     f"SET {', '.join(f'{c} = excluded.{c}' for c in updated)}")

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    @contextlib.contextmanager
    def write_transaction(self, *, synchronous: bool = True) -> Iterator[PgConnection]:
        """BEGIN (sent with the first statement; reconnecting while the server is away, for up to
        RECONNECT_SECONDS) ... COMMIT; ROLLBACK on any error. A connection lost inside the transaction is an
        error (LogTransactionLost): what it held was not committed. `synchronous=False`: the COMMIT returns
        before the server's WAL fsync (0.2 to several ms on a busy disk, most of a trivial cell's record): for a
        trace or bookkeeping, which only a crash of the server, not of the kernel, may lose; the next
        synchronous commit makes it durable too (the WAL is one sequence)."""
        import psycopg

        if self.readonly:
            raise LogNotWritableError(f"durable log {self.target} is open read-only; open it writable with "
                                      f"durable_nb.open_log({str(self.target)!r}).")
        with self._lock:
            if self._depth:  # nested: part of the transaction already open on this connection
                yield self
                return
            self._begin_pending, self._depth = True, 1
            self._synchronous = synchronous
            try:
                yield self
                if not self._begin_pending:  # a transaction that sent nothing has nothing to commit
                    self._conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(psycopg.Error):
                    if not self._begin_pending and not self._conn.broken:
                        self._conn.execute("ROLLBACK")
                if isinstance(exc, psycopg.Error):
                    raise self.error(exc) from exc
                raise
            finally:
                self._begin_pending, self._depth = False, 0

    def close(self) -> None:
        self._conn.close()

    # -- connecting

    def _begin(self, sql: str | None = None, parameters: Sequence[Any] = ()) -> Any:
        """BEGIN, with the transaction's first statement when given (one pipeline, one round trip); its cursor.
        While the server is away (a restart takes seconds) it reconnects and tries again, for up to
        RECONNECT_SECONDS: nothing of the transaction was sent yet."""
        import psycopg

        deadline = time.monotonic() + RECONNECT_SECONDS
        while True:
            try:
                if self._conn.broken or self._conn.closed:
                    self._reopen()
                with self._conn.pipeline():
                    self._conn.execute("BEGIN")
                    if not self._synchronous:  # in the same round trip
                        self._conn.execute("SET LOCAL synchronous_commit = off")
                    cursor = (None if sql is None
                              else self._conn.cursor(binary=True).execute(translate(sql), parameters))
                self._begin_pending = False
                return cursor
            except psycopg.OperationalError as exc:
                if not (self._conn.broken or self._conn.closed):  # the statement failed, inside the transaction
                    self._begin_pending = False
                    raise self.error(exc) from exc
                if time.monotonic() > deadline:
                    raise self.error(exc) from exc
                time.sleep(0.2)
            except psycopg.Error as exc:
                self._begin_pending = False
                raise self.error(exc) from exc

    def _reopen(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()
        self._conn = self._connect()

    def _open(self) -> psycopg.Connection[Any]:
        import psycopg

        try:
            return self._connect()
        except psycopg.Error as exc:
            raise LogError(f"cannot connect to the PostgreSQL log {self.target}: {self.target.scrub(str(exc))}. "
                           "Check that the server runs and the URL (user, host, port, dbname; a password "
                           "in PGPASSWORD or ~/.pgpass).") from None

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        conn = psycopg.connect(self.target.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                               application_name="durable_nb")
        conn.execute(f"SET search_path TO {quote_ident(self.schema)}, {BLOB_SCHEMA}")
        return conn

    def error(self, exc: BaseException) -> LogError:
        """What a user reads: the server's message (without secrets), naming the log; LogTransactionLost when
        the connection is gone or the server aborted the transaction to break a deadlock (what it held was not
        committed, and may be written again)."""
        import psycopg

        lost = self._conn.broken or self._conn.closed
        victim = isinstance(exc, psycopg.errors.DeadlockDetected)
        note = (" (the connection was lost; nothing of this transaction was committed)" if lost
                else " (nothing of this transaction was committed)" if victim else "")
        return (LogTransactionLost if lost or victim else LogError)(
            f"PostgreSQL log {self.target}: {self.target.scrub(str(exc)).strip()}{note}")


def applied_version(conn: PgConnection) -> int:
    if not conn.scalar("SELECT to_regclass(?) IS NOT NULL", (f"{quote_ident(conn.schema)}.schema_migration",)):
        return 0
    return int(conn.scalar("SELECT coalesce(max(version), 0) FROM schema_migration"))


def check_version(conn: PgConnection) -> int:
    version = applied_version(conn)
    if version > SCHEMA_VERSION:
        raise NewerLogError(f"durable log {conn.target} has schema version {version}, newer than this durable_nb "
                            f"understands ({SCHEMA_VERSION}). Upgrade durable_nb (pip install -U durable_nb); "
                            "the log was not modified.")
    if version == 0 and conn.readonly:
        raise NotALogError(f"{conn.target} holds no durable log (schema {conn.schema!r} has no durable_nb "
                           "tables). Check the URL's dbname and ?schema=, or record into it first.")
    return version


def migrate(conn: PgConnection) -> None:
    """Create the schema if needed and apply the migrations it lacks, in one transaction, under a lock that
    serializes every migration in the database."""
    with conn.write_transaction():
        conn.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(conn.schema)}")
        version = check_version(conn)
        if version == 0:
            conn.execute("CREATE TABLE schema_migration (version integer PRIMARY KEY, name text NOT NULL, "
                         "applied_at double precision NOT NULL)")
        for m in MIGRATIONS:
            if m.version > version:
                for statement in filter(str.strip, m.sql.split(";\n")):  # one statement per round trip
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migration VALUES (?, ?, ?)", (m.version, m.name, time.time()))
