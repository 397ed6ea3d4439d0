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
import contextlib
import io
import itertools
import json
import os
import sqlite3
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import xxhash

from .. import keys
from ..codecs import SAFE_CODECS, Batch, batch_signature, decode_value, distrust, encode_value, signature
from ..errors import DecodeError, DurableError, EncodeError, LogError, LogNotWritableError, UntrustedError
from ..keys import PublicKey
from ..record import Record
from ..signing import payload
from . import background, signers
from .blobs import BlobStore, bytes_view, content_hash
from .connect import Durability, write_transaction
from .journal import BATCH_AT, INLINE_AT, Journal, journal_line, recover, upsert, upsert_many

if TYPE_CHECKING:
    from ..codecs import Encoded
    from .blobs import BlobSource

# A call is written as `running` once it has run this long (so a crash leaves a visible `crashed` row).
FLUSH_DELAY = 0.02
# Results whose encoding is one buffer of at most this many bytes live in the call row; larger ones are blobs.
INLINE_MAX = 64 * 1024
# The replay index keeps inline results up to this size in memory; larger ones are read on a hit.
INDEX_INLINE_MAX = 4096
FLUSHER = "activity flusher"
RETRY_DELAY = 1.0  # seconds between attempts of a flush the log refused (full disk, read-only media)


# ------------------------------------------------------------------------------------ result encoding

class _Log(Protocol):
    """What a recorder needs of its log (durable_nb.log.store.LogStore is one)."""

    path: Path
    readonly: bool
    from_scratch: bool
    durability: Durability

    @property
    def run_id(self) -> int: ...

    def dead_run_ids(self) -> list[int]: ...

    def on_flush(self, flush: Callable[[], None]) -> None: ...

    def connect_writer(self) -> sqlite3.Connection: ...

    def blob_store(self, conn: sqlite3.Connection) -> BlobStore: ...


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
        view = bytes_view(buffer)
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


class _Result(Record):
    __match_args__ = ("encoded", "parts", "safe", "meta_json")
    __slots__ = __match_args__

    def __init__(self, encoded: Encoded, parts: list[memoryview], safe: bool, meta_json: str) -> None:
        self.encoded = encoded
        self.parts = parts
        self.safe = safe
        self.meta_json = meta_json

    def part_hashes(self, inline: bool) -> list[str]:
        """The hashes the signature covers: what `_InlineSource.hash` or the parts' blobs will report."""
        if inline:
            return [xxhash.xxh3_128_hexdigest(self.parts[0])]

        return [content_hash(p) for p in self.parts]


def encode_result(function: str, value: Any) -> _Result:
    sink = _CaptureSink()
    try:
        encoded = encode_value(value, sink)
    except EncodeError as exc:
        raise EncodeError(f"activity {function}: its result cannot be recorded ({exc}) The call ran but was "
                          "recorded as failed; return plain data, an array or a DataFrame instead, or "
                          "convert the result before returning it.") from exc
    return _Result(encoded, sink.parts, encoded.codec in SAFE_CODECS, json.dumps(encoded.meta))


# ---------------------------------------------------------------------------------------------- calls

class _Failure(Record):
    __match_args__ = ("n", "state", "started_at", "finished_at", "delay", "error_type", "message", "traceback")
    __slots__ = __match_args__

    def __init__(self, n: int, state: str, started_at: float, finished_at: float, delay: float | None,
                 error_type: str, message: str, traceback: str) -> None:
        self.n = n
        self.state = state
        self.started_at = started_at
        self.finished_at = finished_at
        self.delay = delay
        self.error_type = error_type
        self.message = message
        self.traceback = traceback


class Call:
    """One activity call while it runs and until the flusher has written its last state."""

    __slots__ = (
        "attempt",
        "attempt_started_at",
        "execution_id",
        "failures",
        "finished_at",
        "function",
        "key",
        "kind",
        "occurrence",
        "payload",
        "result",
        "signature",
        "signer",
        "started_at",
        "state",
        "uid",
    )

    def __init__(self, uid: str, function: str, key: str, occurrence: int, kind: str, execution_id: int | None,
                 started_at: float) -> None:
        self.uid = uid
        self.function = function
        self.key = key
        self.occurrence = occurrence
        self.kind = kind
        self.execution_id = execution_id
        self.started_at = started_at
        self.attempt = 1
        self.attempt_started_at = started_at
        self.state = "running"
        self.finished_at: float | None = None
        self.result: _Result | None = None
        self.failures: list[_Failure] = []  # append-only
        self.signature: str | None = None
        self.signer: PublicKey | None = None
        # A journaled pickled result: what the flush that moves it into the log signs, in one batch with the others.
        self.payload: bytes | None = None

    def next_attempt(self) -> None:
        self.attempt += 1
        self.attempt_started_at = time.time()


