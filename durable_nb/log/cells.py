"""The SQL of cell executions: start one as `running`, finish it in one transaction, find a replayable record
by key, and read back its outputs. Plain functions of a connection; `LogStore` offers them to the runtime as
the methods of the `CellLog` interface (durable_nb.cell_outputs)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from ..keys import PublicKey
from ..record import Record
from . import signers
from .connect import is_postgres, stored_json


class ExecutionStart(Record):
    __match_args__ = ("cell_name", "cell_id", "execution_count", "key", "code", "code_hash", "inputs", "deps_files",
                      "reason")
    __slots__ = __match_args__

    def __init__(self, cell_name: str | None, cell_id: str | None, execution_count: int | None, key: str, code: str,
                 code_hash: str, inputs: dict[str, str], deps_files: dict[str, str], reason: str | None) -> None:
        self.cell_name = cell_name
        self.cell_id = cell_id
        self.execution_count = execution_count
        self.key = key
        self.code = code
        self.code_hash = code_hash
        self.inputs = inputs
        self.deps_files = deps_files
        self.reason = reason

    @property
    def lineage(self) -> str:
        """What makes executions "the same cell" when explaining a re-run: its --name, else its notebook
        cell id, else its code."""
        if self.cell_name:
            return f"name:{self.cell_name}"
        return f"cell:{self.cell_id}" if self.cell_id else f"code:{self.code_hash}"


class StoredOutput(Record):
    __match_args__ = ("name", "kind", "codec", "codec_version", "type", "meta", "size", "target", "inplace",
                      "signature", "blob_ids", "signer")
    __slots__ = __match_args__

    def __init__(self, name: str, kind: str, codec: str | None = None, codec_version: int | None = None,
                 type: str | None = None, meta: dict[str, Any] | None = None, size: int = 0,
                 target: str | None = None, inplace: bool = False, signature: str | None = None,
                 blob_ids: list[int] | None = None, signer: PublicKey | None = None) -> None:
        self.name = name
        self.kind = kind
        self.codec = codec
        self.codec_version = codec_version
        self.type = type
        self.meta = {} if meta is None else meta
        self.size = size
        self.target = target
        self.inplace = inplace
        self.signature = signature
        self.blob_ids = [] if blob_ids is None else blob_ids
        self.signer = signer  # None with a signature: an HMAC (logs older than signer keys)


class Recorded(Record):
    __match_args__ = ("id", "started_at", "duration", "inputs", "output_names", "read_files", "python", "packages")
    __slots__ = __match_args__

    def __init__(self, id: int, started_at: float, duration: float, inputs: dict[str, str], output_names: str | None,
                 read_files: dict[str, Any] | None = None, python: str = "", packages: str | None = None) -> None:
        self.id = id
        self.started_at = started_at
        self.duration = duration
        self.inputs = inputs
        self.output_names = output_names
        self.read_files = {} if read_files is None else read_files
        self.python = python  # of the run that recorded it
        self.packages = packages  # that run's package versions (JSON)

    @property
    def listed(self) -> list[str]:
        """The names the execution lists as its outputs."""
        return listed_names(self.output_names)


def start(conn: sqlite3.Connection, run_id: int, s: ExecutionStart) -> int:
    """Inside the caller's transaction (committed before user code starts, so a crash leaves a visible trace)."""
    (execution_id,) = conn.execute(
        "INSERT INTO execution (run_id, cell_name, cell_id, execution_count, key, code, code_hash, lineage, "
        "state, started_at, reason, inputs, input_names, deps_files) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?) RETURNING id",
        (run_id, s.cell_name, s.cell_id, s.execution_count, s.key, s.code, s.code_hash, s.lineage, time.time(),
         s.reason, json.dumps(s.inputs), names(s.inputs), json.dumps(s.deps_files)),
    ).fetchone()
    return int(execution_id)


