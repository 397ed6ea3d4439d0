"""Content-addressed blobs: chunked (SQLite caps one value near 1 GB), zstd-compressed only where it pays,
deduplicated by a hash of the raw content (see `ContentHash`), verified on every read.

Big values never get a whole-size `bytes` copy: writes bind memoryview slices of the caller's buffer, reads
fill a preallocated buffer chunk by chunk.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import xxhash

from ..errors import DecodeError

if TYPE_CHECKING:
    from concurrent.futures import Future

T = TypeVar("T")

# One chunk row holds at most this many raw bytes (well under SQLite's ~1e9-byte cap on one value).
CHUNK_SIZE = 8 * 1024 * 1024
# Compress a chunk only when a sample of it, compressed, shrinks below MIN_GAIN of its size. Measured here,
# zstd decompresses at 0.8-1.7 GB/s while SQLite hands over raw chunks at 5 GB/s and more: every compressed
# chunk makes a replay slower, so compression pays only for what shrinks tenfold (repeated strings, zeros,
# constants), where the space saved is large. Ids or small counts (4-8x smaller) stay raw.
SAMPLE_SIZE = 64 * 1024
MIN_GAIN = 0.1
ZSTD_LEVEL = 1
# The unit of reads and of the content hash. Uncompressed chunks are copied out piece by piece (sqlite3.Blob
# has no readinto; small `bytes` come from reused heap memory, chunk-sized ones would be fresh pages faulted
# in on every chunk), and each piece is hashed right after its copy, while it is in the CPU cache.
PIECE = 1024 * 1024
# A blob of this many chunks or more is read by up to READ_THREADS threads, each with its own read-only
# connection: sqlite3, numpy copies, zstd and xxhash release the GIL, so the threads copy and verify in
# parallel (1 GiB here: 270 ms in one thread, 160 ms in two).
PARALLEL_MIN_CHUNKS = 2
READ_THREADS = min(4, os.cpu_count() or 1)
# Reads fill fresh memory, and torch's allocator hands it out in 4 KiB pages: a page fault per page costs more than
# the copy (1 GiB here: 260k faults, ~370 ms of CPU). Each reader first maps the pages of its chunk in one call
# (madvise MADV_POPULATE_WRITE, Linux 5.14+; ~250 ms per GiB), in parallel with the other readers.
MADV_POPULATE_WRITE = 23


def bytes_view(buffer: Any) -> memoryview:
    """A 1-D unsigned-byte view of any contiguous buffer (C or Fortran order), without copying."""
    view = memoryview(buffer)
    if view.ndim == 1 and view.format in ("B", "b", "c") and view.contiguous:
        return view.cast("B") if view.format != "B" else view
    if not view.contiguous:
        raise TypeError("blob buffers must be contiguous; pass a contiguous copy (e.g. np.ascontiguousarray)")
    # PickleBuffer.raw() flattens C- and Fortran-contiguous buffers alike, which memoryview.cast cannot.
    import pickle  # deferred for start-up speed: a script's first call stores bytes, not arrays

    return pickle.PickleBuffer(view).raw()


TREE = "tree:"  # prefix of content hashes; a bare xxh3_128 hex digest is the hash of blobs of older logs


class ContentHash:
    """The content address of a byte string: TREE + the xxh3_128 of its size and of the xxh3_128 digests of
    its PIECE-sized pieces. The pieces hash independently, so the threads reading a blob each verify what
    they copy where they copy it, instead of one thread streaming over all of it again."""

    def __init__(self) -> None:
        self.size = 0
        self._leaves: list[bytes] = []
        self._leaf = xxhash.xxh3_128()
        self._filled = 0

    def update(self, data: Any) -> None:
        view = bytes_view(data)
        while len(view):
            take = min(PIECE - self._filled, len(view))
            self._leaf.update(view[:take])
            self._filled += take
            self.size += take
            view = view[take:]
            if self._filled == PIECE:
                self._leaves.append(self._leaf.digest())
                self._leaf.reset()
                self._filled = 0

    def hexdigest(self) -> str:
        return tree_digest(self._leaves + ([self._leaf.digest()] if self._filled else []), self.size)


def tree_digest(leaves: list[bytes], size: int) -> str:
    return TREE + xxhash.xxh3_128_hexdigest(size.to_bytes(8, "little") + b"".join(leaves))


def content_hash(data: Any) -> str:
    """The content address of one buffer (what `BlobSink.put` stores it under)."""
    view = bytes_view(data)
    return tree_digest(_leaves(view), len(view))


def _leaves(view: memoryview) -> list[bytes]:
    return [xxhash.xxh3_128_digest(view[i:i + PIECE]) for i in range(0, len(view), PIECE)]


class _ChunkWriter:
    """Writes the chunk rows of one blob, deciding compression chunk by chunk."""

    def __init__(self, conn: sqlite3.Connection, blob_id: int) -> None:
        self.conn = conn
        self.blob_id = blob_id
        self.seq = 0
        self.stored = 0
        import zstandard  # deferred for start-up speed: small values are stored inline, never compressed

        self._cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)

    def write(self, data: memoryview) -> None:
        payload, compression = self._maybe_compress(data)
        # zeroblob + incremental write: SQLite copies straight from `payload` into its pages. Binding the
        # bytes as a parameter makes a private chunk-sized copy first, on fresh pages (measured 1.5-2× slower).
        cursor = self.conn.execute(
            "INSERT INTO chunk (blob_id, seq, raw_size, compression, data) VALUES (?, ?, ?, ?, zeroblob(?))",
            (self.blob_id, self.seq, len(data), compression, len(payload)))
        assert cursor.lastrowid is not None
        with self.conn.blobopen("chunk", "data", cursor.lastrowid) as blob:
            blob.write(payload)
        self.seq += 1
        self.stored += len(payload)

    def _maybe_compress(self, data: memoryview) -> tuple[Any, str]:
        if len(data) <= SAMPLE_SIZE:
            packed = self._cctx.compress(data)
            return (packed, "zstd") if len(packed) < MIN_GAIN * len(data) else (data, "none")
        middle = (len(data) - SAMPLE_SIZE) // 2
        if len(self._cctx.compress(data[middle:middle + SAMPLE_SIZE])) >= MIN_GAIN * SAMPLE_SIZE:
            return data, "none"
        packed = self._cctx.compress(data)
        return (packed, "zstd") if len(packed) < len(data) else (data, "none")


class BlobSink:
    """Stores the blobs of one value inside the caller's write transaction; `blob_ids` lists them in order."""

    chunk_writer: type[_ChunkWriter] = _ChunkWriter  # how chunk rows are written (log.pg_blobs: as bytea)

    def __init__(self, conn: sqlite3.Connection, chunk_size: int = CHUNK_SIZE) -> None:
        self.conn = conn
        self.chunk_size = chunk_size
        self.blob_ids: list[int] = []
        self.sizes: list[int] = []
        self._created: set[int] = set()

    def put(self, buffer: Any) -> int:
        """Store one buffer (anything with the buffer protocol, not copied whole); return its blob id."""
        data = bytes_view(buffer)
        digest = content_hash(data)
        blob_id = self._existing(digest)
        if blob_id is None:
            blob_id = self._insert_blob(digest, len(data))
            chunks = self.chunk_writer(self.conn, blob_id)
            for start in range(0, len(data), self.chunk_size):
                chunks.write(data[start:start + self.chunk_size])
            self._finish_blob(blob_id, digest, len(data), chunks)
            self._created.add(blob_id)
        return self._record(blob_id, len(data))

    def writer(self) -> BlobWriter:
        """A binary file-like whose content becomes one blob when closed (`blob_id` then)."""
        return BlobWriter(self)

    def mark(self) -> int:
        """A point to `discard` back to if the value being encoded turns out not to fit its codec."""
        return len(self.blob_ids)

    def discard(self, mark: int) -> None:
        """Forget the blobs stored since `mark`, deleting those this sink created and no longer lists."""
        dropped = self.blob_ids[mark:]
        del self.blob_ids[mark:], self.sizes[mark:]
        for blob_id in set(dropped) & (self._created - set(self.blob_ids)):
            _delete_blob(self.conn, blob_id)
            self._created.discard(blob_id)

    def existing(self, digest: str) -> int | None:
        """The id of the blob with this content hash, if the log has it (log.copy matches blobs by hash)."""
        return self._existing(digest)

    def _existing(self, digest: str) -> int | None:
        row = self.conn.execute("SELECT id FROM blob WHERE hash = ?", (digest,)).fetchone()
        return None if row is None else int(row[0])

    def _insert_blob(self, digest: str, size: int) -> int:
        (blob_id,) = self.conn.execute(
            "INSERT INTO blob (hash, size, stored_size, chunk_count, created_at) VALUES (?, ?, 0, 0, ?) RETURNING id",
            (digest, size, time.time())).fetchone()
        return int(blob_id)

    def _finish_blob(self, blob_id: int, digest: str, size: int, chunks: _ChunkWriter) -> None:
        self.conn.execute("UPDATE blob SET hash = ?, size = ?, stored_size = ?, chunk_count = ? WHERE id = ?",
                          (digest, size, chunks.stored, chunks.seq, blob_id))

    def _record(self, blob_id: int, size: int) -> int:
        self.blob_ids.append(blob_id)
        self.sizes.append(size)
        return blob_id


