"""The activity journal: the append-only files beside a log that make a call durable before it returns.

A finished call with a small result is one JSON line in `<log>-activities/<run uuid>-<n>.jsonl` (a write(2)
survives the death of the process); the recorder (durable_nb.log.calls) moves lines into the log in batches, and
whoever opens the log for writing next imports the journals that dead runs left behind (`recover`).
"""

from __future__ import annotations

import binascii
import contextlib
import errno
import json
import os
import sqlite3
import weakref
from pathlib import Path
from typing import Any

from . import queries
from .connect import is_postgres, write_transaction

# Columns of one activity_call upsert, in the order of `Recorder._params` (and of a journal line).
COLUMNS = ("uid", "run_id", "execution_id", "function", "key", "occurrence", "kind", "started_at", "state",
            "finished_at", "attempts", "attempt_started_at", "codec", "codec_version", "type", "meta", "size",
            "inline", "parts", "signature", "signer_id", "batch_id")
INLINE_AT = COLUMNS.index("inline")
BATCH_AT = COLUMNS.index("batch_id")
_UPDATED = COLUMNS[8:]  # of a call already in the log (written as running, or imported before a crash)
UPSERT_MANY = (f"INSERT INTO activity_call ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
                "ON CONFLICT(uid) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _UPDATED))
UPSERT = UPSERT_MANY + " RETURNING id"
FAILURE_ROW = ("INSERT INTO attempt (call_id, n, state, started_at, finished_at, delay, "
                "error_type, error_message, traceback) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")


class Journal:
    """The run's append-only file of finished calls with small results, next to the log.

    Appending a line is what makes a call durable before it returns (a write(2) survives the process; with
    durability="full" it is also fsynced): a SQLite commit per call costs 5-10× more with the log's 64 KiB
    pages. The flusher thread moves journaled calls into the log in batches and then deletes the file; a new
    process imports the journals of dead runs (upserts by call uid, so an import repeated after a crash
    between commit and delete is harmless).
    """

    def __init__(self, log_path: Path, run_uuid: str, fsync: bool) -> None:
        self.folder = journal_folder(log_path)
        self.prefix = f"{run_uuid}-"
        self.fsync = fsync
        self.seq = 0
        self.fd: int | None = None
        self.path: Path | None = None
        # Files given up after a failed append (a torn last line at most), deleted with the next batch.
        self.given_up: list[Path] = []
        _LIVE.add(self)

    def append(self, line: bytes) -> None:
        """Raises OSError when the line is not (wholly) in the file: the caller records the call another way,
        and the next line starts a new file, so a torn line is always a file's last (ignored on import)."""
        try:
            if self.fd is None:
                self.folder.mkdir(exist_ok=True)
                self.seq += 1
                self.path = self.folder / f"{self.prefix}{self.seq}.jsonl"
                self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            written = os.write(self.fd, line)
            if written != len(line):  # a full disk or a file size limit
                raise OSError(errno.ENOSPC, f"only {written} of {len(line)} bytes could be written", str(self.path))
            if self.fsync:
                os.fsync(self.fd)
        except OSError:
            fd, path = self.rotate()
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if path is not None:
                self.given_up.append(path)
            raise

    def rotate(self) -> tuple[int | None, Path | None]:
        """Detach the current file (its lines are about to be committed): later lines start a new one. The
        caller closes the returned descriptor outside its lock (a syscall under the lock hands the GIL to
        the thread waiting for that lock)."""
        detached = (self.fd, self.path)
        self.fd, self.path = None, None
        return detached


def journal_folder(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + "-activities")


# Built once: json.dumps with any non-default option builds a new encoder per call.
_JOURNAL_JSON = json.JSONEncoder(separators=(",", ":"))


def journal_line(params: tuple[Any, ...], failures: list[tuple[Any, ...]]) -> bytes:
    row = list(params)
    if row[INLINE_AT] is not None:
        row[INLINE_AT] = binascii.b2a_base64(row[INLINE_AT], newline=False).decode()
    return (_JOURNAL_JSON.encode([row, failures]) + "\n").encode()


def parse_line(line: bytes) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]] | None:
    try:
        row, failures = json.loads(line)
    except ValueError:
        return None  # a torn last line (power loss during the append): that call never returned
    if row[INLINE_AT] is not None:
        row[INLINE_AT] = binascii.a2b_base64(row[INLINE_AT])
    # A journal left by a version before signer keys has fewer columns: the missing ones are NULL.
    return (*row, *[None] * (len(COLUMNS) - len(row))), [tuple(f) for f in failures]


def upsert_many(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Inside the caller's transaction: calls without failed attempts, upserted by uid. On PostgreSQL through
    COPY: psycopg writes a COPY row in ~2 µs of C where its executemany adapts the 22 parameters in Python
    (~9 µs), on the flusher thread's share of the GIL, which the caller's loop of calls waits for."""
    if is_postgres(conn):
        conn.copy_upsert("activity_call", COLUMNS, "uid", _UPDATED, rows)  # type: ignore[attr-defined]
    else:
        conn.executemany(UPSERT_MANY, rows)


def upsert(conn: sqlite3.Connection, params: tuple[Any, ...], failures: list[tuple[Any, ...]]) -> int:
    (call_id,) = conn.execute(UPSERT, params).fetchone()
    if failures:
        conn.executemany(FAILURE_ROW, [(call_id, *f) for f in failures])
    return int(call_id)


def recover(conn: sqlite3.Connection, path: Path, dead: set[int]) -> int:
    """Import the journals of dead runs, then mark their calls still `running` as `crashed`; returns how many
    journal lines were imported. Runs recording in this process are never touched."""
    folder = journal_folder(path)
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not (files or dead):  # nothing to import or mark: no write transaction
        return 0
    uuids = dict(conn.execute("SELECT uuid, id FROM run").fetchall()) if files else {}
    live = {j.prefix for j in list(_LIVE)}
    orphans = [f for f in files if uuids.get(f.name.split("-")[0]) in dead
               and f.name.split("-")[0] + "-" not in live]
    imported = 0
    with write_transaction(conn, path):
        for file in orphans:
            for line in file.read_bytes().splitlines():
                parsed = parse_line(line)
                if parsed is not None:
                    upsert(conn, *parsed)
                    imported += 1
        queries.mark_crashed(conn, "activity_call", dead)
    for file in orphans:
        file.unlink(missing_ok=True)
    return imported




def pending(log_path: Path) -> int:
    """Calls journaled beside this log and not yet moved into it (by any process): visible to `durable-nb status`
    even when the process whose flusher fails is another one."""
    folder = journal_folder(log_path)
    return sum(f.read_bytes().count(b"\n") for f in folder.glob("*.jsonl")) if folder.is_dir() else 0


# Journals this process is writing: `recover` never imports them, even for a run that looks dead (ended).
_LIVE: weakref.WeakSet[Journal] = weakref.WeakSet()
