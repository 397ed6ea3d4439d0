"""`copy(src, dst)`: move a whole log between backends, in either direction (a SQLite file into a team's
PostgreSQL schema, a team schema into a file to send), or between two logs of one backend.

The destination must hold no records yet (a new file, a new schema): runs, executions and calls keep their ids,
so every reference between them (a replay's source, a call's execution) stays true. Blobs are matched by content
hash instead: a PostgreSQL database shares its blobs between its logs, so a blob the destination already has is
not copied again and the copied rows point at its id there. Chunks are copied as stored (compressed or not), one
at a time: nothing holds a whole value in memory, and the content hash, which the signatures cover, is unchanged.
Everything is written in one transaction: an interrupted copy leaves the destination as empty as it was.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import LogError
from . import signers
from .blobs import BlobSink
from .connect import is_postgres
from .store import LogStore

# In the order of their foreign keys. `blob`/`chunk` go separately (matched by hash); `*_blob` rows are remapped.
TABLES = ("signer", "signed_batch", "run", "execution", "output", "event", "activity_call", "attempt")
BLOB_LINKS = {"output_blob": ("execution_id", "name", "seq", "blob_id"),
              "activity_blob": ("call_id", "seq", "blob_id")}
# Columns a backend adds for itself: PostgreSQL's explicit `output.rowid` (the order is kept by inserting in it).
_OWN_COLUMNS = {"rowid"}
# `output.rowid`: SQLite's implicit insertion order, PostgreSQL's explicit column of the same name.
_ORDER = {"output": "rowid", "event": "execution_id, seq", "attempt": "call_id, n"}
# Blob ids asked for at once (SQLite's bound-parameter limit is 32766).
_BATCH = 500
# Identities a PostgreSQL destination must continue after the copied ids.
_IDENTITIES = ("signer", "signed_batch", "run", "execution", "activity_call")


@dataclass
class CopyResult:
    source: str
    target: str
    rows: int
    blobs: int
    blobs_shared: int
    bytes_copied: int

    def summary(self) -> str:
        return (f"copied {self.source} → {self.target}: {self.rows} rows, {self.blobs} blobs "
                f"({self.bytes_copied / 1e6:.1f} MB stored; {self.blobs_shared} already there)")


@dataclass(frozen=True)
class Selection:
    """Part of a log (`durable-nb export --latest-only`): these executions and activity calls, the runs they
    belong to, their rows and the blobs they use. A kept call whose execution is left out keeps no execution."""

    executions: frozenset[int]
    calls: frozenset[int]

    def kept(self, source: sqlite3.Connection) -> dict[str, tuple[int, frozenset[int]]]:
        """Table → (the column that decides, the ids kept): rows are filtered as they stream."""
        runs: set[int] = set()
        for table, ids in (("execution", self.executions), ("activity_call", self.calls)):
            runs |= {int(r[1]) for r in source.execute(f"SELECT id, run_id FROM {table}") if r[0] in ids}
        by_execution, by_call = (0, self.executions), (0, self.calls)
        return {"run": (0, frozenset(runs)), "execution": by_execution, "output": by_execution,
                "event": by_execution, "output_blob": by_execution, "activity_call": by_call,
                "attempt": by_call, "activity_blob": by_call}


def copy(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, progress: bool = False,
         selection: Selection | None = None) -> CopyResult:
    """Copy the log at `src` (a path or a postgresql:// URL) into the empty log at `dst` (created if needed):
    all of it, or the `selection`."""
    from tqdm.auto import tqdm  # deferred: only a copy needs it

    with LogStore(src, readonly=True) as source, LogStore(dst, readonly=False) as target:
        existing = target.conn.execute("SELECT count(*) FROM run").fetchone()[0]
        if existing:
            raise LogError(f"durable log {target} already holds {existing} runs: copy writes into a new "
                           "file or an empty schema only (pick another path, or another ?schema=).")
        kept = selection.kept(source.conn) if selection is not None else {}
        links = {table: [row for row in source.conn.execute(f"SELECT {', '.join(columns)} FROM {table} "
                                                            "ORDER BY 1, 2") if _keeps(kept, table, row)]
                 for table, columns in BLOB_LINKS.items()}
        used = {int(row[-1]) for rows in links.values() for row in rows}
        with target.transaction() as out, tqdm(total=_stored_size(source.conn, used), unit="B", unit_scale=True,
                                                desc="copying", disable=not progress) as bar:
            rows = sum(_copy_table(source.conn, out, table, kept) for table in TABLES)
            if selection is not None:  # a kept call may name an execution left out
                out.execute("UPDATE activity_call SET execution_id = NULL "
                            "WHERE execution_id NOT IN (SELECT id FROM execution)")
            blob_map, shared, stored = _copy_blobs(source.conn, used, target.blob_store(out).sink(), bar.update)
            for table, columns in BLOB_LINKS.items():
                rows += _insert(out, table, columns, ((*row[:-1], blob_map[row[-1]]) for row in links[table]))
            if is_postgres(out):
                for table in _IDENTITIES:
                    out.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                f"coalesce((SELECT max(id) FROM {table}), 0) + 1, false)")
        return CopyResult(str(source), str(target), rows, len(blob_map), shared, stored)


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    cur = conn.execute(f"SELECT * FROM {table} LIMIT 0")
    return [d[0] for d in cur.description if d[0] not in _OWN_COLUMNS]


def _keeps(kept: dict[str, tuple[int, frozenset[int]]], table: str, row: Sequence[Any]) -> bool:
    if table not in kept:
        return True
    column, ids = kept[table]
    return row[column] in ids


def _blob_rows(source: sqlite3.Connection, columns: str, blob_ids: set[int]) -> Iterator[Any]:
    """Rows of the blobs `blob_ids`, by id (a PostgreSQL database's blob table holds every log's blobs)."""
    ordered = sorted(blob_ids)
    for start in range(0, len(ordered), _BATCH):
        batch = ordered[start:start + _BATCH]
        yield from source.execute(f"SELECT {columns} FROM blob WHERE id IN ({','.join('?' * len(batch))}) "
                                  "ORDER BY id", batch).fetchall()


def _stored_size(source: sqlite3.Connection, blob_ids: set[int]) -> int:
    return sum(int(size) for (size,) in _blob_rows(source, "stored_size", blob_ids))


def _copy_table(source: sqlite3.Connection, target: sqlite3.Connection, table: str,
                kept: dict[str, tuple[int, frozenset[int]]]) -> int:
    # The deciding column (an id) comes first, as _keeps expects.
    if table in ("signer", "signed_batch") and not signers.has_signers(source):  # older than signer keys
        return 0
    key = {"signer": "id", "signed_batch": "id", "run": "id", "execution": "id", "activity_call": "id",
           "attempt": "call_id"}.get(table, "execution_id")
    shared = set(_columns(target, table))
    columns = [key] + [c for c in _columns(source, table) if c in shared and c != key]
    order = _ORDER.get(table, "id")
    return _insert(target, table, columns, (row for row in source.execute(
        f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}") if _keeps(kept, table, row)))


def _insert(target: sqlite3.Connection, table: str, columns: tuple[str, ...] | list[str],
            rows: Iterator[Any] | Any) -> int:
    batch: list[tuple[Any, ...]] = []
    count = 0
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    for row in rows:
        batch.append(tuple(row))
        if len(batch) >= 1000:
            target.executemany(sql, batch)
            count += len(batch)
            batch = []
    if batch:
        target.executemany(sql, batch)
        count += len(batch)
    return count


def _copy_blobs(source: sqlite3.Connection, used: set[int], sink: BlobSink,
                advance: Callable[[int], object]) -> tuple[dict[int, int], int, int]:
    """The blobs `used` by the copied values, matched by hash in the target or copied chunk by chunk; returns
    (source id → target id, how many the target already had, stored bytes copied)."""
    target = sink.conn
    mapping: dict[int, int] = {}
    shared = stored = 0
    for blob_id, digest, size, stored_size, chunk_count, created_at in _blob_rows(
            source, "id, hash, size, stored_size, chunk_count, created_at", used):
        existing = sink.existing(digest)
        if existing is not None:
            mapping[int(blob_id)] = existing
            shared += 1
            advance(stored_size)
            continue
        (found,) = target.execute("INSERT INTO blob (hash, size, stored_size, chunk_count, created_at) "
                                  "VALUES (?, ?, ?, ?, ?) RETURNING id",
                                  (digest, size, stored_size, chunk_count, created_at)).fetchone()
        mapping[int(blob_id)] = found
        for (chunk_id,) in source.execute("SELECT id FROM chunk WHERE blob_id = ? ORDER BY seq", (blob_id,)).fetchall():
            seq, raw_size, compression, data = source.execute(
                "SELECT seq, raw_size, compression, data FROM chunk WHERE id = ?", (chunk_id,)).fetchone()
            target.execute("INSERT INTO chunk (blob_id, seq, raw_size, compression, data) VALUES (?, ?, ?, ?, ?)",
                           (found, seq, raw_size, compression, data))
            stored += len(data)
            advance(len(data))
    return mapping, shared, stored
