"""Log housekeeping: `export` (a compact, self-contained copy to share) and `gc` (drop superseded executions
and unreferenced blobs). Both copy or delete rows as stored: nothing is ever decoded or unpickled.

gc never VACUUMs (another kernel or Litestream may be using the log) and never checkpoints with
TRUNCATE/RESTART: freed pages go to SQLite's free list, reused by later writes; `sqlite3 LOG VACUUM`, run while
nothing uses the log, gives the space back to the disk.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptLogError, LogError
from ..pg_url import display_url, is_postgres_url
from ..vocabulary import human_bytes
from . import pg_blobs, queries
from .connect import connect, is_postgres, migrate, write_transaction
from .queries import tables
from .store import LogStore
from .transfer import Selection, copy

# Executions, calls and blobs are deleted / copied in batches this big (SQLite's bound-parameter limit is 32766).
BATCH = 500
# A shared copy holds few, mostly large rows: small pages keep a small log small.
EXPORT_PAGE_SIZE = 4096


def file_bytes(path: Path) -> int:
    """The log's size on disk, its write-ahead log included."""
    wal = path.with_name(path.name + "-wal")
    return sum(p.stat().st_size for p in (path, wal) if p.exists())


@dataclass
class ExportResult:
    source: str
    target: str
    executions: int
    activities: int
    blobs: int
    source_bytes: int
    target_bytes: int

    @property
    def saved_bytes(self) -> int:
        return self.source_bytes - self.target_bytes

    def summary(self) -> str:
        return (f"exported {self.executions} executions, {self.activities} activity calls and {self.blobs} blobs "
                f"to {self.target}: {human_bytes(self.target_bytes)} (from {human_bytes(self.source_bytes)}, "
                f"{human_bytes(max(self.saved_bytes, 0))} saved)")


def export(src: str | os.PathLike[str], dst: str | os.PathLike[str], latest_only: bool = False, *,
           force: bool = False, progress: bool = False) -> ExportResult:
    """Copy the log at `src` into a new log at `dst`: every execution (or, with `latest_only`, the latest
    replayable record of each key and the latest recorded activity call of each key and occurrence), with their
    runs, outputs, events and only the blobs they use. `src` (a file or a postgresql:// URL) is opened read-only
    and never written; `dst` is a new file."""
    if is_postgres_url(dst):
        raise LogError(f"export writes a new file, not {display_url(str(dst))}: to fill a PostgreSQL schema "
                       "use durable-nb copy SRC URL.")
    if is_postgres_url(src):
        return _export_postgres(str(src), Path(dst).expanduser().resolve(), latest_only, force, progress)
    src_path, dst_path = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    if src_path == dst_path:
        raise LogError(f"export {src_path}: the copy must go to another file (-o OTHER.durable.db).")
    if dst_path.exists() and not force:
        raise LogError(f"{dst_path} already exists; choose another -o path or pass --force to replace it.")
    connect(src_path, readonly=True).close()  # clear errors for a missing, foreign or newer file
    _remove_log(dst_path)
    conn = _new_log(dst_path)
    try:
        try:
            conn.execute("ATTACH DATABASE ? AS src", (f"{src_path.as_uri()}?mode=ro",))
        except sqlite3.DatabaseError as exc:
            raise CorruptLogError(f"cannot export durable log {src_path}: SQLite cannot read it ({exc}); it is "
                                  "probably damaged. Restore it from its replica, or salvage what SQLite can read "
                                  "with `sqlite3 FILE .recover`.") from exc
        with write_transaction(conn, dst_path):
            # A kept call may name an execution that --latest-only leaves out: fixed before the commit.
            conn.execute("PRAGMA defer_foreign_keys=ON")
            counts = _copy(conn, latest_only, progress)
        conn.execute("DETACH DATABASE src")
    finally:
        conn.close()
    return ExportResult(str(src_path), str(dst_path), counts[0], counts[1], counts[2], file_bytes(src_path),
                        file_bytes(dst_path))


