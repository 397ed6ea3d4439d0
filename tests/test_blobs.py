from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import platform
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xxhash
from backends import is_postgres, only

from durable_nb.errors import DecodeError
from durable_nb.log import blobs
from durable_nb.log.blobs import BlobStore, ContentHash, content_hash
from durable_nb.log.connect import connect, write_transaction
from durable_nb.log.connect import is_postgres as is_postgres_conn
from durable_nb.log.pg_blobs import PgBlobStore
from durable_nb.log.store import LogStore

BOTH_BACKENDS = True
READER_THREADS = "reader threads (each on its own read-only connection) are how SQLite logs read big blobs"


@pytest.fixture
def log(log_location: Path | str) -> Iterator[tuple[sqlite3.Connection, Path]]:
    if not is_postgres(log_location):
        conn = connect(log_location)
        yield conn, Path(log_location)
        conn.close()
        return
    with LogStore(log_location, readonly=False) as store:
        yield store.conn, store.path


def store(conn: sqlite3.Connection, chunk_size: int = blobs.CHUNK_SIZE) -> BlobStore:
    return (PgBlobStore if is_postgres_conn(conn) else BlobStore)(conn, chunk_size=chunk_size)


def _put(conn: sqlite3.Connection, path: Path, data: object, chunk_size: int = 1024) -> int:
    with write_transaction(conn, path):
        return store(conn, chunk_size=chunk_size).sink().put(data)


def _chunks(conn: sqlite3.Connection, blob_id: int) -> list[tuple[int, int, str]]:
    return conn.execute("SELECT seq, raw_size, compression FROM chunk WHERE blob_id = ? ORDER BY seq",
                        (blob_id,)).fetchall()


