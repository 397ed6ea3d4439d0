"""Activities: function calls recorded one by one, so a long loop resumes where it died.

```python
@durable_nb.activity(retries=5, timeout=30, retry_on=(TimeoutError, ConnectionError))
def ask_model(prompt: str) -> str: ...
```

**Key.** A call's key is the function's identity (module + qualname), the fingerprint of the function (its
code and the globals it uses), the fingerprint of its arguments (bound to the signature, defaults applied;
or of `key(*args, **kwargs)` when `key=` is given) and the `version=` tag. A recorded call with the same key
returns its recorded result without calling the function.

**Occurrences and scope.** The n-th call with a key replays the n-th recording of that key, so a loop that
asks the same question twice gets both answers back in order. Recordings are looked up in the whole log (so a
new process after a crash finds them); the occurrence counters restart at every cell execution (plain or
`%%durable`; the IPython `pre_run_cell` event, and `execution_scope()` from the cell runner) and at process
start for scripts. Consequently, a later cell calling `ask_model("hi")` replays the first recording of that
key; pass a different `key=` / `version=` for a fresh one. A different call order on replay is not an error:
calls without a recording simply run. The function's fingerprint is taken once per scope (per cell execution,
per script run): a global it reads that changes in the middle of a loop is not noticed.

**Durability.** A call's result is durable before it is returned to the caller. A small result (one encoded
buffer of at most INLINE_MAX bytes; most are) is appended as one line to this run's journal,
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

**Retries and timeouts.** See `activity()`. Every failed attempt is a row of the `attempt` table (error type,
message, traceback, the wait that followed); the successful attempt is the call row itself, and the `attempts`
view shows both. After the last attempt the original error propagates unchanged. Timeouts of `async def`
activities cancel the coroutine (asyncio.wait_for). A sync activity with `timeout=` runs each attempt in a
daemon thread: when it overruns, the caller gets TimeoutError and the thread is abandoned — it may still
finish and perform its side effects, and its result is discarded. Use timeouts on sync functions only when
that is harmless (idempotent calls), and prefer the client library's own timeout.

**Steps.** `step(name, *key_parts)` checkpoints a value computed in a `with` body; see `step`.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import functools
import inspect
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

import xxhash

from . import session
from .errors import DecodeError, EncodeError, LogNotWritableError, Unfingerprintable
from .log.connect import connect, write_transaction
from .retry import Permanent, RetryOn, RetryPolicy

if TYPE_CHECKING:
    from .codecs import Encoded
    from .log.blobs import BlobSource, BlobStore
    from .log.store import DurableLog

__all__ = ["Permanent", "Step", "activity", "current_execution_id", "execution_scope", "flush", "recover",
           "reset_scope", "step"]

F = TypeVar("F", bound=Callable[..., Any])

# A call is written as `running` once it has run this long (so a crash leaves a visible `crashed` row).
FLUSH_DELAY = 0.02
# Results whose encoding is one buffer of at most this many bytes live in the call row; larger ones are blobs.
INLINE_MAX = 64 * 1024
# The replay index keeps inline results up to this size in memory; larger ones are read on a hit.
INDEX_INLINE_MAX = 4096


# ---------------------------------------------------------------------------------------------- scope

class _Scope:
    """Occurrence counters and the cell execution that calls belong to (one per process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation = 0
        self.execution_id: int | None = None
        self.counters: dict[tuple[str, str], int] = {}

    def reset(self, execution_id: int | None) -> None:
        with self.lock:
            self.generation += 1
            self.counters = {}
            self.execution_id = execution_id

    def occurrence(self, function: str, key: str) -> int:
        with self.lock:
            n = self.counters.get((function, key), 0)
            self.counters[(function, key)] = n + 1
            return n


_SCOPE = _Scope()


def reset_scope(execution_id: int | None = None) -> None:
    """Restart occurrence counting (a new cell execution begins); link later calls to `execution_id`."""
    _SCOPE.reset(execution_id)


@contextlib.contextmanager
def execution_scope(execution_id: int | None) -> Iterator[None]:
    """For the cell runner: around a `%%durable` cell's user code, so its calls are linked to the `execution`
    row and occurrences count from the start of the cell."""
    _SCOPE.reset(execution_id)
    try:
        yield
    finally:
        _SCOPE.execution_id = None


def current_execution_id() -> int | None:
    return _SCOPE.execution_id


_hooked_shells: weakref.WeakSet[Any] = weakref.WeakSet()


def _hook_ipython() -> None:
    """In IPython, restart occurrence counting at every cell (so re-running a cell replays from its start)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or shell in _hooked_shells:
        return
    shell.events.register("pre_run_cell", _on_pre_run_cell)
    _hooked_shells.add(shell)


def _on_pre_run_cell(info: object = None) -> None:
    _SCOPE.reset(None)


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
def _deps() -> _Deps:
    from . import trust
    from .codecs import CODECS, decode_value, encode_value
    from .fingerprint import fingerprint

    return _Deps(fingerprint, encode_value, decode_value, trust, {c.name: c.safe for c in CODECS})


@dataclass
class _Result:
    encoded: Encoded
    parts: list[memoryview]
    safe: bool
    meta_json: str

    def part_hashes(self) -> list[str]:
        return [xxhash.xxh3_128_hexdigest(p) for p in self.parts]


def _encode_result(function: str, value: Any) -> _Result:
    deps = _deps()
    sink = _CaptureSink()
    try:
        encoded = deps.encode_value(value, sink)
    except EncodeError as exc:
        raise EncodeError(f"activity {function}: its result cannot be recorded ({exc}) The call ran but was "
                          "recorded as failed; return plain data, an array or a DataFrame instead, or "
                          "convert the result before returning it.") from exc
    return _Result(encoded, sink.parts, deps.safe.get(encoded.codec, False), json.dumps(encoded.meta))


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
class _Call:
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


_MISS = object()

# Columns of one activity_call upsert, in the order of `_Recorder._params` (and of a journal line).
_COLUMNS = ("uid", "run_id", "execution_id", "function", "key", "occurrence", "kind", "started_at", "state",
            "finished_at", "attempts", "attempt_started_at", "codec", "codec_version", "type", "meta", "size",
            "inline", "parts", "signature")
_INLINE_AT = _COLUMNS.index("inline")
_UPSERT_MANY = (f"INSERT INTO activity_call ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
                "ON CONFLICT(uid) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[8:]))
_UPSERT = _UPSERT_MANY + " RETURNING id"
_FAILURE_ROW = ("INSERT OR IGNORE INTO attempt (call_id, n, state, started_at, finished_at, delay, "
                "error_type, error_message, traceback) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _failure(call: _Call, exc: BaseException, state: str) -> _Failure:
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

    def append(self, line: bytes) -> None:
        if self.fd is None:
            self.folder.mkdir(exist_ok=True)
            self.seq += 1
            self.path = self.folder / f"{self.prefix}{self.seq}.jsonl"
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.write(self.fd, line)
        if self.fsync:
            os.fsync(self.fd)

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


class _Recorder:
    """Writes and finds the calls of one log through its own connection (so a cell runner's transaction on
    the log's main connection never meets ours)."""

    def __init__(self, log: DurableLog) -> None:
        if log.readonly:
            raise LogNotWritableError(f"activities record their calls, but durable log {log.path} is open "
                                      "read-only. Open it writable with durable_nb.open_log(PATH).")
        self.path = log.path
        self.run_id = log.run_id
        self.conn = connect(log.path, durability=log.durability)
        run_uuid = self.conn.execute("SELECT uuid FROM run WHERE id = ?", (self.run_id,)).fetchone()[0]
        self.journal = _Journal(log.path, run_uuid, fsync=log.durability == "full")
        self.uids = itertools.count(1)
        self.uid_prefix = f"{run_uuid}:"
        self.wlock = threading.Lock()  # the SQLite connection
        self.jlock = threading.Lock()  # the journal and the queues
        self.journaled: list[tuple[_Call, tuple[Any, ...]]] = []
        self.pending: dict[int, _Call] = {}
        self.index: dict[str, tuple[int, dict[tuple[str, int], _Row]]] = {}
        self._blobs: BlobStore | None = None
        self._recover(log)
        _LIVE.add(self)

    @property
    def blobs(self) -> BlobStore:
        if self._blobs is None:
            from .log.blobs import BlobStore

            self._blobs = BlobStore(self.conn)
        return self._blobs

    def _recover(self, log: DurableLog) -> None:
        with self.wlock:
            _recover(self.conn, self.path, set(log.dead_run_ids()))

    # -- replay

    def lookup(self, function: str, key: str, occurrence: int) -> _Row | None:
        entry = self.index.get(function)
        if entry is None or entry[0] != _SCOPE.generation:
            entry = self._load_index(function)
        return entry[1].get((key, occurrence))

    def _load_index(self, function: str) -> tuple[int, dict[tuple[str, int], _Row]]:
        generation = _SCOPE.generation
        with self.wlock:
            rows = self.conn.execute(
                "SELECT key, occurrence, id, codec, codec_version, meta, "
                f"CASE WHEN length(inline) <= {INDEX_INLINE_MAX} THEN inline END, inline IS NOT NULL, parts, "
                "signature FROM activity_call WHERE function = ? AND state = 'recorded' ORDER BY id",
                (function,)).fetchall()
        table = {(r[0], r[1]): _Row(*r[2:]) for r in rows}
        with self.jlock:  # journaled, not yet imported
            for call, params in self.journaled:
                if call.function == function:
                    self._remember(call, params[_INLINE_AT], None, table)
        entry = (generation, table)
        self.index[function] = entry
        return entry

    def load(self, function: str, row: _Row) -> Any:
        """The recorded result of `row`, or _MISS when it cannot be loaded here (the call then runs again)."""
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
            return _MISS

    @staticmethod
    def _decode(row: _Row, meta: dict[str, Any], sources: Sequence[Any]) -> Any:
        deps = _deps()
        allowed = deps.safe.get(row.codec, False) or deps.trust.verify(
            deps.trust.payload(row.codec, row.codec_version, meta, [s.hash for s in sources]), row.signature)
        return deps.decode_value(row.codec, row.codec_version, meta, sources, allow_pickle=allowed)

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

    def begin(self, function: str, key: str, occurrence: int, kind: str) -> _Call:
        now = time.time()
        call = _Call(f"{self.uid_prefix}{next(self.uids)}", function, key, occurrence, kind,
                     _SCOPE.execution_id, now, attempt_started_at=now)
        self.mark_pending(call)
        return call

    def mark_pending(self, call: _Call) -> None:
        # No lock: a call registered while flush() swaps the dict may miss being written as `running`
        # (only its crash visibility); locking here made the caller wait for the flusher's GIL slices.
        self.pending[id(call)] = call
        _FLUSHER.wake(self)

    def finish(self, call: _Call) -> None:
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
            self.journal.append(line)
            self.journaled.append((call, params))
            self.pending.pop(id(call), None)
        _FLUSHER.wake(self)
        self._remember(call, params[_INLINE_AT], None)

    def flush(self) -> None:
        """Move journaled calls, and calls running for a while, into the log (one transaction)."""
        with self.wlock:
            with self.jlock:
                batch, self.journaled = self.journaled, []
                fd, done = self.journal.rotate() if batch else (None, None)
                pending, self.pending = self.pending, {}
            if fd is not None:
                os.close(fd)
            running = [c for c in list(pending.values()) if c.state == "running"]
            if not batch and not running:
                return
            with write_transaction(self.conn, self.path):
                # Most calls have no failed attempts: one executemany for them (the flusher shares the GIL
                # with the caller's loop, so its per-row Python work is what slows the caller down).
                self.conn.executemany(_UPSERT_MANY, [p for c, p in batch if not c.failures])
                for call, params in batch:
                    if call.failures:
                        self._upsert(params, [astuple(f) for f in call.failures])
                for call in running:
                    self._upsert(self._params(call), [astuple(f) for f in call.failures])
        if done is not None:
            done.unlink(missing_ok=True)

    def _params(self, call: _Call) -> tuple[Any, ...]:
        res = call.result
        enc = res.encoded if res is not None else None
        inline = None
        if res is not None and enc is not None:
            if len(res.parts) == 1 and res.parts[0].nbytes <= INLINE_MAX:
                inline = res.parts[0].tobytes()
            if not res.safe and call.signature is None:
                trust = _deps().trust
                payload = trust.payload(enc.codec, enc.version, enc.meta, res.part_hashes())
                call.signature = trust.sign(payload)
        return (call.uid, self.run_id, call.execution_id, call.function, call.key, call.occurrence, call.kind,
                call.started_at, call.state, call.finished_at, call.attempt, call.attempt_started_at,
                enc.codec if enc else None, enc.version if enc else None, enc.type_name if enc else None,
                res.meta_json if res else None, enc.size if enc else None, inline,
                len(res.parts) if res else 0, call.signature)

    def _upsert(self, params: tuple[Any, ...], failures: list[tuple[Any, ...]]) -> int:
        return _upsert(self.conn, params, failures)

    def _remember(self, call: _Call, inline: bytes | None, call_id: int | None,
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
        self.dirty: set[_Recorder] = set()
        self.thread: threading.Thread | None = None

    def wake(self, recorder: _Recorder) -> None:
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
_LIVE: weakref.WeakSet[_Recorder] = weakref.WeakSet()
_RECORDERS: weakref.WeakKeyDictionary[DurableLog, _Recorder] = weakref.WeakKeyDictionary()
_recorders_lock = threading.Lock()


def flush() -> None:
    """Move every journaled call of this process into its log now (also done at exit and every 20 ms)."""
    for recorder in list(_LIVE):
        recorder.flush()


def _flush_at_exit() -> None:
    for recorder in list(_LIVE):
        with contextlib.suppress(Exception):  # what stays in the journal is imported by the next process
            recorder.flush()


atexit.register(_flush_at_exit)


_last: tuple[DurableLog | None, _Recorder | None] = (None, None)


def _recorder() -> _Recorder:
    global _last
    log = session.current_log()
    if _last[0] is log and _last[1] is not None:
        return _last[1]
    rec = _RECORDERS.get(log)
    if rec is None:
        with _recorders_lock:
            rec = _RECORDERS.get(log)
            if rec is None:
                _hook_ipython()
                rec = _RECORDERS[log] = _Recorder(log)
    _last = (log, rec)
    return rec


# ------------------------------------------------------------------------------------------ activities

class _Spec:
    """What a decorated function needs per call: its identity, signature shortcuts, retry policy."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any],
                 sleep: Callable[[float], Any] | None) -> None:
        self.fn = fn
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        self.policy = RetryPolicy(**{k: options[k] for k in _POLICY_FIELDS})
        self.timeout: float | None = options["timeout"]
        self.key_fn: Callable[..., Any] | None = options["key"]
        self.version = "" if options["version"] is None else str(options["version"])
        self.sleep = sleep
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self.simple = all(p.kind in positional for p in params)
        self.defaults = tuple(p.default for p in params)
        self.required = sum(p.default is inspect.Parameter.empty for p in params)
        self._fp: tuple[int, str] = (-1, "")

    def function_fingerprint(self) -> str:
        generation = _SCOPE.generation
        if self._fp[0] != generation:
            self._fp = (generation, _function_fingerprint(self.fn))
        return self._fp[1]

    def call_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        material = self._key_material(args, kwargs)
        try:
            args_fp = _deps().fingerprint(material)
        except Unfingerprintable as exc:
            raise self._argument_error(args, kwargs, exc) from exc
        return xxhash.xxh3_128_hexdigest(f"{self.function_fingerprint()}\0{args_fp}\0{self.version}".encode())

    def _key_material(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.key_fn is not None:
            return ("key=", self.key_fn(*args, **kwargs))
        if self.simple and not kwargs and self.required <= len(args) <= len(self.defaults):
            return args + self.defaults[len(args):]
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if self.simple:
            return tuple(bound.arguments.values())
        return tuple(bound.arguments.items())

    def _argument_error(self, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception) -> EncodeError:
        fingerprint = _deps().fingerprint
        if self.key_fn is not None:
            return EncodeError(f"activity {self.name}: the value returned by its key= function cannot be "
                               f"fingerprinted ({exc}). Return a string, number or tuple of them.")
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        culprit = "?"
        for name, value in bound.arguments.items():
            try:
                fingerprint(value)
            except Unfingerprintable:
                culprit = name
                break
        return EncodeError(f"activity {self.name}: argument {culprit!r} cannot be fingerprinted for the "
                           f"call's key ({exc}). Pass key=lambda ...: <a fingerprintable value> to the "
                           "decorator to key calls by something else.")

    def invoke_sync(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.timeout is None:
            return self.fn(*args, **kwargs)
        return _run_in_thread(self.name, self.fn, args, kwargs, self.timeout)

    async def invoke_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.timeout is None:
            return await self.fn(*args, **kwargs)
        try:
            return await asyncio.wait_for(self.fn(*args, **kwargs), self.timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"activity {self.name} did not finish within {self.timeout} s") from None


def _function_fingerprint(fn: Any) -> str:
    """The function's code, defaults, closure and the globals it reads. A value that cannot be fingerprinted
    (an API client, a lock, a connection: common in activities) counts by its type only."""
    fingerprint = _deps().fingerprint
    try:
        return fingerprint(fn)
    except Unfingerprintable:
        pass

    def value(v: object) -> object:
        try:
            return fingerprint(v)
        except Unfingerprintable:
            return ("unfingerprintable", type(v).__module__, type(v).__qualname__)

    from .fingerprint import referenced_globals

    cells = [c.cell_contents for c in fn.__closure__ or () if c.cell_contents is not None]
    names = sorted(referenced_globals(fn))
    return fingerprint((fn.__code__, value(fn.__defaults__), value(fn.__kwdefaults__), [value(c) for c in cells],
                        [(n, value(fn.__globals__.get(n))) for n in names]))


def _run_in_thread(name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                   timeout: float) -> Any:
    import contextvars

    box: dict[str, Any] = {}
    done = threading.Event()
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = ctx.run(fn, *args, **kwargs)
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=f"durable_nb activity {name}", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"activity {name} did not finish within {timeout} s; its thread was abandoned "
                           "(it may still finish and perform its side effects; its result is discarded)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _attempt_failed(rec: _Recorder, spec: _Spec, call: _Call, exc: BaseException) -> float | None:
    """Record a failed attempt; return the wait before the next one, or None when the call has failed."""
    state = "timed-out" if isinstance(exc, TimeoutError) and spec.timeout is not None else "failed"
    failure = _failure(call, exc, state)
    call.failures.append(failure)
    if spec.policy.should_retry(exc, call.attempt):
        failure.delay = spec.policy.wait_before(call.attempt)
        rec.mark_pending(call)
        return failure.delay
    call.state, call.finished_at = "failed", failure.finished_at
    rec.finish(call)
    return None


def _succeeded(rec: _Recorder, spec_name: str, call: _Call, value: Any) -> None:
    try:
        call.result = _encode_result(spec_name, value)
    except EncodeError as exc:
        call.failures.append(_failure(call, exc, "failed"))
        call.state, call.finished_at = "failed", time.time()
        rec.finish(call)
        raise
    call.state, call.finished_at = "recorded", time.time()
    rec.finish(call)


def _abandon(rec: _Recorder, call: _Call, exc: BaseException) -> None:
    """An interrupt (KeyboardInterrupt, cancellation) between attempts: the call is failed, not running."""
    if call.state == "running":
        call.failures.append(_failure(call, exc, "failed"))
        call.state, call.finished_at = "failed", time.time()
        rec.finish(call)


def _unwrap(exc: BaseException) -> BaseException:
    return exc.unwrap() if isinstance(exc, Permanent) else exc


def _replay_or_begin(spec: _Spec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[_Recorder, Any]:
    rec = _recorder()
    key = spec.call_key(args, kwargs)
    occurrence = _SCOPE.occurrence(spec.name, key)
    row = rec.lookup(spec.name, key, occurrence)
    if row is not None:
        value = rec.load(spec.name, row)
        if value is not _MISS:
            return rec, value
    return rec, rec.begin(spec.name, key, occurrence, "activity")


_POLICY_FIELDS = ("retries", "delay", "backoff", "max_delay", "jitter", "retry_on")
# The spec of each wrapper lives here, not in the wrapper's closure or attributes, so that fingerprinting a
# wrapper (a cell that calls an activity) sees only the wrapped function and its options, never the locks of
# this module. A wrapper restored from a pickle rebuilds its spec from those.
_SPECS: weakref.WeakKeyDictionary[Callable[..., Any], _Spec] = weakref.WeakKeyDictionary()


def _spec_of(wrapper: Callable[..., Any]) -> _Spec:
    spec = _SPECS.get(wrapper)
    if spec is None:
        fn, options = wrapper.__wrapped__, wrapper.__durable_activity__  # type: ignore[attr-defined]
        spec = _SPECS[wrapper] = _Spec(fn, options, None)
    return spec


def _call_sync(wrapper: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    spec = _spec_of(wrapper)
    rec, call = _replay_or_begin(spec, args, kwargs)
    if not isinstance(call, _Call):
        return call
    sleep = spec.sleep or time.sleep
    error: BaseException | None = None
    try:
        while True:
            try:
                value = spec.invoke_sync(args, kwargs)
            except BaseException as exc:
                wait = _attempt_failed(rec, spec, call, exc)
                if wait is None:
                    error = _unwrap(exc)
                    break
                sleep(wait)
                call.next_attempt()
                continue
            _succeeded(rec, spec.name, call, value)
            return value
    except BaseException as exc:
        _abandon(rec, call, exc)
        raise
    raise error


async def _call_async(wrapper: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    spec = _spec_of(wrapper)
    rec, call = _replay_or_begin(spec, args, kwargs)
    if not isinstance(call, _Call):
        return call
    error: BaseException | None = None
    try:
        while True:
            try:
                value = await spec.invoke_async(args, kwargs)
            except BaseException as exc:
                wait = _attempt_failed(rec, spec, call, exc)
                if wait is None:
                    error = _unwrap(exc)
                    break
                waited = (spec.sleep or asyncio.sleep)(wait)
                if inspect.isawaitable(waited):
                    await waited
                call.next_attempt()
                continue
            _succeeded(rec, spec.name, call, value)
            return value
    except BaseException as exc:
        _abandon(rec, call, exc)
        raise
    raise error


def _wrap(fn: Callable[..., Any], options: dict[str, Any], sleep: Callable[[float], Any] | None) -> Any:
    # The wrapper reaches this module through `sys` (a module: fingerprinted and pickled by name), held in its
    # closure: a cell's key or cloudpickle then sees the wrapped function and its options, not this module's
    # locks, and a replayed cell that rebinds the wrapper's globals to the notebook's keeps it working.
    system = sys
    wrapper: Callable[..., Any]
    if inspect.iscoroutinefunction(fn):
        async def call_activity(*args: Any, **kwargs: Any) -> Any:
            return await system.modules["durable_nb.calls"]._call_async(call_activity, args, kwargs)
        wrapper = call_activity
    else:
        def call_sync_activity(*args: Any, **kwargs: Any) -> Any:
            return system.modules["durable_nb.calls"]._call_sync(call_sync_activity, args, kwargs)
        wrapper = call_sync_activity
    functools.update_wrapper(wrapper, fn)
    wrapper.__durable_activity__ = options  # type: ignore[union-attr]
    _SPECS[wrapper] = _Spec(fn, options, sleep)
    return wrapper


@overload
def activity(fn: F, /) -> F: ...


@overload
def activity(*, retries: int = 0, delay: float = 1.0, backoff: float = 2.0, max_delay: float = 60.0,
             jitter: float = 0.5, timeout: float | None = None, retry_on: RetryOn = Exception,
             key: Callable[..., Any] | None = None, version: str | None = None,
             sleep: Callable[[float], Any] | None = None) -> Callable[[F], F]: ...


def activity(fn: Callable[..., Any] | None = None, /, *, retries: int = 0, delay: float = 1.0,
             backoff: float = 2.0, max_delay: float = 60.0, jitter: float = 0.5, timeout: float | None = None,
             retry_on: RetryOn = Exception, key: Callable[..., Any] | None = None, version: str | None = None,
             sleep: Callable[[float], Any] | None = None) -> Any:
    """Record every call of a function in the current log (durable_nb.open_log, or the default-log rules).

    retries: extra attempts after a failure (0: one attempt). Before retry n the caller waits
        min(max_delay, delay * backoff ** (n - 1)) seconds, of which the fraction `jitter` is random.
    retry_on: an exception class, a tuple of them, or a predicate `exc -> bool`; errors it rejects, and
        `Permanent` errors, are not retried. Interrupts (KeyboardInterrupt, cancellation) never are.
    timeout: seconds per attempt; a timed-out attempt raises TimeoutError (retried if retry_on allows it). For
        sync functions the attempt runs in a thread that is abandoned when it overruns (see the module doc).
    key: a function of the call's arguments whose fingerprint replaces the arguments' (e.g. to key a method
        by `prompt` only, or to key an argument that cannot be fingerprinted).
    version: a tag in every key: change it to record fresh results.
    sleep: how to wait between attempts (default time.sleep / asyncio.sleep); tests pass a fake clock.

    Supported: functions, lambdas, nested functions, `async def` functions, and methods defined in a class
    body (then `self` is an argument: it must be fingerprintable, or pass key=). Refused with an error:
    generators (a stream cannot be recorded as one result), bound methods, classes and other callables.
    """
    options: dict[str, Any] = {"retries": retries, "delay": delay, "backoff": backoff, "max_delay": max_delay,
               "jitter": jitter, "retry_on": retry_on, "timeout": timeout, "key": key, "version": version}
    RetryPolicy(**{k: options[k] for k in _POLICY_FIELDS})  # bad settings fail here, at decoration
    if timeout is not None and timeout <= 0:
        raise ValueError(f"activity timeout={timeout}: expected a positive number of seconds, or None")

    def decorate(func: Callable[..., Any]) -> Any:
        _check_decoratable(func)
        _hook_ipython()
        return _wrap(func, options, sleep)

    return decorate(fn) if fn is not None else decorate


def _check_decoratable(func: object) -> None:
    name = getattr(func, "__qualname__", repr(func))
    if inspect.ismethod(func):
        raise TypeError(f"@activity got the bound method {name}: decorate the function in the class body "
                        "(self then becomes an argument), or wrap the call in a function.")
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError(f"@activity cannot record the generator function {name}: its values are "
                        "produced lazily and cannot be one recorded result. Return a list instead, or make "
                        "each item an activity call.")
    if not inspect.isfunction(func):
        raise TypeError(f"@activity expects a function (def, async def or lambda), got {type(func).__name__} "
                        f"{name}. Wrap the call in a function: @activity def call(...): return obj(...)")


# ----------------------------------------------------------------------------------------------- steps

class Step:
    """A checkpoint of a value computed in a `with` body.

    ```python
    for epoch in range(50):
        with durable_nb.step("epoch", epoch) as s:
            if not s.replayed:             # the body always runs: a with block cannot be skipped
                state = train_one_epoch(state)
                s.result = state           # recorded when the block exits without an error
        state = s.result                   # the recorded value on replay
    ```
    `replayed` is True when a recording of this (name, key_parts, occurrence) was found; `result` is then the
    recorded value. A block that sets no result records None (a marker that a side effect was done). A block
    that raises is recorded as a failed attempt and the error propagates; steps are not retried. The key is
    the name and the fingerprint of `key_parts` only: include whatever the body's result depends on.
    """

    def __init__(self, name: str, key_parts: tuple[Any, ...]) -> None:
        self.name = name
        self.key_parts = key_parts
        self.replayed = False
        self._result: Any = None
        self._rec: _Recorder | None = None
        self._call: _Call | None = None

    @property
    def result(self) -> Any:
        return self._result

    @result.setter
    def result(self, value: Any) -> None:
        self._result = value

    def __enter__(self) -> Step:
        fingerprint = _deps().fingerprint
        function = f"step:{self.name}"
        try:
            key = fingerprint(self.key_parts)
        except Unfingerprintable as exc:
            raise EncodeError(f"step {self.name!r}: its key parts cannot be fingerprinted ({exc}). Pass "
                              "plain values (numbers, strings, tuples) after the name.") from exc
        rec = _recorder()
        occurrence = _SCOPE.occurrence(function, key)
        row = rec.lookup(function, key, occurrence)
        if row is not None:
            value = rec.load(function, row)
            if value is not _MISS:
                self.replayed, self._result = True, value
                return self
        self._rec, self._call = rec, rec.begin(function, key, occurrence, "step")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        rec, call = self._rec, self._call
        if rec is None or call is None:
            return
        if exc is not None:
            call.failures.append(_failure(call, exc, "failed"))
            call.state, call.finished_at = "failed", time.time()
            rec.finish(call)
            return
        _succeeded(rec, call.function, call, self._result)


def step(name: str, *key_parts: Any) -> Step:
    """A checkpoint context: `with durable_nb.step("epoch", epoch) as s: ...` (see Step)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"step name must be a non-empty string, got {name!r}")
    return Step(name, key_parts)
