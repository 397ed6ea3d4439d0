"""Open a log: the SQLite settings every connection needs, migrations, and clear errors for bad files."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from ..errors import CorruptLogError, LogError, LogNotWritableError, NewerLogError, NotALogError
from . import background
from .schema import MIGRATIONS, SCHEMA_VERSION

Durability = Literal["normal", "full"]

# Large pages halve the cost of multi-GB blob writes; they only take effect on a new, empty file.
PAGE_SIZE = 65536
BUSY_TIMEOUT_MS = 5000
# SQLite's automatic checkpoint runs inside COMMIT: after a 1 GiB value it would copy 1 GiB before the cell
# returns. Writers turn it off and checkpoint in the background (schedule_checkpoint); the WAL file is cut
# back to WAL_SIZE_LIMIT when it is next reset.
CHECKPOINT_DELAY = 1.0
WAL_SIZE_LIMIT = 64 << 20
# A writer that waits longer than busy_timeout (another kernel recording a multi-GB value) keeps retrying
# for this long before giving up with a clear error.
WRITE_WAIT_SECONDS = 120.0


def connect(path: str | Path, *, readonly: bool = False, durability: Durability = "normal") -> sqlite3.Connection:
    """Open the log at `path` with WAL, busy_timeout and foreign keys; create and migrate it unless readonly."""
    path = Path(path)
    if readonly and not path.exists():
        raise NotALogError(f"durable log {path} does not exist. Check the path, or restore it first "
                           f"(durable-nb restore URL -o {path}).")
    conn = _open(path, readonly)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # Before anything is written (even the switch to WAL): refuse files that are not our logs.
        version = check_version(conn, path)
        _configure(conn, path, readonly, durability)
        if not readonly and version < SCHEMA_VERSION:
            migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    # From now on (the file is a log of a schema we know) damage met by a query is named as such.
    if isinstance(conn, LogConnection):
        conn.log_path = path
    return conn


# What SQLite says when the file's pages are damaged (a flipped byte, a torn copy, a bad disk): reported as
# CorruptLogError naming the log wherever a query meets it, never as a bare sqlite3 error.
_DAMAGE = ("malformed", "not a database", "corrupt", "encrypted", "no such table", "no such column",
           "Could not decode to UTF-8")


def _damage(exc: sqlite3.DatabaseError | UnicodeDecodeError, conn: sqlite3.Connection) -> Exception:
    """A CorruptLogError for SQLite's reports of a damaged file (and text that is not UTF-8); any other error
    as it was."""
    path = getattr(conn, "log_path", None)
    if path is None or not (isinstance(exc, UnicodeDecodeError) or any(word in str(exc) for word in _DAMAGE)):
        return exc
    return CorruptLogError(f"durable log {path} is damaged ({exc}). It was left as it is: keep a copy, restore it "
                           "from its replica (durable-nb restore URL -o FILE), or salvage what SQLite can read "
                           "with `sqlite3 FILE .recover`.")


def is_postgres(conn: sqlite3.Connection) -> bool:
    """A log on PostgreSQL (log.pg_connect.PgConnection): the few queries SQL cannot say portably ask."""
    return not isinstance(conn, sqlite3.Connection)


def stored_json(conn: sqlite3.Connection, text: Any) -> Any:
    """A JSON field of a row; a field that does not parse (a damaged page) is CorruptLogError naming the log."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise CorruptLogError(f"durable log {getattr(conn, 'log_path', '?')} is damaged: a stored field does not "
                              f"parse ({exc}). Restore it from its replica (durable-nb restore URL -o FILE), or "
                              "salvage what SQLite can read with `sqlite3 FILE .recover`.") from exc


@contextlib.contextmanager
def _reporting_damage(conn: sqlite3.Connection) -> Iterator[None]:
    try:
        yield
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        raise _damage(exc, conn) from exc


class _Cursor(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        with _reporting_damage(self.connection):
            return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> _Cursor:
        with _reporting_damage(self.connection):
            return super().executemany(sql, parameters)

    def fetchone(self) -> Any:
        with _reporting_damage(self.connection):
            return super().fetchone()

    def fetchmany(self, size: int | None = 1) -> list[Any]:
        with _reporting_damage(self.connection):
            return super().fetchmany(size)

    def fetchall(self) -> list[Any]:
        with _reporting_damage(self.connection):
            return super().fetchall()

    def __next__(self) -> Any:
        with _reporting_damage(self.connection):
            return super().__next__()


class LogConnection(sqlite3.Connection):
    """The connection of an open log: its queries report a damaged file as CorruptLogError naming the log."""

    log_path: Path

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        return self.cursor(_Cursor).execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> _Cursor:
        return self.cursor(_Cursor).executemany(sql, parameters)


def _open(path: Path, readonly: bool) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False, factory=LogConnection)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=LogConnection)
        return conn
    except (sqlite3.OperationalError, OSError) as exc:
        raise LogNotWritableError(
            f"cannot open durable log {path}: {exc}. Choose a writable place with "
            "%config DurableMagics.db = 'PATH', --db PATH or DURABLE_NB_DB."
        ) from exc


