"""The persistence of activity calls: how `durable_nb.calls` records them in the log and finds them again.

A call's result is durable before it is returned to the caller. A small result (one encoded buffer of at
most INLINE_MAX bytes; most are) is appended as one line to this run's journal,
`<log>-activities/<run uuid>-<n>.jsonl`: a write(2) survives the death of the process. A background thread
moves journaled calls into the SQLite log in one transaction every FLUSH_DELAY seconds (and at exit); the
next process that opens the log imports the journals of dead runs (`recover`). Why a journal: with the
log's 64 KiB pages one SQLite commit per call costs 150-300 µs, an append a few µs. Bigger results go
straight into the log as blobs, in their own transaction. With `durability="normal"` (default) a recorded call
survives a kernel or process crash but may be lost on power loss or an OS crash; with
`open_log(path, durability="full")` each journal line is fsynced (and the log uses synchronous=FULL), so it
survives those too. Threads and `asyncio.gather` may call activities concurrently: each call has its own
uid, and the journal appends are serialized by a lock.
A call still running after FLUSH_DELAY seconds is written as `running` by the background thread, so a crash
shows it as `crashed` in the `activities` view; a call that dies sooner leaves no row. Either way it runs
again on the next run: only `recorded` calls replay.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import errno
import functools
import io
import itertools
import json
import os
import pickle
import sqlite3
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from .. import session
from ..errors import DecodeError, EncodeError, LogError, LogNotWritableError
from .connect import connect, write_transaction

if TYPE_CHECKING:
    from ..codecs import Encoded
    from .blobs import BlobSource, BlobStore
    from .store import DurableLog

# A call is written as `running` once it has run this long (so a crash leaves a visible `crashed` row).
FLUSH_DELAY = 0.02
# Results whose encoding is one buffer of at most this many bytes live in the call row; larger ones are blobs.
INLINE_MAX = 64 * 1024
# The replay index keeps inline results up to this size in memory; larger ones are read on a hit.
INDEX_INLINE_MAX = 4096


# ------------------------------------------------------------------------------------ result encoding

class _CaptureSink:
    """A BlobSink stand-in used while encoding a result outside the write transaction: it keeps the buffers
    (not copied) until the recorder writes them inline or as blobs."""

    def __init__(self) -> None:
        self.parts: list[memoryview] = []
        self.sizes: list[int] = []

    @property
    def blob_ids(self) -> list[int]:
        return list(range(len(self.parts)))

    def put(self, buffer: Any) -> int:
        view = memoryview(buffer)
        if not view.contiguous:
            raise TypeError("blob buffers must be contiguous")
        if view.ndim != 1 or view.format != "B":
            view = pickle.PickleBuffer(view).raw()  # flat bytes of C- or Fortran-ordered buffers, no copy
        self.parts.append(view)
        self.sizes.append(view.nbytes)
        return len(self.parts) - 1

    def writer(self) -> _CaptureWriter:
        return _CaptureWriter(self)

    def mark(self) -> int:
        return len(self.parts)

    def discard(self, mark: int) -> None:
        del self.parts[mark:], self.sizes[mark:]


class _CaptureWriter(io.BytesIO):
    def __init__(self, sink: _CaptureSink) -> None:
        super().__init__()
        self._sink = sink
        self.blob_id = -1

    def close(self) -> None:
        if not self.closed:
            self.blob_id = self._sink.put(self.getvalue())
        super().close()

    def abort(self) -> None:
        super().close()


class _InlineSource:
    """A BlobSource over bytes kept in the call row."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)

    @property
    def hash(self) -> str:
        return xxhash.xxh3_128_hexdigest(self._data)

    def read(self) -> bytearray:
        return bytearray(self._data)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if len(view) != self.size:
            raise ValueError(f"inline result needs a buffer of exactly {self.size} bytes, got {len(view)}")
        view[:] = self._data
        return self.size