def _delete_blob(conn: sqlite3.Connection, blob_id: int) -> None:
    conn.execute("DELETE FROM chunk WHERE blob_id = ?", (blob_id,))
    conn.execute("DELETE FROM blob WHERE id = ?", (blob_id,))


class BlobWriter:
    """Streams bytes into chunk rows under a provisional blob row; `close()` names the blob by its hash, or
    drops its own rows when a blob with that hash already exists."""

    def __init__(self, sink: BlobSink) -> None:
        self._sink = sink
        self._hash = ContentHash()
        self._buffer = bytearray(sink.chunk_size)
        self._filled = 0
        self._size = 0
        self._provisional = sink._insert_blob(f"pending:{os.urandom(16).hex()}", 0)
        self._chunks = sink.chunk_writer(sink.conn, self._provisional)
        self._blob_id: int | None = None
        self.closed = False

    @property
    def blob_id(self) -> int:
        if self._blob_id is None:
            raise ValueError("BlobWriter.blob_id is known only after close()")
        return self._blob_id

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        """Chunks are flushed whole; partial ones wait for more bytes or close()."""

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed BlobWriter")
        view = bytes_view(data)
        written = len(view)
        self._hash.update(view)
        self._size += written
        size = self._sink.chunk_size
        while len(view):
            if self._filled == 0 and len(view) >= size:
                self._chunks.write(view[:size])  # whole chunks go straight from the caller's buffer
                view = view[size:]
                continue
            take = min(size - self._filled, len(view))
            self._buffer[self._filled:self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == size:
                self._flush_buffer()
        return written

    def _flush_buffer(self) -> None:
        if self._filled:
            self._chunks.write(memoryview(self._buffer)[:self._filled])
            self._filled = 0

    def close(self) -> None:
        if self.closed:
            return
        self._flush_buffer()
        self.closed = True
        self._buffer = bytearray()
        digest = self._hash.hexdigest()
        sink = self._sink
        existing = sink._existing(digest)
        if existing is not None:
            _delete_blob(sink.conn, self._provisional)
            self._blob_id = sink._record(existing, self._size)
            return
        sink._finish_blob(self._provisional, digest, self._size, self._chunks)
        sink._created.add(self._provisional)
        self._blob_id = sink._record(self._provisional, self._size)

    def abort(self) -> None:
        """Drop what was written (the value is not stored after all)."""
        if not self.closed:
            self.closed = True
            _delete_blob(self._sink.conn, self._provisional)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class BlobSource:
    """One stored blob, read and verified against its content hash."""

    def __init__(self, conn: sqlite3.Connection, blob_id: int) -> None:
        row = conn.execute("SELECT hash, size, chunk_count FROM blob WHERE id = ?", (blob_id,)).fetchone()
        if row is None:
            raise DecodeError(f"blob {blob_id} is missing from the log: the log was modified or is "
                              "incomplete. The value cannot be replayed; re-run the cell to record it again.")
        self._conn = conn
        self.blob_id = blob_id
        self.hash: str = row[0]
        self.size: int = row[1]
        self._chunk_count: int = row[2]
        if not (isinstance(self.hash, str) and isinstance(self.size, int) and self.size >= 0
                and isinstance(self._chunk_count, int)):
            self.hash, self.size = str(self.hash), 0
            raise self._tampered()  # a damaged blob row: never read, never decoded

    def read(self) -> bytearray:
        out = bytearray(self.size)
        self.readinto(memoryview(out))
        return out

    def readinto(self, buffer: Any) -> int:
        """Fill `buffer` (exactly `size` writable bytes) chunk by chunk, then check the content hash."""
        target = bytes_view(buffer)
        if target.readonly or len(target) != self.size:
            raise ValueError(f"blob {self.hash} needs a writable buffer of exactly {self.size} bytes, "
                             f"got {len(target)}{' (read-only)' if target.readonly else ''}")
        parts = self._parts(target)
        # Chunks that start on piece boundaries (all but toy chunk sizes) get their pieces' digests from the
        # threads that fill them; otherwise, and for the plain hashes of older logs, the hash comes after.
        aligned = self.hash.startswith(TREE) and all(len(p) % PIECE == 0 for _, _, p in parts[:-1])
        leaves = self._fill_all(parts, aligned)
        if aligned:
            actual = tree_digest([leaf for chunk in leaves for leaf in chunk], self.size)
        else:
            actual = content_hash(target) if self.hash.startswith(TREE) else xxhash.xxh3_128_hexdigest(target)
        if actual != self.hash:
            raise self._tampered()
        return self.size

    def _parts(self, target: memoryview) -> list[tuple[int, str, memoryview]]:
        """(chunk rowid, compression, the slice of `target` it fills), checked to tile `target` exactly."""
        rows = self._conn.execute(
            "SELECT id, raw_size, compression FROM chunk WHERE blob_id = ? ORDER BY seq",
            (self.blob_id,)).fetchall()
        if len(rows) != self._chunk_count or sum(raw_size for _, raw_size, _ in rows) != self.size:
            raise self._tampered()
        parts, offset = [], 0
        for rowid, raw_size, compression in rows:
            parts.append((rowid, compression, target[offset:offset + raw_size]))
            offset += raw_size
        return parts

    def _fill_all(self, parts: list[tuple[int, str, memoryview]], leaves: bool) -> list[list[bytes]]:
        """Fill every part; with `leaves`, return the digests of each part's pieces."""
        path = None if len(parts) < PARALLEL_MIN_CHUNKS or READ_THREADS < 2 else _file_of(self._conn)
        if path is None or self._conn.in_transaction:
            return [self._fill(self._conn, rowid, compression, part, leaves) for rowid, compression, part in parts]
        with _Readers(path) as readers:
            futures = [readers.submit(self._fill, *part, leaves) for part in parts]
            return [future.result() for future in futures]

    def _fill(self, conn: sqlite3.Connection, rowid: int, compression: str, part: memoryview,
              leaves: bool) -> list[bytes]:
        """Fill `part` from one chunk; with `leaves`, return the digests of its pieces. A chunk SQLite cannot
        read (a damaged page) fails verification like a tampered one."""
        _populate(part)
        try:
            return self._fill_chunk(conn, rowid, compression, part, leaves)
        except sqlite3.DatabaseError as exc:
            raise self._tampered() from exc

    def _fill_chunk(self, conn: sqlite3.Connection, rowid: int, compression: str, part: memoryview,
                    leaves: bool) -> list[bytes]:
        if compression == "zstd":
            self._decompress(conn, rowid, part)
            return _leaves(part) if leaves else []
        if compression != "none":
            raise DecodeError(f"blob {self.hash} uses compression {compression!r}, unknown to this "
                              "durable_nb; upgrade durable_nb (pip install -U durable_nb) to replay it.")
        import numpy as np

        # numpy copies (and faults in the fresh target pages) without the GIL, so the other reader thread
        # runs meanwhile; a memoryview assignment would hold it.
        target = np.frombuffer(part, np.uint8)
        digests = []
        with conn.blobopen("chunk", "data", rowid, readonly=True) as blob:
            if len(blob) != len(part):
                raise self._tampered()
            for start in range(0, len(part), PIECE):
                target[start:start + PIECE] = np.frombuffer(blob.read(PIECE), np.uint8)
                if leaves:
                    digests.append(xxhash.xxh3_128_digest(part[start:start + PIECE]))
        return digests

    def _decompress(self, conn: sqlite3.Connection, rowid: int, part: memoryview) -> None:
        (data,) = conn.execute("SELECT data FROM chunk WHERE id = ?", (rowid,)).fetchone()
        import zstandard  # deferred for start-up speed (see _ChunkWriter)

        # Straight into the caller's buffer: a fresh chunk-sized `bytes` per chunk would fault in new pages.
        try:
            with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False) as reader:
                filled = 0
                while filled < len(part) and (n := reader.readinto(part[filled:])):
                    filled += n
                overflow = reader.read(1)
        except zstandard.ZstdError as exc:
            raise self._tampered() from exc
        if filled != len(part) or overflow:
            raise self._tampered()

    def _tampered(self) -> DecodeError:
        return DecodeError(
            f"blob {self.hash} of {self.size} bytes failed verification: the log was modified after it was "
            "written, or is corrupt. The value is treated as missing (never decoded); re-run the cell to "
            "record it again.")