def _configure(conn: sqlite3.Connection, path: Path, readonly: bool, durability: Durability) -> None:
    try:
        conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
        # SQLite spills a statement journal to a temporary file once it holds 64 KiB: with our page size, the
        # first page any multi-row statement changes. Kept in memory, that file is not made and unlinked again.
        conn.execute("PRAGMA temp_store=MEMORY")
        if not readonly:
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            _switch_to_wal(conn, path)
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.DatabaseError as exc:
        raise _classify(exc, path) from exc


def _switch_to_wal(conn: sqlite3.Connection, path: Path) -> None:
    """Put the log in WAL mode. Kernels starting together on a new log race to switch it: SQLite answers the
    losers "database is locked" at once (it avoids a deadlock rather than wait), so they retry as writers do."""
    mode = _while_locked(lambda: _wal_mode(conn))
    if mode.lower() != "wal":
        raise LogNotWritableError(f"durable log {path} could not switch to WAL mode (got {mode}).")


def _wal_mode(conn: sqlite3.Connection) -> str:
    mode: str = conn.execute("PRAGMA journal_mode").fetchone()[0]
    if mode == "wal":
        return mode
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        # A new file's switch writes its first page and nothing else: a rollback journal would cost it a file to
        # create, sync and delete, and its folder synced (four fsyncs, not one).
        conn.execute("PRAGMA journal_mode=MEMORY")
    return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])


_T = TypeVar("_T")


def _while_locked(step: Callable[[], _T]) -> _T:
    """`step()`, retried while another connection holds the lock SQLite needs, for up to WRITE_WAIT_SECONDS."""
    deadline = time.monotonic() + WRITE_WAIT_SECONDS
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _classify(exc: sqlite3.DatabaseError, path: Path) -> LogError:
    text = str(exc)
    if "file is not a database" in text or "file is encrypted" in text:
        return NotALogError(f"{path} is not a SQLite file, so it cannot be a durable log. Point durable_nb at "
                            "another path (--db / DurableMagics.db); this file was left untouched.")
    if "malformed" in text or "corrupt" in text:
        return CorruptLogError(f"durable log {path} is corrupt ({text}). It was left untouched: keep a copy, "
                               "try `sqlite3 FILE .recover`, or restore it from its replica.")
    if "readonly" in text or "unable to open" in text:
        return LogNotWritableError(f"cannot write durable log {path}: {text}: the file or its folder is read-only "
                                   "(permissions, or read-only media). Make both writable, or choose a writable "
                                   "place (--db PATH / DurableMagics.db).")
    if "disk I/O" in text or "full" in text:
        return LogNotWritableError(f"cannot write durable log {path}: {text}. Free disk space or choose a "
                                   "writable place (--db PATH / DurableMagics.db).")
    return LogError(f"durable log {path}: {text}")


def applied_version(conn: sqlite3.Connection) -> int:
    if is_postgres(conn):
        from . import pg_connect  # deferred for start-up speed: a SQLite log's first call needs none of it

        return pg_connect.applied_version(conn)  # type: ignore[arg-type]
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_migration'").fetchone()
    if not has_table:
        return 0
    return int(conn.execute("SELECT coalesce(max(version), 0) FROM schema_migration").fetchone()[0])


