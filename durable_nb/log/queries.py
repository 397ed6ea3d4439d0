"""Read-only questions about a log, answered in SQL without pandas: what an execution was, where a variable
was recorded, what a log holds. The pandas views (durable_nb.views) and the CLI sit on these.

Nothing here reads `chunk.data`: values are compared by their blobs' content hashes, never by their bytes.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from ..errors import NotRecordedError
from ..keys import PublicKey
from ..record import Record
from ..vocabulary import STATES, ago, fmt_duration, human_bytes
from . import signers
from .connect import applied_version, is_postgres, stored_json

# The states whose variables a later cell saw: a replay restores its source's outputs.
_COMPLETED = "('recorded', 'replayed')"


class OutputRecord(Record):
    __match_args__ = ("execution_id", "name", "kind", "codec", "codec_version", "type", "meta", "size", "target",
                      "signature", "blob_hashes", "signer")
    __slots__ = __match_args__

    def __init__(self, execution_id: int, name: str, kind: str, codec: str | None, codec_version: int | None,
                 type: str | None, meta: dict[str, Any], size: int, target: str | None, signature: str | None,
                 blob_hashes: list[str] | None = None, signer: PublicKey | None = None) -> None:
        self.execution_id = execution_id
        self.name = name
        self.kind = kind
        self.codec = codec
        self.codec_version = codec_version
        self.type = type
        self.meta = meta
        self.size = size
        self.target = target
        self.signature = signature
        self.blob_hashes = [] if blob_hashes is None else blob_hashes
        self.signer = signer

    def content(self) -> str:
        """What identifies the value's content: equal strings mean equal stored values."""
        return json.dumps([self.kind, self.codec, self.target, self.blob_hashes,
                           None if self.blob_hashes else self.meta], sort_keys=True)


class ExecutionRecord(Record):
    __match_args__ = ("id", "run_id", "cell_name", "cell_id", "state", "started_at", "finished_at", "duration",
                      "saved_seconds", "replayed_from", "reason", "code", "code_hash", "key", "inputs", "deps_files",
                      "bytes_stored", "error_type", "error_message", "traceback")
    __slots__ = __match_args__

    def __init__(self, id: int, run_id: int, cell_name: str | None, cell_id: str | None, state: str,
                 started_at: float, finished_at: float | None, duration: float | None, saved_seconds: float | None,
                 replayed_from: int | None, reason: str | None, code: str, code_hash: str, key: str,
                 inputs: dict[str, str], deps_files: dict[str, str], bytes_stored: int, error_type: str | None,
                 error_message: str | None, traceback: str | None) -> None:
        self.id = id
        self.run_id = run_id
        self.cell_name = cell_name
        self.cell_id = cell_id
        self.state = state
        self.started_at = started_at
        self.finished_at = finished_at
        self.duration = duration
        self.saved_seconds = saved_seconds
        self.replayed_from = replayed_from
        self.reason = reason
        self.code = code
        self.code_hash = code_hash
        self.key = key
        self.inputs = inputs
        self.deps_files = deps_files
        self.bytes_stored = bytes_stored
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback

    @property
    def cell(self) -> str:
        return cell_label(self.cell_name, self.cell_id, self.code_hash)

    @property
    def source_id(self) -> int:
        """The execution holding the outputs: a replay's outputs are its source's."""
        return self.replayed_from or self.id


def cell_label(name: str | None, cell_id: str | None, code_hash: str | None) -> str:
    if name:
        return name
    if cell_id:
        return f"cell {cell_id[:8]}"
    return f"code {(code_hash or '?')[:8]}"


_EXECUTION_COLUMNS = ("id, run_id, cell_name, cell_id, state, started_at, finished_at, duration, saved_seconds, "
                      "replayed_from, reason, code, code_hash, key, inputs, deps_files, bytes_stored, error_type, "
                      "error_message, traceback")