@dataclass(frozen=True)
class _Deps:
    """The heavier modules activities use, imported on first use (not by `import durable_nb`)."""

    fingerprint: Callable[[object], str]
    encode_value: Callable[..., Encoded]
    decode_value: Callable[..., Any]
    trust: Any
    safe: dict[str, bool]


@functools.cache
def deps() -> _Deps:
    from .. import trust
    from ..codecs import CODECS, decode_value, encode_value
    from ..fingerprint import fingerprint

    return _Deps(fingerprint, encode_value, decode_value, trust, {c.name: c.safe for c in CODECS})


@dataclass
class _Result:
    encoded: Encoded
    parts: list[memoryview]
    safe: bool
    meta_json: str

    def part_hashes(self, inline: bool) -> list[str]:
        """The hashes the signature covers: what `_InlineSource.hash` or the parts' blobs will report."""
        if inline:
            return [xxhash.xxh3_128_hexdigest(self.parts[0])]
        from .blobs import content_hash

        return [content_hash(p) for p in self.parts]


def encode_result(function: str, value: Any) -> _Result:
    lib = deps()
    sink = _CaptureSink()
    try:
        encoded = lib.encode_value(value, sink)
    except EncodeError as exc:
        raise EncodeError(f"activity {function}: its result cannot be recorded ({exc}) The call ran but was "
                          "recorded as failed; return plain data, an array or a DataFrame instead, or "
                          "convert the result before returning it.") from exc
    return _Result(encoded, sink.parts, lib.safe.get(encoded.codec, False), json.dumps(encoded.meta))


# ---------------------------------------------------------------------------------------------- calls

@dataclass(eq=False)
class _Failure:
    n: int
    state: str
    started_at: float
    finished_at: float
    delay: float | None
    error_type: str
    message: str
    traceback: str


@dataclass(eq=False)
class Call:
    uid: str
    function: str
    key: str
    occurrence: int
    kind: str
    execution_id: int | None
    started_at: float
    attempt: int = 1
    attempt_started_at: float = 0.0
    state: str = "running"
    finished_at: float | None = None
    result: _Result | None = None
    failures: list[_Failure] = field(default_factory=list)  # append-only
    signature: str | None = None

    def next_attempt(self) -> None:
        self.attempt += 1
        self.attempt_started_at = time.time()


@dataclass
class _Row:
    """A recorded call in the replay index."""

    id: int | None  # None: journaled by this process, not yet in the SQLite log
    codec: str
    codec_version: int
    meta: str
    inline: bytes | None  # None: no inline part, or one too large for the index (then `inline_stored`)
    inline_stored: bool
    parts: int
    signature: str | None
    parsed_meta: dict[str, Any] | None = None  # decoders only read it


MISS = object()

# Columns of one activity_call upsert, in the order of `Recorder._params` (and of a journal line).
_COLUMNS = ("uid", "run_id", "execution_id", "function", "key", "occurrence", "kind", "started_at", "state",
            "finished_at", "attempts", "attempt_started_at", "codec", "codec_version", "type", "meta", "size",
            "inline", "parts", "signature")
_INLINE_AT = _COLUMNS.index("inline")
_UPSERT_MANY = (f"INSERT INTO activity_call ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
                "ON CONFLICT(uid) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[8:]))
_UPSERT = _UPSERT_MANY + " RETURNING id"
_FAILURE_ROW = ("INSERT OR IGNORE INTO attempt (call_id, n, state, started_at, finished_at, delay, "
                "error_type, error_message, traceback) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


def failure(call: Call, exc: BaseException, state: str) -> _Failure:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return _Failure(call.attempt, state, call.attempt_started_at, time.time(), None,
                    f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
                    str(exc), tb)


class _Journal:
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


def _journal_line(params: tuple[Any, ...], failures: list[_Failure]) -> bytes:
    row = list(params)
    if row[_INLINE_AT] is not None:
        row[_INLINE_AT] = base64.b64encode(row[_INLINE_AT]).decode()
    return (_JOURNAL_JSON.encode([row, [astuple(f) for f in failures]]) + "\n").encode()


def _parse_line(line: bytes) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]] | None:
    try:
        row, failures = json.loads(line)
    except ValueError:
        return None  # a torn last line (power loss during the append): that call never returned
    if row[_INLINE_AT] is not None:
        row[_INLINE_AT] = base64.b64decode(row[_INLINE_AT])
    return tuple(row), [tuple(f) for f in failures]