def check_version(conn: sqlite3.Connection, path: Path) -> int:
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = applied_version(conn)
    except sqlite3.DatabaseError as exc:
        raise _classify(exc, path) from exc
    except UnicodeDecodeError as exc:  # the schema's text is not UTF-8: damaged pages
        raise CorruptLogError(f"durable log {path} is damaged (its schema does not decode: {exc}). It was left "
                              "untouched: keep a copy, try `sqlite3 FILE .recover`, or restore it from its "
                              "replica.") from exc
    if tables and "schema_migration" not in tables:
        raise NotALogError(f"{path} is a SQLite database but not a durable_nb log (tables: "
                           f"{', '.join(sorted(tables)[:5])}). It was left untouched; use another path.")
    if version > SCHEMA_VERSION:
        raise NewerLogError(f"durable log {path} has schema version {version}, newer than this durable_nb "
                            f"understands ({SCHEMA_VERSION}). Upgrade durable_nb (pip install -U durable_nb); "
                            "the log was not modified.")
    return version


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations this log lacks, all in one transaction; a new log is made from the baseline.

    Its commit is not synced (the first synced commit or checkpoint after it syncs it with theirs): it holds no
    records, and a power cut that loses it leaves the log as it was, to be migrated again when next opened.
    What that saves is a new log's first fsyncs, of its WAL and the WAL's folder."""
    level = conn.execute("PRAGMA synchronous").fetchone()[0]
    conn.execute("PRAGMA synchronous=OFF")
    try:
        with write_transaction(conn, path):
            version = check_version(conn, path)
            if version == 0:
                version = _create(conn)
            _apply(conn, version)
    finally:
        conn.execute(f"PRAGMA synchronous={int(level)}")


def _apply(conn: sqlite3.Connection, version: int) -> None:
    """The migrations newer than `version`, each recorded in schema_migration."""
    if version == 0:
        conn.execute(_MIGRATION_TABLE)
    for m in MIGRATIONS:
        if m.version > version:
            for statement in _statements(m.sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migration VALUES (?, ?, ?)", (m.version, m.name, time.time()))


_MIGRATION_TABLE = ("CREATE TABLE IF NOT EXISTS schema_migration (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                    "applied_at REAL NOT NULL)")
# A new log is made from the schema its migrations leave, generated from them into this file (see baseline()):
# replayed one by one they cost a new log a third of its first call, SQLite re-reading the whole schema after
# each ALTER TABLE. The file names the version it stands for; the migrations after it still apply.
BASELINE = Path(__file__).with_name("baseline.sql")
_VERSION_LINE = "-- version "


def _create(conn: sqlite3.Connection) -> int:
    first, _, sql = BASELINE.read_text(encoding="utf-8").partition("\n")
    version = int(first.removeprefix(_VERSION_LINE))
    for statement in _statements(sql):
        conn.execute(statement)
    conn.executemany("INSERT INTO schema_migration VALUES (?, ?, ?)",
                     [(m.version, m.name, time.time()) for m in MIGRATIONS if m.version <= version])
    return version


def baseline() -> str:
    """The text of BASELINE: the schema all migrations leave, as SQLite stores it, statement by statement in
    the order they were made (`python -m durable_nb.log.connect > durable_nb/log/baseline.sql`)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        _apply(conn, 0)
        rows = conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL "
                            "AND substr(name, 1, 7) != 'sqlite_' ORDER BY rowid").fetchall()
    finally:
        conn.close()
    return f"{_VERSION_LINE}{SCHEMA_VERSION}\n" + "".join(f"{sql};\n" for (sql,) in rows)


def _statements(sql: str) -> Iterator[str]:
    buf = ""
    for line in sql.splitlines(keepends=True):
        buf += line
        # Asked only where a statement may end: asked at every line, a long script costs quadratic time.
        if line.rstrip().endswith(";") and sqlite3.complete_statement(buf):
            yield buf.strip()
            buf = ""
    if buf.strip():
        yield buf.strip()


class _Checkpoint(threading.Timer):
    def __init__(self, path: Path) -> None:
        super().__init__(CHECKPOINT_DELAY, _checkpoint, args=(path,))
        self.path = path
        self.daemon = True


_scheduled: dict[Path, _Checkpoint] = {}
_schedule_lock = threading.Lock()


def schedule_checkpoint(path: Path) -> None:
    """Copy WAL pages into the database file CHECKPOINT_DELAY seconds after a commit, from a short-lived
    connection in a daemon thread: the cell never waits for it, and the .db file catches up within about a
    second of the last write. PASSIVE never blocks writers nor Litestream's read lock (TRUNCATE/RESTART would)."""
    with _schedule_lock:
        if path in _scheduled:
            return
        timer = _scheduled[path] = _Checkpoint(path)
    timer.start()


def settle_checkpoints(path: Path) -> None:
    """Before the last connection closes: no background checkpoint may hold the file open then, so that the
    close folds the WAL into the database and removes it (the next open need not scan a large WAL). A
    checkpoint already under way is waited for, pending ones are cancelled."""
    for timer in threading.enumerate():
        if isinstance(timer, _Checkpoint) and timer.path == path and timer is not threading.current_thread():
            timer.cancel()
            timer.join()


def _checkpoint(path: Path) -> None:
    with _schedule_lock:
        _scheduled.pop(path, None)  # a commit from now on schedules the next one
    try:
        # mode=rw: a log deleted (or moved) since its last commit is not re-created empty by its checkpoint.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()
    except sqlite3.Error as exc:  # the next scheduled checkpoint, or the last close, does the work
        background.failed(path, "checkpoint", f"the WAL could not be copied into {path.name} ({exc}); the "
                          "records are safe in the WAL, which grows until a checkpoint succeeds")
    else:
        background.succeeded(path, "checkpoint")


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection, path: str | Path, *,
                      synchronous: bool = True) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE (so two kernels never deadlock on a lock upgrade), retrying while another writer
    holds the log, then COMMIT; ROLLBACK on any error. Disk-full and read-only errors become clear ones.
    A PostgreSQL log's connection (log.pg_connect.PgConnection) brings its own; `synchronous=False` lets its
    COMMIT return before the server's fsync (SQLite commits as its `durability` says)."""
    if is_postgres(conn):
        with conn.write_transaction(synchronous=synchronous):  # type: ignore[attr-defined]
            yield conn
        return
    try:
        _while_locked(lambda: conn.execute("BEGIN IMMEDIATE"))
    except sqlite3.OperationalError as exc:
        raise _classify(exc, Path(path)) from exc
    try:
        yield conn
        conn.execute("COMMIT")
        schedule_checkpoint(Path(path))
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.DatabaseError):
            raise _classify(exc, Path(path)) from exc
        raise


if __name__ == "__main__":
    print(baseline(), end="")