def execution(conn: sqlite3.Connection, execution_id: int, path: Path) -> ExecutionRecord:
    row = conn.execute(f"SELECT {_EXECUTION_COLUMNS} FROM execution WHERE id = ?", (execution_id,)).fetchone()
    if row is None:
        low, high = conn.execute("SELECT min(id), max(id) FROM execution").fetchone()
        held = f"its executions are {low}–{high}" if low is not None else "it has no executions yet"
        raise NotRecordedError(f"execution {execution_id} is not in {path} ({held}); list them with "
                               f"`durable-nb history {path}`.")
    values = list(row)
    values[14], values[15] = stored_json(conn, values[14]), stored_json(conn, values[15])
    return ExecutionRecord(*values)


def check_run(conn: sqlite3.Connection, run_id: int, path: Path) -> None:
    if conn.execute("SELECT 1 FROM run WHERE id = ?", (run_id,)).fetchone() is None:
        runs = [r[0] for r in conn.execute("SELECT id FROM run ORDER BY id")]
        raise NotRecordedError(f"run {run_id} is not in {path} (runs: {_span(runs)}); list them with "
                               f"`durable-nb runs {path}`.")


def _span(ids: list[int]) -> str:
    if not ids:
        return "none yet"
    return f"{ids[0]}–{ids[-1]}" if len(ids) > 1 else str(ids[0])


def outputs(conn: sqlite3.Connection, execution_id: int) -> list[OutputRecord]:
    hashes = ("coalesce(json_agg(b.hash)::text, '[]')" if is_postgres(conn) else "json_group_array(b.hash)")
    rows = conn.execute(
        "SELECT o.execution_id, o.name, o.kind, o.codec, o.codec_version, o.type, o.meta, o.size, o.target, "
        f"o.signature, (SELECT {hashes} FROM (SELECT bl.hash FROM output_blob ob "
        "JOIN blob bl ON bl.id = ob.blob_id WHERE ob.execution_id = o.execution_id AND ob.name = o.name "
        f"ORDER BY ob.seq) b), {signers.columns(conn, 'o')} FROM output o WHERE o.execution_id = ? "
        "ORDER BY o.rowid", (execution_id,))
    return [OutputRecord(r[0], r[1], r[2], r[3], r[4], r[5], stored_json(conn, r[6]), r[7], r[8], r[9],
                         stored_json(conn, r[10]), signers.public_key(r[11], r[12])) for r in rows]


def blob_ids(conn: sqlite3.Connection, execution_id: int, name: str) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT blob_id FROM output_blob WHERE execution_id = ? AND name = ? ORDER BY seq", (execution_id, name))]


def events(conn: sqlite3.Connection, execution_id: int) -> list[tuple[str, Any]]:
    return [(kind, stored_json(conn, data)) for kind, data in conn.execute(
        "SELECT kind, data FROM event WHERE execution_id = ? ORDER BY seq", (execution_id,))]


def find_output(conn: sqlite3.Connection, name: str, path: Path, *, execution: int | None = None,
                run: int | None = None, at: float | None = None) -> tuple[int, OutputRecord]:
    """The latest completed execution (at or before `execution`, within `run`, finished by `at`) that
    recorded `name`; returns (that execution's id, the output record, from the replay's source if a replay)."""
    where: list[str] = [f"e.state IN {_COMPLETED}"]
    params: list[Any] = [name]
    if execution is not None:
        where.append("e.id <= ?")
        params.append(execution)
    if run is not None:
        where.append("e.run_id = ?")
        params.append(run)
    if at is not None:
        where.append("e.finished_at <= ?")
        params.append(at + 1e-6)  # a time copied from a view (µs precision) still includes that execution
    row = conn.execute(
        "SELECT e.id, coalesce(e.replayed_from, e.id) FROM execution e JOIN output o "
        "ON o.execution_id = coalesce(e.replayed_from, e.id) AND o.name = ? "
        f"WHERE {' AND '.join(where)} ORDER BY e.id DESC LIMIT 1", params).fetchone()
    if row is None:
        raise NotRecordedError(_never_recorded(conn, name, path, execution, run, at))
    found = next(o for o in outputs(conn, row[1]) if o.name == name)
    return int(row[0]), found