# The memory page size (what mmap.PAGESIZE says, without loading mmap on a script's first call).
_PAGE = os.sysconf("SC_PAGESIZE") if sys.platform == "linux" else 4096


def _populate(part: memoryview) -> None:
    """Map the whole pages of `part` (writable, about to be overwritten) before it is filled. Advice only: a kernel
    without MADV_POPULATE_WRITE answers EINVAL, and the copy then faults the pages in as before."""
    if sys.platform != "linux" or len(part) < 2 * _PAGE:
        return
    import ctypes  # deferred for start-up speed: only big reads populate

    address = ctypes.addressof(ctypes.c_char.from_buffer(part))
    start = -(-address // _PAGE) * _PAGE
    end = (address + len(part)) // _PAGE * _PAGE
    _madvise()(start, end - start, MADV_POPULATE_WRITE)


@functools.cache
def _madvise() -> Callable[[int, int, int], int]:
    import ctypes  # deferred for start-up speed (see _populate)

    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return madvise


def _file_of(conn: sqlite3.Connection) -> Path | None:
    """The database file behind `conn`, or None for an in-memory database."""
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            return Path(file) if file else None
    return None


class _Readers:
    """A thread pool whose threads each read through their own read-only connection to `path`."""

    def __init__(self, path: Path) -> None:
        self._uri = f"{path.as_uri()}?mode=ro"
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        from concurrent.futures import ThreadPoolExecutor  # deferred for start-up speed: only big reads use it

        self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="durable_nb-read")

    def submit(self, fill: Callable[..., T], *args: Any) -> Future[T]:
        return self._pool.submit(self._run, fill, *args)

    def _run(self, fill: Callable[..., T], *args: Any) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
            self._conns.append(conn)
        return fill(conn, *args)

    def __enter__(self) -> _Readers:
        return self

    def __exit__(self, *_: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for conn in self._conns:
            conn.close()


class BlobStore:
    """Blobs of one log connection. Writes happen through a sink inside the caller's write transaction."""

    def __init__(self, conn: sqlite3.Connection, *, chunk_size: int = CHUNK_SIZE) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.conn = conn
        self.chunk_size = chunk_size

    def sink(self) -> BlobSink:
        return BlobSink(self.conn, self.chunk_size)

    def source(self, blob_id: int) -> BlobSource:
        return BlobSource(self.conn, blob_id)