class _Row:
    """A recorded call in the replay index."""

    __slots__ = (
        "batch_id",
        "codec",
        "codec_version",
        "id",
        "inline",
        "inline_stored",
        "meta",
        "mine",
        "parsed_meta",
        "parts",
        "signature",
        "signer",
    )

    def __init__(self, id: int | None, codec: str, codec_version: int, meta: str, inline: bytes | None,
                 inline_stored: bool, parts: int, signature: str | None, signer: PublicKey | None,
                 batch_id: int | None = None, *, mine: bool = False) -> None:
        self.id = id  # None: journaled by this process, not yet in the SQLite log
        self.codec = codec
        self.codec_version = codec_version
        self.meta = meta
        self.inline = inline  # None: no inline part, or one too large for the index (then `inline_stored`)
        self.inline_stored = inline_stored
        self.parts = parts
        self.signature = signature
        self.signer = signer
        self.batch_id = batch_id
        self.mine = mine  # recorded by this process (in the index since): nothing to verify
        self.parsed_meta: dict[str, Any] | None = None  # decoders only read it


MISS = object()

def failure(call: Call, exc: BaseException, state: str, delay: float | None = None) -> _Failure:
    import traceback  # deferred for start-up speed: only failed calls format one

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return _Failure(call.attempt, state, call.attempt_started_at, time.time(), delay,
                    f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
                    str(exc), tb)