class Recorder:
    """Writes and finds the calls of one log through its own connection (so a cell runner's transaction on
    the log's main connection never meets ours)."""

    def __init__(self, log: DurableLog) -> None:
        if log.readonly:
            raise LogNotWritableError(f"activities record their calls, but durable log {log.path} is open "
                                      "read-only. Open it writable with durable_nb.open_log(PATH).")
        self.path = log.path
        self.run_id = log.run_id
        self.from_scratch = log.from_scratch
        self.conn = connect(log.path, durability=log.durability)
        run_uuid = self.conn.execute("SELECT uuid FROM run WHERE id = ?", (self.run_id,)).fetchone()[0]
        self.journal = _Journal(log.path, run_uuid, fsync=log.durability == "full")
        self.uids = itertools.count(1)
        self.uid_prefix = f"{run_uuid}:"
        self.wlock = threading.Lock()  # the SQLite connection
        self.jlock = threading.Lock()  # the journal and the queues
        self.journaled: list[tuple[Call, tuple[Any, ...]]] = []
        self.pending: dict[int, Call] = {}
        self.index: dict[str, tuple[int, dict[tuple[str, int], _Row]]] = {}
        self._blobs: BlobStore | None = None
        self._recover(log)
        _LIVE.add(self)

    @property
    def blobs(self) -> BlobStore:
        if self._blobs is None:
            from .blobs import BlobStore

            self._blobs = BlobStore(self.conn)
        return self._blobs

    def _recover(self, log: DurableLog) -> None:
        with self.wlock:
            _recover(self.conn, self.path, set(log.dead_run_ids()))

    # -- replay

    def lookup(self, function: str, key: str, occurrence: int, generation: int) -> _Row | None:
        """The recording of a call, if any; `generation` is the caller's call scope, and a function's index is
        loaded once per scope."""
        entry = self.index.get(function)
        if entry is None or entry[0] != generation:
            entry = self._load_index(function, generation)
        return entry[1].get((key, occurrence))

    def _load_index(self, function: str, generation: int) -> tuple[int, dict[tuple[str, int], _Row]]:
        with self.wlock:
            rows = self.conn.execute(
                "SELECT key, occurrence, id, codec, codec_version, meta, "
                f"CASE WHEN length(inline) <= {INDEX_INLINE_MAX} THEN inline END, inline IS NOT NULL, parts, "
                "signature FROM activity_call WHERE function = ? AND state = 'recorded' AND (? OR run_id = ?) "
                "ORDER BY id", (function, not self.from_scratch, self.run_id)).fetchall()
        table = {(r[0], r[1]): _Row(*r[2:]) for r in rows}
        with self.jlock:  # journaled, not yet imported
            for call, params in self.journaled:
                if call.function == function:
                    self._remember(call, params[_INLINE_AT], None, table)
        entry = (generation, table)
        self.index[function] = entry
        return entry

    def load(self, function: str, row: _Row) -> Any:
        """The recorded result of `row`, or MISS when it cannot be loaded here (the call then runs again)."""
        if row.parsed_meta is None:
            row.parsed_meta = json.loads(row.meta)
        try:
            if row.parts and row.inline is None:
                with self.wlock:
                    return self._decode(row, row.parsed_meta, self._stored_sources(row))
            sources = [_InlineSource(row.inline)] if row.inline is not None else []
            return self._decode(row, row.parsed_meta, sources)
        except DecodeError as exc:
            warnings.warn(f"activity {function}: the recorded result of call {row.id} cannot be loaded "
                          f"here ({exc}); calling the function again.", stacklevel=4)
            return MISS

    @staticmethod
    def _decode(row: _Row, meta: dict[str, Any], sources: Sequence[Any]) -> Any:
        lib = deps()
        allowed = lib.safe.get(row.codec, False) or lib.trust.verify(
            lib.trust.payload(row.codec, row.codec_version, meta, [s.hash for s in sources]), row.signature)
        return lib.decode_value(row.codec, row.codec_version, meta, sources, allow_pickle=allowed)

    def _stored_sources(self, row: _Row) -> Sequence[BlobSource | _InlineSource]:
        if row.inline_stored:
            (data,) = self.conn.execute("SELECT inline FROM activity_call WHERE id = ?", (row.id,)).fetchone()
            return [_InlineSource(data)]
        ids = self.conn.execute("SELECT blob_id FROM activity_blob WHERE call_id = ? ORDER BY seq",
                                (row.id,)).fetchall()
        if len(ids) != row.parts:
            raise DecodeError(f"call {row.id} lists {row.parts} blobs but {len(ids)} are in the log")
        return [self.blobs.source(i) for (i,) in ids]

    # -- record

    def begin(self, function: str, key: str, occurrence: int, kind: str, execution_id: int | None) -> Call:
        now = time.time()
        call = Call(f"{self.uid_prefix}{next(self.uids)}", function, key, occurrence, kind,
                    execution_id, now, attempt_started_at=now)
        self.mark_pending(call)
        return call

    def mark_pending(self, call: Call) -> None:
        # No lock: a call registered while flush() swaps the dict may miss being written as `running`
        # (only its crash visibility); locking here made the caller wait for the flusher's GIL slices.
        self.pending[id(call)] = call
        _FLUSHER.wake(self)

    def finish(self, call: Call) -> None:
        """Make the call's final state durable: small results through the journal, big ones straight into the
        log (their bytes dwarf a commit). Returns once durable."""
        res = call.result
        if res is not None and (len(res.parts) > 1 or (res.parts and res.parts[0].nbytes > INLINE_MAX)):
            with self.wlock, write_transaction(self.conn, self.path):
                blob_ids = [self.blobs.sink().put(p) for p in res.parts]
                call_id = self._upsert(self._params(call), [astuple(f) for f in call.failures])
                self.conn.executemany("INSERT INTO activity_blob (call_id, seq, blob_id) VALUES (?, ?, ?)",
                                      [(call_id, i, b) for i, b in enumerate(blob_ids)])
            self.pending.pop(id(call), None)
            self._remember(call, None, call_id)
            return
        params = self._params(call)
        line = _journal_line(params, call.failures)
        with self.jlock:
            try:
                self.journal.append(line)
            except OSError as exc:
                journal_error: OSError | None = exc
            else:
                journal_error = None
                self.journaled.append((call, params))
                self.pending.pop(id(call), None)
        if journal_error is not None:
            self._commit_directly(call, params, journal_error)
            return
        _FLUSHER.wake(self)
        self._remember(call, params[_INLINE_AT], None)

    def _commit_directly(self, call: Call, params: tuple[Any, ...], journal_error: OSError) -> None:
        """The journal cannot be written (read-only folder, permissions, full disk): the call goes straight
        into the log, one transaction each, as durable as through the journal. When the log cannot take it
        either, the call stays unrecorded (it returns its value and runs again on replay) and says so."""
        folder = self.journal.folder
        cause = f"{journal_error.strerror or journal_error}"
        try:
            with self.wlock, write_transaction(self.conn, self.path):
                call_id = self._upsert(params, [astuple(f) for f in call.failures])
        except (LogError, sqlite3.Error) as exc:
            self.pending.pop(id(call), None)
            _say_once(f"durable: activity {call.function}: call not recorded: the activity journal {folder} "
                      f"cannot be written ({cause}) and neither can the log ({exc}). The call returned its "
                      "value; it runs again on replay. Free space or fix the permissions of "
                      f"{folder.parent} to record calls again.")
            return
        self.pending.pop(id(call), None)
        self._remember(call, params[_INLINE_AT], call_id)
        _say_once(f"durable: the activity journal {folder} cannot be written ({cause}): activity calls are "
                  f"committed to the log {self.path} one by one instead (slower; nothing is lost). Make "
                  f"{folder} writable (or free space) to get the fast journal back.")

    def flush(self) -> None:
        """Move journaled calls, and calls running for a while, into the log (one transaction)."""
        with self.wlock:
            with self.jlock:
                batch, self.journaled = self.journaled, []
                fd, done = self.journal.rotate() if batch else (None, None)
                pending, self.pending = self.pending, {}
                given_up, self.journal.given_up = self.journal.given_up, []
            if fd is not None:
                os.close(fd)
            running = [c for c in list(pending.values()) if c.state == "running"]
            if batch or running:
                with write_transaction(self.conn, self.path):
                    # Most calls have no failed attempts: one executemany for them (the flusher shares the GIL
                    # with the caller's loop, so its per-row Python work is what slows the caller down).
                    self.conn.executemany(_UPSERT_MANY, [p for c, p in batch if not c.failures])
                    for call, params in batch:
                        if call.failures:
                            self._upsert(params, [astuple(f) for f in call.failures])
                    for call in running:
                        self._upsert(self._params(call), [astuple(f) for f in call.failures])
        for path in ([done] if done is not None else []) + given_up:
            with contextlib.suppress(OSError):  # left for the next process to import (by uid: no duplicate)
                path.unlink(missing_ok=True)

    def _params(self, call: Call) -> tuple[Any, ...]:
        res = call.result
        enc = res.encoded if res is not None else None
        inline = None
        if res is not None and enc is not None:
            if len(res.parts) == 1 and res.parts[0].nbytes <= INLINE_MAX:
                inline = res.parts[0].tobytes()
            if not res.safe and call.signature is None:
                trust = deps().trust
                payload = trust.payload(enc.codec, enc.version, enc.meta, res.part_hashes(inline is not None))
                call.signature = trust.sign(payload)
        return (call.uid, self.run_id, call.execution_id, call.function, call.key, call.occurrence, call.kind,
                call.started_at, call.state, call.finished_at, call.attempt, call.attempt_started_at,
                enc.codec if enc else None, enc.version if enc else None, enc.type_name if enc else None,
                res.meta_json if res else None, enc.size if enc else None, inline,
                len(res.parts) if res else 0, call.signature)

    def _upsert(self, params: tuple[Any, ...], failures: list[tuple[Any, ...]]) -> int:
        return _upsert(self.conn, params, failures)

    def _remember(self, call: Call, inline: bytes | None, call_id: int | None,
                  table: dict[tuple[str, int], _Row] | None = None) -> None:
        """Add a just-recorded call to the replay index (a later cell calling it again replays it)."""
        if table is None:
            entry = self.index.get(call.function)
            table = entry[1] if entry is not None else None
        res = call.result
        if call.state != "recorded" or table is None or res is None:
            return
        enc = res.encoded
        table.setdefault((call.key, call.occurrence), _Row(
            call_id, enc.codec, enc.version, res.meta_json, inline, False, len(res.parts),
            call.signature))


