from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xxhash

from durable_nb.errors import DecodeError
from durable_nb.log.blobs import BlobStore
from durable_nb.log.connect import connect, write_transaction


@pytest.fixture
def log(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, Path]]:
    path = tmp_path / "x.durable.db"
    conn = connect(path)
    yield conn, path
    conn.close()


def _put(conn: sqlite3.Connection, path: Path, data: object, chunk_size: int = 1024) -> int:
    with write_transaction(conn, path):
        return BlobStore(conn, chunk_size=chunk_size).sink().put(data)


def _chunks(conn: sqlite3.Connection, blob_id: int) -> list[tuple[int, int, str]]:
    return conn.execute("SELECT seq, raw_size, compression FROM chunk WHERE blob_id = ? ORDER BY seq",
                        (blob_id,)).fetchall()


def test_put_read_round_trip_multi_chunk(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    data = os.urandom(5000)
    blob_id = _put(conn, path, data)
    source = BlobStore(conn).source(blob_id)
    assert source.size == 5000
    assert source.hash == xxhash.xxh3_128_hexdigest(data)
    assert bytes(source.read()) == data
    assert [(seq, size) for seq, size, _ in _chunks(conn, blob_id)] == [(0, 1024), (1, 1024), (2, 1024),
                                                                        (3, 1024), (4, 904)]


def test_readinto_fills_a_preallocated_array(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    arr = np.random.default_rng(0).random((300, 7))
    blob_id = _put(conn, path, arr)
    out = np.empty_like(arr)
    BlobStore(conn).source(blob_id).readinto(out)
    assert np.array_equal(out, arr)


def test_fortran_order_buffer_is_stored_without_copy_error(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    arr = np.asfortranarray(np.arange(60.0).reshape(6, 10))
    blob_id = _put(conn, path, arr)
    assert bytes(BlobStore(conn).source(blob_id).read()) == arr.tobytes(order="F")


def test_empty_blob(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    blob_id = _put(conn, path, b"")
    assert BlobStore(conn).source(blob_id).read() == bytearray()
    assert _chunks(conn, blob_id) == []


def test_same_content_is_stored_once(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    data = os.urandom(3000)
    first = _put(conn, path, data)
    second = _put(conn, path, bytearray(data))
    with write_transaction(conn, path):
        sink = BlobStore(conn, chunk_size=1024).sink()
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
        sink = BlobStore(conn, chunk_size=1024).sink()
        writer = sink.writer()
        writer.write(data[:10])
        writer.write(memoryview(data)[10:5000])  # spans several whole chunks
        writer.write(data[5000:])
        writer.close()
    source = BlobStore(conn).source(writer.blob_id)
    assert source.hash == xxhash.xxh3_128_hexdigest(data)
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
    BlobStore(conn).source(flat).readinto(out)
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
        BlobStore(conn).source(blob_id).read()


def test_missing_chunk_fails_verification(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    blob_id = _put(conn, path, os.urandom(3000))
    with write_transaction(conn, path):
        conn.execute("DELETE FROM chunk WHERE blob_id = ? AND seq = 2", (blob_id,))
    with pytest.raises(DecodeError, match="failed verification"):
        BlobStore(conn).source(blob_id).read()


def test_discard_removes_blobs_created_since_mark(log: tuple[sqlite3.Connection, Path]) -> None:
    conn, path = log
    kept = _put(conn, path, b"kept")
    with write_transaction(conn, path):
        sink = BlobStore(conn).sink()
        sink.put(b"first")
        mark = sink.mark()
        sink.put(b"kept")  # existed before this sink: must survive
        sink.put(b"dropped")
        sink.discard(mark)
    assert len(sink.blob_ids) == 1
    assert {r[0] for r in conn.execute("SELECT hash FROM blob")} == {
        xxhash.xxh3_128_hexdigest(b"kept"), xxhash.xxh3_128_hexdigest(b"first")}
    assert BlobStore(conn).source(kept).read() == b"kept"


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
        sink = BlobStore(conn, chunk_size=1024).sink()
        blob_id = sink.put(data)
        assert bytes(BlobStore(conn).source(blob_id).read()) == data
    assert bytes(BlobStore(conn).source(blob_id).read()) == data