def _export_postgres(src: str, dst_path: Path, latest_only: bool, force: bool, progress: bool) -> ExportResult:
    """A PostgreSQL log's export: log.transfer's copy of the selected part into a new, compact file."""
    if dst_path.exists() and not force:
        raise LogError(f"{dst_path} already exists; choose another -o path or pass --force to replace it.")
    with LogStore(src, readonly=True) as source:
        conn = source.conn
        executions = frozenset(r[0] for r in conn.execute(_LATEST_EXECUTIONS if latest_only
                                                          else "SELECT id FROM execution"))
        calls = frozenset(r[0] for r in conn.execute(_LATEST_CALLS if latest_only
                                                     else "SELECT id FROM activity_call"))
        source_bytes = queries.status(conn, source.path).file_bytes
    _remove_log(dst_path)
    _new_log(dst_path).close()
    copied = copy(src, dst_path, progress=progress, selection=Selection(executions, calls))
    return ExportResult(copied.source, str(dst_path), len(executions), len(calls), copied.blobs, source_bytes,
                        file_bytes(dst_path))


def _remove_log(path: Path) -> None:
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)


def _new_log(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=rwc", uri=True, isolation_level=None)
    conn.execute(f"PRAGMA page_size={EXPORT_PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn, path)
    return conn


def _src_tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM src.sqlite_master WHERE type = 'table'")}


def _columns(conn: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA {schema}.table_info({table})")]


def _copy_rows(conn: sqlite3.Connection, table: str, where: str) -> int:
    """INSERT the rows of src.table matching `where` (columns both schemas know; an older log lacks some)."""
    shared = [c for c in _columns(conn, "main", table) if c in set(_columns(conn, "src", table))]
    cols = ", ".join(shared)
    cur = conn.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM src.{table} WHERE {where}")
    return cur.rowcount


# What --latest-only keeps: the latest replayable record of each key, the latest recorded call of each key.
_LATEST_EXECUTIONS = "SELECT max(id) FROM execution WHERE state = 'recorded' AND replayable = 1 GROUP BY key"
_LATEST_CALLS = "SELECT max(id) FROM activity_call WHERE state = 'recorded' GROUP BY function, key, occurrence"


def _copy(conn: sqlite3.Connection, latest_only: bool, progress: bool) -> tuple[int, int, int]:
    has_activities = "activity_call" in _src_tables(conn)
    conn.execute("CREATE TEMP TABLE keep_execution (id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TEMP TABLE keep_call (id INTEGER PRIMARY KEY)")
    if latest_only:
        conn.execute(f"INSERT INTO keep_execution {_LATEST_EXECUTIONS.replace('FROM ', 'FROM src.')}")
        if has_activities:
            conn.execute(f"INSERT INTO keep_call {_LATEST_CALLS.replace('FROM ', 'FROM src.')}")
    else:
        conn.execute("INSERT INTO keep_execution SELECT id FROM src.execution")
        if has_activities:
            conn.execute("INSERT INTO keep_call SELECT id FROM src.activity_call")
    call_runs = "UNION SELECT run_id FROM src.activity_call WHERE id IN keep_call" if has_activities else ""
    _copy_rows(conn, "run", f"id IN (SELECT run_id FROM src.execution WHERE id IN keep_execution {call_runs})")
    blobs = _blob_ids(conn, has_activities)
    n_blobs = _copy_blobs(conn, blobs, progress)
    executions = _copy_rows(conn, "execution", "id IN keep_execution")
    if "signer" in _src_tables(conn):  # a handful of keys and batches: all, rather than those kept rows use
        _copy_rows(conn, "signer", "1")
        _copy_rows(conn, "signed_batch", "1")
    for table in ("output", "output_blob", "event"):
        _copy_rows(conn, table, "execution_id IN keep_execution")
    calls = 0
    if has_activities:
        calls = _copy_rows(conn, "activity_call", "id IN keep_call")
        conn.execute("UPDATE main.activity_call SET execution_id = NULL "
                     "WHERE execution_id NOT IN (SELECT id FROM main.execution)")
        for table in ("attempt", "activity_blob"):
            _copy_rows(conn, table, "call_id IN keep_call")
    conn.execute("DROP TABLE temp.keep_execution")
    conn.execute("DROP TABLE temp.keep_call")
    return executions, calls, n_blobs


def _blob_ids(conn: sqlite3.Connection, has_activities: bool) -> list[int]:
    sql = "SELECT blob_id FROM src.output_blob WHERE execution_id IN keep_execution"
    if has_activities:
        sql += " UNION SELECT blob_id FROM src.activity_blob WHERE call_id IN keep_call"
    return [r[0] for r in conn.execute(f"SELECT DISTINCT blob_id FROM ({sql}) ORDER BY blob_id")]


def _copy_blobs(conn: sqlite3.Connection, blob_ids: list[int], progress: bool) -> int:
    """Blob rows and their chunks as stored (compressed bytes stay compressed), with a progress bar in bytes."""
    from tqdm.auto import tqdm

    total = conn.execute("SELECT coalesce(sum(stored_size), 0) FROM src.blob WHERE id IN "
                         "(SELECT value FROM json_each(?))", (_json_ids(blob_ids),)).fetchone()[0]
    with tqdm(total=total, unit="B", unit_scale=True, desc="copying blobs", disable=not progress) as bar:
        for batch in _batches(blob_ids):
            marks = ",".join("?" * len(batch))
            _copy_rows_params(conn, "blob", f"id IN ({marks})", batch)
            _copy_rows_params(conn, "chunk", f"blob_id IN ({marks})", batch)
            bar.update(conn.execute(f"SELECT coalesce(sum(stored_size), 0) FROM main.blob WHERE id IN ({marks})",
                                    batch).fetchone()[0])
    return len(blob_ids)


def _copy_rows_params(conn: sqlite3.Connection, table: str, where: str, params: list[int]) -> None:
    cols = ", ".join(_columns(conn, "main", table))
    conn.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM src.{table} WHERE {where}", params)


def _json_ids(ids: Iterable[int]) -> str:
    return "[" + ",".join(str(int(i)) for i in ids) + "]"


def _batches(ids: list[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), BATCH):
        yield ids[start:start + BATCH]


@dataclass
class GcResult:
    log: str
    executions: int
    runs: int
    blobs: int
    freed_bytes: int
    free_bytes: int
    postgres: bool = False

    def summary(self) -> str:
        dropped = (f"{self.log}: dropped {self.executions} superseded executions, {self.runs} empty runs and "
                   f"{self.blobs} unreferenced blobs")
        if self.postgres:
            return (f"{dropped}; {human_bytes(self.freed_bytes)} of blob chunks deleted. PostgreSQL's autovacuum "
                    "makes their space reusable; VACUUM FULL on the blob tables gives it back to the disk.")
        return (f"{dropped}; {human_bytes(self.freed_bytes)} of pages freed ({human_bytes(self.free_bytes)} free "
                f"in the file, reused by later writes). To give the space back to the disk, run "
                f"`sqlite3 {self.log} VACUUM` while nothing uses the log.")


def gc(path: str | os.PathLike[str], *, keep_last: int = 1, progress: bool = False) -> GcResult:
    """Drop superseded executions, then unreferenced blobs, each step in its own transaction.

    Kept: the last `keep_last` executions of each cell, each cell's latest replayable record (what a replay
    would use), the source of every kept replay, and anything still running. Activity calls are kept (their
    recorded results are what a resumed loop replays); their blobs stay referenced."""
    from tqdm.auto import tqdm

    if keep_last < 1:
        raise LogError(f"gc {path}: --keep-last must be at least 1 (got {keep_last}).")
    with LogStore(path, readonly=False) as log:
        conn = log.conn
        postgres = is_postgres(conn)
        freed_before = 0 if postgres else _free_bytes(conn)
        doomed = _superseded(conn, keep_last)
        with log.transaction():
            for batch in tqdm(list(_batches(doomed)), desc="dropping executions", unit="batch",
                              disable=not progress or not doomed):
                conn.execute(f"DELETE FROM execution WHERE id IN ({_marks(batch)})", batch)
        runs = _drop_empty_runs(log)
        blobs, blob_bytes = _drop_unreferenced_blobs(log, progress)
        if postgres:
            return GcResult(str(log), len(doomed), runs, blobs, blob_bytes, 0, postgres=True)
        free = _free_bytes(conn)
        return GcResult(str(log), len(doomed), runs, blobs, max(free - freed_before, 0), free)


def _free_bytes(conn: sqlite3.Connection) -> int:
    page_size, free = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "freelist_count"))
    return int(page_size) * int(free)


def _marks(batch: list[int]) -> str:
    return ",".join("?" * len(batch))


_CELL = "coalesce(cell_name, cell_id, code_hash)"


def _superseded(conn: sqlite3.Connection, keep_last: int) -> list[int]:
    rows = conn.execute(f"""
        WITH ranked AS (
            SELECT id, row_number() OVER (PARTITION BY {_CELL} ORDER BY id DESC) AS age FROM execution),
        keep AS (
            SELECT id FROM ranked WHERE age <= ?
            UNION SELECT max(id) FROM execution WHERE state = 'recorded' AND replayable = 1 GROUP BY {_CELL}
            UNION SELECT id FROM execution WHERE state = 'running')
        SELECT id FROM execution
        WHERE id NOT IN (SELECT id FROM keep)
          AND id NOT IN (SELECT replayed_from FROM execution
                         WHERE replayed_from IS NOT NULL AND id IN (SELECT id FROM keep))
        ORDER BY id""", (keep_last,)).fetchall()
    return [r[0] for r in rows]


def _drop_empty_runs(log: LogStore) -> int:
    """Runs of finished processes that no execution or activity call refers to any more."""
    dead = log.dead_run_ids()
    if not dead:
        return 0
    calls = "AND id NOT IN (SELECT run_id FROM activity_call)" if "activity_call" in tables(log.conn) else ""
    with log.transaction() as conn:
        return sum(conn.execute(f"DELETE FROM run WHERE id IN ({_marks(batch)}) "
                                f"AND id NOT IN (SELECT run_id FROM execution) {calls}", batch).rowcount
                   for batch in _batches(dead))


def _drop_unreferenced_blobs(log: LogStore, progress: bool) -> tuple[int, int]:
    """Blobs no output and no activity result uses; returns how many and their stored bytes. A writer stores a
    blob and its reference in one transaction, so inside ours every committed blob without a reference is
    garbage. On PostgreSQL the blobs are the whole database's (every log schema's references count), and a
    writer may be reusing one right now (pg_blobs): each is deleted only under its hash's lock."""
    from tqdm.auto import tqdm

    conn = log.conn
    postgres = is_postgres(conn)
    referenced = pg_blobs.referencing_sql(conn) if postgres else (
        "SELECT blob_id FROM output_blob" + (" UNION SELECT blob_id FROM activity_blob"
                                             if "activity_blob" in tables(conn) else ""))
    unreferenced = f"id NOT IN ({referenced})"
    orphans = [r[0] for r in conn.execute(f"SELECT id FROM blob WHERE {unreferenced} ORDER BY id")]
    dropped = stored = 0
    for batch in tqdm(list(_batches(orphans)), desc="dropping blobs", unit="batch",
                      disable=not progress or not orphans):
        with log.transaction():
            if postgres:
                batch = pg_blobs.lock_unclaimed(conn, batch)
            if not batch:
                continue
            # Checked again inside the transaction (and, on PostgreSQL, under the locks): still unreferenced.
            found = conn.execute(f"SELECT id, stored_size FROM blob WHERE id IN ({_marks(batch)}) AND "
                                 f"{unreferenced}", batch).fetchall()
            doomed = [r[0] for r in found]
            if doomed:
                conn.execute(f"DELETE FROM chunk WHERE blob_id IN ({_marks(doomed)})", doomed)
                conn.execute(f"DELETE FROM blob WHERE id IN ({_marks(doomed)})", doomed)
            dropped += len(doomed)
            stored += sum(int(r[1]) for r in found)
    return dropped, stored