def test_put_read_round_trip_multi_chunk(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    data = os.urandom(5000)
    blob_id = _put(conn, path, data)
    source = store(conn).source(blob_id)
    assert source.size == 5000
    assert source.hash == content_hash(data) and source.hash.startswith("tree:")
    assert bytes(source.read()) == data
    assert [(seq, size) for seq, size, _ in _chunks(conn, blob_id)] == [(0, 1024), (1, 1024), (2, 1024),
                                                                        (3, 1024), (4, 904)]


def test_readinto_fills_a_preallocated_array(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    arr = np.random.default_rng(0).random((300, 7))
    blob_id = _put(conn, path, arr)
    out = np.empty_like(arr)
    store(conn).source(blob_id).readinto(out)
    assert np.array_equal(out, arr)


def test_fortran_order_buffer_is_stored_without_copy_error(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    arr = np.asfortranarray(np.arange(60.0).reshape(6, 10))
    blob_id = _put(conn, path, arr)
    assert bytes(store(conn).source(blob_id).read()) == arr.tobytes(order="F")


def test_empty_blob(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    blob_id = _put(conn, path, b"")
    assert store(conn).source(blob_id).read() == bytearray()
    assert _chunks(conn, blob_id) == []


def test_same_content_is_stored_once(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    data = os.urandom(3000)
    first = _put(conn, path, data)
    second = _put(conn, path, bytearray(data))
    with write_transaction(conn, path):
        sink = store(conn, chunk_size=1024).sink()
        with sink.writer() as writer:
            for start in range(0, 3000, 700):
                writer.write(data[start:start + 700])
    assert first == second == writer.blob_id
    assert sink.blob_ids == [first]
    assert conn.execute("SELECT count(*) FROM blob").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM chunk").fetchone()[0] == 3


def test_streaming_writer_matches_put(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    data = os.urandom(10_000)
    with write_transaction(conn, path):
        sink = store(conn, chunk_size=1024).sink()
        writer = sink.writer()
        writer.write(data[:10])
        writer.write(memoryview(data)[10:5000])  # spans several whole chunks
        writer.write(data[5000:])
        writer.close()
    source = store(conn).source(writer.blob_id)
    assert source.hash == content_hash(data) and source.hash.startswith("tree:")
    assert bytes(source.read()) == data
    assert all(size == 1024 for _, size, _ in _chunks(conn, writer.blob_id)[:-1])
    assert conn.execute("SELECT count(*) FROM blob WHERE hash LIKE 'pending:%'").fetchone()[0] == 0


def test_compression_only_where_it_pays(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    random_floats = np.random.default_rng(1).random(100_000)
    ids = np.arange(100_000)  # zstd makes them about 7x smaller: not worth a slower replay
    zeros = np.zeros(100_000)
    noisy = _put(conn, path, random_floats, chunk_size=256 * 1024)
    counting = _put(conn, path, ids, chunk_size=256 * 1024)
    flat = _put(conn, path, zeros, chunk_size=256 * 1024)
    assert {c for _, _, c in _chunks(conn, noisy)} == {c for _, _, c in _chunks(conn, counting)} == {"none"}
    assert {c for _, _, c in _chunks(conn, flat)} == {"zstd"}
    stored = dict(conn.execute("SELECT id, stored_size FROM blob").fetchall())
    assert stored[noisy] == random_floats.nbytes
    assert stored[flat] < zeros.nbytes / 50
    out = np.empty_like(zeros)
    store(conn).source(flat).readinto(out)
    assert np.array_equal(out, zeros)


@pytest.mark.parametrize("content", [b"\x00" * 4000, os.urandom(4000)], ids=["compressed", "raw"])
def test_flipped_byte_fails_verification(log: tuple[sqlite3.Connection, Path], content: bytes) -> None:
    conn, path = log
    blob_id = _put(conn, path, content)
    (rowid, data) = conn.execute("SELECT id, data FROM chunk WHERE blob_id = ? AND seq = 1",
                                 (blob_id,)).fetchone()
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0x01
    with write_transaction(conn, path):
        conn.execute("UPDATE chunk SET data = ? WHERE id = ?", (bytes(tampered), rowid))
    with pytest.raises(DecodeError, match="failed verification: the log was modified"):
        store(conn).source(blob_id).read()


def test_missing_chunk_fails_verification(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    blob_id = _put(conn, path, os.urandom(3000))
    with write_transaction(conn, path):
        conn.execute("DELETE FROM chunk WHERE blob_id = ? AND seq = 2", (blob_id,))
    with pytest.raises(DecodeError, match="failed verification"):
        store(conn).source(blob_id).read()


def test_discard_removes_blobs_created_since_mark(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    kept = _put(conn, path, b"kept")
    with write_transaction(conn, path):
        sink = store(conn).sink()
        sink.put(b"first")
        mark = sink.mark()
        sink.put(b"kept")  # existed before this sink: must survive
        sink.put(b"dropped")
        sink.discard(mark)
    assert len(sink.blob_ids) == 1
    assert {r[0] for r in conn.execute("SELECT hash FROM blob")} == {
        content_hash(b"kept"), content_hash(b"first")}
    assert store(conn).source(kept).read() == b"kept"


def test_non_contiguous_buffer_is_refused(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    with pytest.raises(TypeError, match="contiguous"):
        _put(conn, path, np.arange(10.0)[::2])


def test_multi_chunk_blob_reads_the_same_inside_and_outside_a_transaction(
        log: tuple[sqlite3.Connection, Path]) -> None:
    """Outside a transaction several threads read the chunks through their own connections; inside one (where
    those connections could not see uncommitted rows) the reading connection does it alone."""
    conn, path = log
    data = os.urandom(10_000)
    with write_transaction(conn, path):
        sink = store(conn, chunk_size=1024).sink()
        blob_id = sink.put(data)
        assert bytes(store(conn).source(blob_id).read()) == data
    assert bytes(store(conn).source(blob_id).read()) == data


@only("sqlite", reason=READER_THREADS)
def test_a_bad_chunk_read_by_a_reader_thread_fails_cleanly(log: tuple[sqlite3.Connection, Path]) -> None:
    """The threads filling later chunks wait for the hash of earlier ones: a chunk that cannot be read must
    end the read with a clear error, not leave them waiting."""
    conn, path = log
    blob_id = _put(conn, path, os.urandom(8 * 1024))
    conn.execute("UPDATE chunk SET data = zeroblob(10) WHERE blob_id = ? AND seq = 2", (blob_id,))
    with pytest.raises(DecodeError, match="failed verification"):
        store(conn).source(blob_id).read()


def test_content_hash_is_the_same_however_the_bytes_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blobs, "PIECE", 100)
    data = os.urandom(1050)
    streamed = ContentHash()
    cuts = [0, 7, 100, 101, 350, 1000, 1050]
    for start, end in itertools.pairwise(cuts):
        streamed.update(data[start:end])
    assert streamed.size == len(data) and streamed.hexdigest() == content_hash(data)
    assert content_hash(data) != content_hash(data[:-1]) != content_hash(b"")


@only("sqlite", reason=READER_THREADS)
@pytest.mark.parametrize("flip", [None, 0, 2600], ids=["intact", "first-piece", "later-chunk"])
def test_reader_threads_verify_the_pieces_they_copy(log: tuple[sqlite3.Connection, Path],
                                                    monkeypatch: pytest.MonkeyPatch, flip: int | None) -> None:
    """Chunks that start on piece boundaries are hashed piece by piece by the threads that fill them."""
    monkeypatch.setattr(blobs, "PIECE", 256)
    conn, path = log
    data = os.urandom(5000)
    blob_id = _put(conn, path, data)
    if flip is not None:
        rowid, offset = conn.execute("SELECT id, ? - seq * 1024 FROM chunk WHERE blob_id = ? AND seq = ?",
                                     (flip, blob_id, flip // 1024)).fetchone()
        with conn.blobopen("chunk", "data", rowid) as chunk:
            chunk[offset] = chunk[offset] ^ 0xFF
        with pytest.raises(DecodeError, match="failed verification"):
            store(conn).source(blob_id).read()
    else:
        assert bytes(store(conn).source(blob_id).read()) == data


def test_blobs_of_older_logs_keep_their_plain_hash(log: tuple[sqlite3.Connection, Path]) -> None:
    """Logs written before the piece-wise hash name blobs by the xxh3_128 of their whole content."""
    conn, path = log
    data = os.urandom(5000)
    blob_id = _put(conn, path, data)
    conn.execute("UPDATE blob SET hash = ? WHERE id = ?", (xxhash.xxh3_128_hexdigest(data), blob_id))
    assert bytes(store(conn).source(blob_id).read()) == data
    conn.execute("UPDATE chunk SET data = ? WHERE blob_id = ? AND seq = 1", (os.urandom(1024), blob_id))
    with pytest.raises(DecodeError, match="failed verification"):
        store(conn).source(blob_id).read()


def _resident_pages(area: mmap.mmap) -> list[bool]:
    """Which pages of `area` are in memory (mincore), without touching them."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    pages = len(area) // mmap.PAGESIZE
    vector = ctypes.create_string_buffer(pages)
    holder = ctypes.c_char.from_buffer(area)
    assert libc.mincore(ctypes.addressof(holder), len(area), vector) == 0, os.strerror(ctypes.get_errno())
    del holder
    return [bool(b & 1) for b in vector.raw]


@pytest.mark.skipif(sys.platform != "linux" or tuple(map(int, platform.release().split(".")[:2])) < (5, 14),
                    reason="MADV_POPULATE_WRITE needs Linux 5.14 or later")
def test_reads_map_the_pages_of_their_target_before_filling_it() -> None:
    area = mmap.mmap(-1, 16 * mmap.PAGESIZE)
    assert not any(_resident_pages(area))
    view = memoryview(area)
    blobs._populate(view[100:-100])
    del view
    # Only the whole pages inside the part: the edges may belong to a neighbour's part, filled by another thread.
    assert _resident_pages(area) == [False] + [True] * 14 + [False]
    assert area[:] == bytes(len(area))  # mapped, not written
    area.close()