def write_events(conn: sqlite3.Connection, execution_id: int, events: list[tuple[str, Any]]) -> None:
    """Inside the caller's transaction."""
    conn.executemany(
        "INSERT INTO event (execution_id, seq, kind, data) VALUES (?, ?, ?, ?)",
        [(execution_id, i, kind, json.dumps(data, default=str)) for i, (kind, data) in enumerate(events)],
    )


def write_output(conn: sqlite3.Connection, execution_id: int, out: StoredOutput) -> None:
    """Inside the caller's transaction."""
    conn.execute(
        "INSERT INTO output (execution_id, name, kind, codec, codec_version, type, meta, size, target, inplace, "
        "signature, signer_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (execution_id, out.name, out.kind, out.codec, out.codec_version, out.type, json.dumps(out.meta),
         out.size, out.target, int(out.inplace), out.signature,
         None if out.signer is None else signers.signer_id(conn, out.signer)),
    )
    conn.executemany(
        "INSERT INTO output_blob (execution_id, name, seq, blob_id) VALUES (?, ?, ?, ?)",
        [(execution_id, out.name, i, bid) for i, bid in enumerate(out.blob_ids)],
    )


def finish(conn: sqlite3.Connection, execution_id: int, *, state: str, duration: float, replayable: bool = False,
           problems: list[str] | None = None, bytes_stored: int = 0, output_names: list[str] | None = None,
           error: BaseException | None = None, traceback: str | None = None,
           read_files: dict[str, Any] | None = None) -> None:
    """Inside the caller's transaction: the final state of a started execution."""
    conn.execute(
        "UPDATE execution SET state = ?, finished_at = ?, duration = ?, replayable = ?, problems = ?, "
        "bytes_stored = ?, output_names = ?, error_type = ?, error_message = ?, traceback = ?, read_files = ? "
        "WHERE id = ?",
        (state, time.time(), duration, int(replayable), json.dumps(problems or []), bytes_stored,
         names(sorted(output_names or [])), type(error).__name__ if error else None,
         str(error) if error else None, traceback, json.dumps(read_files or {}), execution_id),
    )


def names(items: Iterable[str]) -> str | None:
    """The text form of a name list in the views: "df, model"; None for none."""
    return ", ".join(items) or None


# The recording run's environment comes with the row: a replay compares it without another round trip.
_FIND = ("SELECT e.id, e.started_at, e.duration, e.inputs, e.output_names, e.read_files, r.python, r.packages "
         "FROM execution e JOIN run r ON r.id = e.run_id WHERE e.key = ? AND e.state = 'recorded' AND "
         "e.replayable = 1 AND (? OR e.run_id = ?) ORDER BY e.id DESC LIMIT 1")
_PREVIOUS = ("SELECT code_hash, inputs, deps_files, state, replayable, problems FROM execution "
             "WHERE lineage = ? AND state != 'running' ORDER BY id DESC LIMIT 1")
_BOTH = f"SELECT f.*, p.* FROM (SELECT 1 AS one) o LEFT JOIN ({_FIND}) f ON 1 = 1 LEFT JOIN ({_PREVIOUS}) p ON 1 = 1"


def find_replayable(conn: sqlite3.Connection, key: str, *, only_run: int | None = None) -> Recorded | None:
    """The latest replayable record of `key` (with `only_run`: recorded by that run only, for from-scratch runs)."""
    return _recorded(conn, conn.execute(_FIND, (key, only_run is None, only_run or 0)).fetchone())


def find_with_previous(conn: sqlite3.Connection, s: ExecutionStart, *,
                       only_run: int | None = None) -> tuple[Recorded | None, dict[str, Any] | None]:
    """find_replayable of the execution's key and its `previous`, in one statement: a miss needs both, and on
    PostgreSQL each statement is a round trip (~150 µs between a cell's steps, the server's process asleep)."""
    row = conn.execute(_BOTH, (s.key, only_run is None, only_run or 0, s.lineage)).fetchone()
    return (_recorded(conn, None if row[0] is None else row[:8]),
            _previous(conn, None if row[8] is None else row[8:]))