_said: set[str] = set()


def _say_once(text: str) -> None:
    """A problem the user should know about, printed once per process (a loop of calls would repeat it)."""
    if text not in _said:
        _said.add(text)
        print(text, file=sys.stderr, flush=True)


def _upsert(conn: sqlite3.Connection, params: tuple[Any, ...], failures: list[tuple[Any, ...]]) -> int:
    (call_id,) = conn.execute(_UPSERT, params).fetchone()
    if failures:
        conn.executemany(_FAILURE_ROW, [(call_id, *f) for f in failures])
    return int(call_id)


def _recover(conn: sqlite3.Connection, path: Path, dead: set[int]) -> int:
    """Import the journals of dead runs, then mark their calls still `running` as `crashed`; returns how many
    journal lines were imported. Runs recording in this process are never touched."""
    uuids = dict(conn.execute("SELECT uuid, id FROM run").fetchall())
    live = {r.journal.prefix for r in list(_LIVE)}
    folder = journal_folder(path)
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    orphans = [f for f in files if uuids.get(f.name.split("-")[0]) in dead
               and f.name.split("-")[0] + "-" not in live]
    imported = 0
    with write_transaction(conn, path):
        for file in orphans:
            for line in file.read_bytes().splitlines():
                parsed = _parse_line(line)
                if parsed is not None:
                    _upsert(conn, *parsed)
                    imported += 1
        running = {r[0] for r in conn.execute("SELECT DISTINCT run_id FROM activity_call WHERE state = 'running'")}
        stale = sorted(running & dead)
        if stale:
            conn.execute(f"UPDATE activity_call SET state = 'crashed' WHERE state = 'running' AND "
                         f"run_id IN ({','.join('?' * len(stale))})", stale)
    for file in orphans:
        file.unlink(missing_ok=True)
    return imported