def _never_recorded(conn: sqlite3.Connection, name: str, path: Path, execution: int | None, run: int | None,
                    at: float | None) -> str:
    bounds = [f"at or before execution {execution}" if execution is not None else "",
              f"in run {run}" if run is not None else "",
              "by the time asked" if at is not None else ""]
    scope = " ".join(b for b in bounds if b)
    known = [r[0] for r in conn.execute(
        "SELECT DISTINCT name FROM output WHERE kind IN ('value', 'module', 'alias') ORDER BY name LIMIT 12")]
    listing = ", ".join(known) if known else "none"
    return (f"variable {name} was never recorded in {path}{' ' + scope if scope else ''} "
            f"(recorded variables include: {listing}). Only variables bound by %%durable cells are recorded.")


class LogStatus(Record):
    __match_args__ = ("path", "file_bytes", "wal_bytes", "free_bytes", "schema_version", "runs", "current_run",
                      "last_activity", "executions", "activities", "saved_seconds", "replication", "files_read",
                      "pending_calls", "problems")
    __slots__ = __match_args__

    def __init__(self, path: Path | str, file_bytes: int, wal_bytes: int, free_bytes: int, schema_version: int,
                 runs: int, current_run: int | None, last_activity: float | None, executions: dict[str, int],
                 activities: dict[str, int], saved_seconds: float, replication: dict[str, Any] | None = None,
                 files_read: int = 0, pending_calls: int = 0, problems: list[str] | None = None) -> None:
        self.path = path  # a str: a PostgreSQL log's password-free URL
        self.file_bytes = file_bytes
        self.wal_bytes = wal_bytes
        self.free_bytes = free_bytes
        self.schema_version = schema_version
        self.runs = runs
        self.current_run = current_run
        self.last_activity = last_activity
        self.executions = executions
        self.activities = activities
        self.saved_seconds = saved_seconds
        self.replication = replication
        self.files_read = files_read  # distinct files and listings the log's executions were found reading
        self.pending_calls = pending_calls  # activity calls journaled beside the log, not yet moved into it
        self.problems = [] if problems is None else problems  # background work of this process that failed

    def as_dict(self) -> dict[str, Any]:
        found = super().as_dict()
        found["path"] = str(self.path)
        return found

    def __str__(self) -> str:
        """The lines of `durable-nb status` and %durable_status."""
        # A PostgreSQL schema's size is its tables' (its blobs are the database's); it has no WAL or free pages.
        size = (f"{human_bytes(self.file_bytes)} in its tables" if isinstance(self.path, str) else
                f"{human_bytes(self.file_bytes)}{f' + {human_bytes(self.wal_bytes)} WAL' if self.wal_bytes else ''}; "
                f"{human_bytes(self.free_bytes)} free pages")
        lines = [f"log:        {self.path} ({size})",
                 f"schema:     version {self.schema_version}",
                 f"runs:       {self.runs}" + (f" (current: run {self.current_run})" if self.current_run else ""),
                 f"executions: {_counts(self.executions)}",
                 f"activities: {_counts(self.activities)}"
                 + (f" (+ {self.pending_calls} journaled, not yet in the log)" if self.pending_calls else ""),
                 f"time saved: {fmt_duration(self.saved_seconds) if self.saved_seconds else 'none yet'}",
                 f"files read: {self.files_read} files and listings read or files written (which, per execution: "
                 "the files_read column of durable_nb.history())",
                 f"last write: {ago(self.last_activity)}"]
        if self.replication is not None:
            lines.append(f"replica:    {self.replication.get('summary', '')}")
        lines += [f"problem:    {p}" for p in self.problems]
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))


def _counts(by_state: dict[str, int]) -> str:
    order = {s: i for i, s in enumerate(STATES)}
    return " · ".join(f"{n} {s}" for s, n in sorted(by_state.items(), key=lambda kv: order.get(kv[0], 9))) or "none"