def _recorded(conn: sqlite3.Connection, row: Any) -> Recorded | None:
    return None if row is None else Recorded(row[0], row[1], row[2] or 0.0, stored_json(conn, row[3]), row[4],
                                             stored_json(conn, row[5] or "{}"), str(row[6]), row[7])


def previous(conn: sqlite3.Connection, s: ExecutionStart) -> dict[str, Any] | None:
    """The latest finished execution of the same cell (see ExecutionStart.lineage)."""
    return _previous(conn, conn.execute(_PREVIOUS, (s.lineage,)).fetchone())


def _previous(conn: sqlite3.Connection, row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    found = dict(zip(("code_hash", "inputs", "deps_files", "state", "replayable", "problems"), row, strict=True))
    for k in ("inputs", "deps_files", "problems"):
        found[k] = stored_json(conn, found[k])
    return found


def outputs(conn: sqlite3.Connection, execution_id: int) -> list[StoredOutput]:
    columns = f"name, kind, codec, codec_version, type, meta, size, target, inplace, signature, {signers.of('o')}"
    if is_postgres(conn):  # the blob ids in the same statement: each one is a round trip to the server
        return [_output(conn, r, r[12] or []) for r in conn.execute(
            f"SELECT {columns}, (SELECT array_agg(b.blob_id ORDER BY b.seq) FROM output_blob b WHERE "
            "b.execution_id = o.execution_id AND b.name = o.name) FROM output o WHERE execution_id = ? "
            "ORDER BY rowid", (execution_id,)).fetchall()]
    rows = conn.execute(f"SELECT {columns} FROM output o WHERE execution_id = ? ORDER BY rowid",
                        (execution_id,)).fetchall()
    blobs: dict[str, list[int]] = {}
    for name, blob_id in conn.execute(
            "SELECT name, blob_id FROM output_blob WHERE execution_id = ? ORDER BY name, seq", (execution_id,)):
        blobs.setdefault(name, []).append(blob_id)
    return [_output(conn, r, blobs.get(r[0], [])) for r in rows]


def _output(conn: sqlite3.Connection, r: Any, blob_ids: list[int]) -> StoredOutput:
    return StoredOutput(r[0], r[1], r[2], r[3], r[4], stored_json(conn, r[5]), r[6], r[7], bool(r[8]), r[9],
                        blob_ids, signers.public_key(r[10], r[11]))


def output_names(conn: sqlite3.Connection, execution_id: int) -> list[str]:
    row = conn.execute("SELECT output_names FROM execution WHERE id = ?", (execution_id,)).fetchone()
    return listed_names(None if row is None else row[0])


def listed_names(output_names: str | None) -> list[str]:
    return str(output_names).split(", ") if output_names else []


def saved_seconds(original: float, replay: float) -> float:
    """The time a replay saved: the original run's duration minus the replay's (the log's `saved_seconds`)."""
    return max(original - replay, 0.0)


def replay_row(run_id: int, s: ExecutionStart, source: Recorded, duration: float) -> tuple[str, tuple[Any, ...]]:
    """The row of a replay: bookkeeping, deferred to the next commit by the caller (see LogStore.defer)."""
    now = time.time()
    return (
        "INSERT INTO execution (run_id, cell_name, cell_id, execution_count, key, code, code_hash, lineage, state, "
        "started_at, finished_at, duration, replayed_from, saved_seconds, inputs, input_names, output_names, "
        "deps_files, replayable) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'replayed', ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
        (run_id, s.cell_name, s.cell_id, s.execution_count, s.key, s.code, s.code_hash, s.lineage, now - duration,
         now, duration, source.id, saved_seconds(source.duration, duration), json.dumps(s.inputs),
         names(s.inputs), source.output_names, json.dumps(s.deps_files)),
    )