def recover(log: DurableLog) -> int:
    """For writers that open a log (the cell runner, the CLI): import the activity journals that dead processes
    left beside it, and mark their unfinished calls `crashed`. Returns the number of calls imported."""
    if log.readonly:
        return 0
    return _recover(log.conn, log.path, set(log.dead_run_ids()))


class _Flusher:
    """One daemon thread for the process: moves journaled calls into their logs, and writes calls that have
    been running for FLUSH_DELAY as `running` (so a crash leaves a visible `crashed` row)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.dirty: set[Recorder] = set()
        self.thread: threading.Thread | None = None

    def wake(self, recorder: Recorder) -> None:
        if recorder in self.dirty:
            return
        with self.cond:
            self.dirty.add(recorder)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="durable_nb activity flusher",
                                               daemon=True)
                self.thread.start()
            self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.dirty:
                    self.cond.wait()
            time.sleep(FLUSH_DELAY)
            with self.cond:
                recorders, self.dirty = self.dirty, set()
            for recorder in recorders:
                with contextlib.suppress(Exception):  # the journal keeps what could not be moved yet
                    recorder.flush()


_FLUSHER = _Flusher()
_LIVE: weakref.WeakSet[Recorder] = weakref.WeakSet()
_RECORDERS: weakref.WeakKeyDictionary[DurableLog, Recorder] = weakref.WeakKeyDictionary()
_recorders_lock = threading.Lock()


def flush() -> None:
    """Move every journaled call of this process into its log now (also done at exit and every 20 ms)."""
    for recorder in list(_LIVE):
        recorder.flush()


def flush_log(log: DurableLog) -> None:
    """Move the journaled calls of `log` into it now, if activities ran on it in this process."""
    rec = _RECORDERS.get(log)
    if rec is not None:
        rec.flush()


def _flush_at_exit() -> None:
    for recorder in list(_LIVE):
        with contextlib.suppress(Exception):  # what stays in the journal is imported by the next process
            recorder.flush()


atexit.register(_flush_at_exit)


_last: tuple[DurableLog | None, Recorder | None] = (None, None)


def recorder(on_create: Callable[[], object]) -> Recorder:
    """The recorder of the current log; `on_create` runs before a log gets its recorder."""
    global _last
    log = session.current_log()
    if _last[0] is log and _last[1] is not None:
        return _last[1]
    rec = _RECORDERS.get(log)
    if rec is None:
        with _recorders_lock:
            rec = _RECORDERS.get(log)
            if rec is None:
                on_create()
                rec = _RECORDERS[log] = Recorder(log)
    _last = (log, rec)
    return rec