def status(conn: sqlite3.Connection, path: Path, current_run: int | None = None) -> LogStatus:
    """Sizes and counts: cheap aggregates over indexed tables, no blob bytes."""
    shown, sizes = _pg_sizes(conn) if is_postgres(conn) else (path, _file_sizes(conn, path))
    acts: dict[str, int] = {}
    if "activity_call" in tables(conn):
        acts = dict(conn.execute("SELECT state, count(*) FROM activity_call GROUP BY state").fetchall())
    if current_run is None:
        latest = conn.execute("SELECT max(id) FROM run WHERE ended_at IS NULL").fetchone()[0]
        current_run = None if latest is None else int(latest)
    return LogStatus(
        path=shown,
        file_bytes=sizes[0],
        wal_bytes=sizes[1],
        free_bytes=sizes[2],
        schema_version=applied_version(conn),
        runs=int(conn.execute("SELECT count(*) FROM run").fetchone()[0]),
        current_run=current_run,
        last_activity=conn.execute("SELECT max(coalesce(finished_at, started_at)) FROM execution").fetchone()[0],
        executions=dict(conn.execute("SELECT state, count(*) FROM execution GROUP BY state").fetchall()),
        activities=acts,
        saved_seconds=float(conn.execute("SELECT coalesce(sum(saved_seconds), 0) FROM execution").fetchone()[0]),
        files_read=_files_read(conn),
    )


def _file_sizes(conn: sqlite3.Connection, path: Path) -> tuple[int, int, int]:
    """The log file's bytes, its WAL's, and its free pages'."""
    page_size, free_pages = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "freelist_count"))
    wal = path.with_name(path.name + "-wal")
    return (path.stat().st_size if path.exists() else 0, wal.stat().st_size if wal.exists() else 0,
            int(page_size) * int(free_pages))


def _pg_sizes(conn: sqlite3.Connection) -> tuple[str, tuple[int, int, int]]:
    """A PostgreSQL log's URL, and the bytes of its schema's tables (its blobs are the database's, shared)."""
    (size,) = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'"
    ).fetchone()
    return str(conn.target), (int(size), 0, 0)  # type: ignore[attr-defined]


def tables(conn: sqlite3.Connection) -> set[str]:
    """The tables of the log (on PostgreSQL: of its schema)."""
    if is_postgres(conn):
        return {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables "
                                           "WHERE table_schema = current_schema()")}
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _files_read(conn: sqlite3.Connection) -> int:
    if is_postgres(conn):  # every PostgreSQL log has read_files (version 5 and later only)
        return int(conn.execute("SELECT count(DISTINCT j.k) FROM execution e, json_object_keys(e.read_files::json) "
                                "AS j(k) WHERE e.read_files != '{}'").fetchone()[0])
    columns = {r[1] for r in conn.execute("PRAGMA table_info(execution)")}
    if "read_files" not in columns:  # a log of an older schema, opened read-only
        return 0
    return int(conn.execute("SELECT count(DISTINCT j.key) FROM execution e, json_each(e.read_files) j "
                            "WHERE e.read_files != '{}'").fetchone()[0])


def last_execution_per_cell(conn: sqlite3.Connection, run_id: int) -> dict[str, int]:
    """cell label → the id of that cell's last execution in the run."""
    found: dict[str, int] = {}
    for ex_id, name, cell_id, code_hash in conn.execute(
            "SELECT id, cell_name, cell_id, code_hash FROM execution WHERE run_id = ? ORDER BY id", (run_id,)):
        found[cell_label(name, cell_id, code_hash)] = int(ex_id)
    return found


def running_runs(conn: sqlite3.Connection, table: str) -> set[int]:
    """Runs with rows still `running` in `table` (execution or activity_call)."""
    return {r[0] for r in conn.execute(f"SELECT DISTINCT run_id FROM {table} WHERE state = 'running'")}


def mark_crashed(conn: sqlite3.Connection, table: str, dead_runs: set[int]) -> int:
    """Rows of `table` left `running` by runs whose process is gone are `crashed`; returns how many."""
    stale = sorted(running_runs(conn, table) & dead_runs)
    if not stale:
        return 0
    cur = conn.execute(f"UPDATE {table} SET state = 'crashed' WHERE state = 'running' AND "
                       f"run_id IN ({','.join('?' * len(stale))})", stale)
    return cur.rowcount