class Recorder:
    """Writes and finds the calls of one log through its own connection (so a cell runner's transaction on
    the log's main connection never meets ours)."""
    def __init__(self, log: _Log) -> None:
        if log.readonly:
            raise LogNotWritableError(f"activities record their calls, but durable log {log.path} is open "
                                      "read-only. Open it writable with durable_nb.open_log(PATH).")
        self.path = log.path
        self.run_id = log.run_id
        self.from_scratch = log.from_scratch
        self.conn = log.connect_writer()
        run_uuid = self.conn.execute("SELECT uuid FROM run WHERE id = ?", (self.run_id,)).fetchone()[0]
        self.journal = Journal(log.path, run_uuid, fsync=log.durability == "full")
        self.uids = itertools.count(1)
        self.uid_prefix = f"{run_uuid}:"
        self.wlock = threading.Lock()  # the SQLite connection
        self.jlock = threading.Lock()  # the journal and the queues
        self.journaled: list[tuple[Call, tuple[Any, ...]]] = []
        self.moved: list[Path] = []  # journal files whose lines are committed once the next flush succeeds
        self.pending: dict[int, Call] = {}
        self.index: dict[str, tuple[int, dict[tuple[str, int], _Row]]] = {}
        self.blobs = log.blob_store(self.conn)
        self.shown = str(log)
        self.signer_id: int | None = None
        self.batches: dict[int, Batch] = {}
        self._recover(log)
        _LIVE.add(self)
        log.on_flush(self.flush)

    def _recover(self, log: _Log) -> None:
        with self.wlock:
            recover(self.conn, self.path, set(log.dead_run_ids()))

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
                f"signature, {signers.of('c')}, batch_id FROM activity_call c WHERE function = ? "
                "AND state = 'recorded' AND (? OR run_id = ?) ORDER BY id",
                (function, not self.from_scratch, self.run_id)).fetchall()
        table = {(r[0], r[1]): _Row(r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], signers.public_key(r[10], r[11]),
                                    r[12]) for r in rows}
        with self.jlock:  # journaled, not yet imported
            for call, params in self.journaled:
                if call.function == function:
                    self._remember(call, params[INLINE_AT], None, table)
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
        except UntrustedError:  # said once by _decode
            return MISS
        except DecodeError as exc:
            warnings.warn(f"activity {function}: the recorded result of call {row.id} cannot be loaded "
                          f"here ({exc}); calling the function again.", stacklevel=4)
            return MISS

    def _decode(self, row: _Row, meta: dict[str, Any], sources: Sequence[Any]) -> Any:
        batch = None if row.batch_id is None or row.mine else self._batch(row.batch_id)
        problem = None if row.mine else distrust(row.codec, row.codec_version, meta, [s.hash for s in sources],
                                                 row.signature, row.signer, self.shown, batch)
        if problem is not None:
            # Once per signer and log: a loop over a thousand untrusted calls says it once, not a thousand times.
            _say_once(f"durable: activity results recorded in {self.shown}: {problem}. Those calls run again.")
            raise UntrustedError(problem)
        return decode_value(row.codec, row.codec_version, meta, sources, allow_pickle=True)

    def _batch(self, batch_id: int) -> Batch | None:
        """A signed batch, read once per recorder and verified once (by Batch) however many calls it signs."""
        if batch_id not in self.batches:
            with self.wlock:
                self.batches.update(signers.batches(self.conn, [batch_id]))
        return self.batches.get(batch_id)

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
        call = Call(f"{self.uid_prefix}{next(self.uids)}", function, key, occurrence, kind, execution_id, now)
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
        if res is not None and not res.safe and self.signer_id is None:
            self._add_signer()
        if res is not None and (len(res.parts) > 1 or (res.parts and res.parts[0].nbytes > INLINE_MAX)):
            with self.wlock, write_transaction(self.conn, self.path):
                blob_ids = [self.blobs.sink().put(p) for p in res.parts]
                call_id = self._upsert(self._params(call, sign=True), [f.as_tuple() for f in call.failures])
                self.conn.executemany("INSERT INTO activity_blob (call_id, seq, blob_id) VALUES (?, ?, ?)",
                                      [(call_id, i, b) for i, b in enumerate(blob_ids)])
            self.pending.pop(id(call), None)
            self._remember(call, None, call_id)
            return
        params = self._params(call, sign=False)
        line = journal_line(params, [f.as_tuple() for f in call.failures])
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
        self._remember(call, params[INLINE_AT], None)

    def _add_signer(self) -> None:
        """This user's key in the log's signers, the first time this recorder signs a result (its id goes into
        the journal line with the signature)."""
        with self.wlock, write_transaction(self.conn, self.path):
            self.signer_id = signers.signer_id(self.conn, keys.user_key().public)

    def _commit_directly(self, call: Call, params: tuple[Any, ...], journal_error: OSError) -> None:
        """The journal cannot be written (read-only folder, permissions, full disk): the call goes straight
        into the log, one transaction each, as durable as through the journal. When the log cannot take it
        either, the call stays unrecorded (it returns its value and runs again on replay) and says so."""
        folder = self.journal.folder
        cause = f"{journal_error.strerror or journal_error}"
        try:
            with self.wlock, write_transaction(self.conn, self.path):
                call_id = self._upsert(self._params(call, sign=True), [f.as_tuple() for f in call.failures])
        except (LogError, sqlite3.Error) as exc:
            self.pending.pop(id(call), None)
            _say_once(f"durable: activity {call.function}: call not recorded: the activity journal {folder} "
                      f"cannot be written ({cause}) and neither can the log ({exc}). The call returned its "
                      "value; it runs again on replay. Free space or fix the permissions of "
                      f"{folder.parent} to record calls again.")
            return
        self.pending.pop(id(call), None)
        self._remember(call, params[INLINE_AT], call_id)
        _say_once(f"durable: the activity journal {folder} cannot be written ({cause}): activity calls are "
                  f"committed to the log {self.path} one by one instead (slower; nothing is lost). Make "
                  f"{folder} writable (or free space) to get the fast journal back.")

    def flush(self) -> None:
        """Move journaled calls, and calls running for a while, into the log (one transaction). A failure is
        reported (durable_nb.log.background) as well as raised: the flusher thread has no caller to tell."""
        try:
            self._flush()
        except Exception as exc:  # the journal keeps what could not be moved yet
            background.failed(self.path, FLUSHER, "activity calls wait in the journal beside the log and are not "
                              f"in it yet ({describe(exc)}); they move in once it can be written")
            raise
        background.succeeded(self.path, FLUSHER)

    def _flush(self) -> None:
        with self.wlock:
            with self.jlock:
                batch, self.journaled = self.journaled, []
                fd, done = self.journal.rotate() if batch else (None, None)
                pending, self.pending = self.pending, {}
                self.moved.extend(self.journal.given_up)
                self.journal.given_up.clear()
            if fd is not None:
                os.close(fd)
            if done is not None:
                self.moved.append(done)
            running = [c for c in list(pending.values()) if c.state == "running"]
            if batch or running:
                try:
                    self._write(batch, running)
                except BaseException:  # kept for the next flush (upserts by uid: writing a call twice is harmless)
                    with self.jlock:
                        self.journaled[:0] = batch
                        self.pending = {**pending, **self.pending}
                    raise
            # Still under the lock: a flush that returns has deleted the files whose calls an earlier one (the
            # flusher thread's) moved into the log. Nothing journaled is left unwritten, so all of them may go.
            moved, self.moved = self.moved, []
            for path in moved:
                with contextlib.suppress(OSError):  # left for the next process to import (by uid: no duplicate)
                    path.unlink(missing_ok=True)

    def _write(self, batch: list[tuple[Call, tuple[Any, ...]]], running: list[Call]) -> None:
        with write_transaction(self.conn, self.path):
            rows = self._batch_signed(batch)
            # Most calls have no failed attempts: one statement for them (the flusher shares the GIL with the
            # caller's loop, so its per-row Python work is what slows the caller down).
            upsert_many(self.conn, [p for (c, _), p in zip(batch, rows, strict=True) if not c.failures])
            for (call, _), params in zip(batch, rows, strict=True):
                if call.failures:
                    self._upsert(params, [f.as_tuple() for f in call.failures])
            for call in running:
                # Unsigned: a call that finished since it was picked keeps its payload for the batch its
                # journal line joins; signed here, that line (its params taken before) would overwrite this
                # row without signature or batch, and the call would not replay.
                self._upsert(self._params(call, sign=False), [f.as_tuple() for f in call.failures])

    def _batch_signed(self, batch: list[tuple[Call, tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
        """The rows of `batch`, its pickled results signed with one signature (inside the flush's transaction;
        the journaled params stay as they are, for a retry after a failed flush)."""
        waiting = [i for i, (call, _) in enumerate(batch) if call.payload is not None]
        rows = [params for _, params in batch]
        if waiting and self.signer_id is not None:
            digests, signed = batch_signature([batch[i][0].payload or b"" for i in waiting])
            batch_id = signers.add_batch(self.conn, self.signer_id, digests, signed.signature)
            for i in waiting:
                rows[i] = (*rows[i][:BATCH_AT], batch_id, *rows[i][BATCH_AT + 1:])
        return rows

    def _params(self, call: Call, *, sign: bool) -> tuple[Any, ...]:
        """The row of `call`. A pickled result is signed here when `sign`, else by the flush that moves its
        journal line into the log (one signature per batch)."""
        res = call.result
        enc = res.encoded if res is not None else None
        inline = None
        if res is not None and enc is not None:
            if len(res.parts) == 1 and res.parts[0].nbytes <= INLINE_MAX:
                inline = res.parts[0].tobytes()
            if not res.safe and call.signature is None:
                hashes = res.part_hashes(inline is not None)
                if sign:
                    signed = signature(enc.codec, enc.version, enc.meta, hashes)
                    call.signature, call.signer = signed.signature, signed.signer
                    call.payload = None
                else:
                    call.payload = payload(enc.codec, enc.version, enc.meta, hashes)
        return (call.uid, self.run_id, call.execution_id, call.function, call.key, call.occurrence, call.kind,
                call.started_at, call.state, call.finished_at, call.attempt, call.attempt_started_at,
                enc.codec if enc else None, enc.version if enc else None, enc.type_name if enc else None,
                res.meta_json if res else None, enc.size if enc else None, inline,
                len(res.parts) if res else 0, call.signature, self.signer_id if call.signer else None, None)

    def _upsert(self, params: tuple[Any, ...], failures: list[tuple[Any, ...]]) -> int:
        return upsert(self.conn, params, failures)

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
            call.signature, call.signer, mine=True))


_said: set[str] = set()


def _say_once(text: str) -> None:
    """A problem the user should know about, printed once per process (a loop of calls would repeat it)."""
    if text not in _said:
        _said.add(text)
        print(text, file=sys.stderr, flush=True)


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
                try:
                    recorder.flush()
                except Exception:  # reported by flush; tried again in a second (the journal keeps the calls)
                    retry = threading.Timer(RETRY_DELAY, self.wake, (recorder,))
                    retry.daemon = True
                    retry.start()


_FLUSHER = _Flusher()
_LIVE: weakref.WeakSet[Recorder] = weakref.WeakSet()
_RECORDERS: weakref.WeakKeyDictionary[_Log, Recorder] = weakref.WeakKeyDictionary()
_recorders_lock = threading.Lock()


def flush() -> None:
    """Move every journaled call of this process into its log now (also done at exit and every 20 ms)."""
    for recorder in list(_LIVE):
        recorder.flush()


def describe(exc: BaseException) -> str:
    """Our errors carry their own sentence; anything else is named by its type too."""
    return str(exc) if isinstance(exc, DurableError) else f"{type(exc).__name__}: {exc}"


def _flush_at_exit() -> None:
    for recorder in list(_LIVE):
        with contextlib.suppress(Exception):  # what stays in the journal is imported by the next process
            recorder.flush()


atexit.register(_flush_at_exit)


_last: tuple[_Log | None, Recorder | None] = (None, None)


def recorder_for(log: _Log, on_create: Callable[[], object]) -> Recorder:
    """The recorder of `log` (one per log and process); `on_create` runs before a log gets its recorder."""
    global _last
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
