"""Blobs on PostgreSQL: the blob store of log/blobs.py (content hash, chunking, compression where it pays,
verification on every read) with chunks as bytea rows in the database's shared blob schema (pg_schema).

Deduplication across the whole database: a blob is claimed by its content hash under a transaction-scoped
advisory lock on that hash, so two kernels storing the same bytes at the same moment store them once (the
second waits for the first to commit, then finds its row). Chunks are sent and received in binary, one 8 MiB
chunk at a time: neither a write nor a read makes a whole-size copy.
"""

from __future__ import annotations

from typing import Any

from .blobs import BlobSink, BlobSource, BlobStore, _ChunkWriter, _leaves

# Advisory locks share the server's lock table (max_locks_per_transaction × connections): hashes are folded into
# this many lock ids, so a cell storing thousands of blobs holds at most this many locks.
_LOCK_BUCKETS = 4096
_LOCK_SPACE = 0x626c6f62 << 16  # "blob": keeps our advisory lock ids apart from the migration lock


class _PgChunkWriter(_ChunkWriter):
    def write(self, data: memoryview) -> None:
        payload, compression = self._maybe_compress(data)
        self.conn.execute("INSERT INTO chunk (blob_id, seq, raw_size, compression, data) VALUES (?, ?, ?, ?, ?)",
                          (self.blob_id, self.seq, len(data), compression, payload))
        self.seq += 1
        self.stored += len(payload)


class PgBlobSink(BlobSink):
    chunk_writer = _PgChunkWriter

    def _existing(self, digest: str) -> int | None:
        # Every claim of a hash (put, or a streamed blob's close) asks here first: the lock makes "not there
        # yet, so insert it" atomic across kernels until this transaction ends.
        self.conn.execute("SELECT pg_advisory_xact_lock(? + mod(abs(hashtext(?)), ?))",
                          (_LOCK_SPACE, digest, _LOCK_BUCKETS))
        return super()._existing(digest)


class PgBlobSource(BlobSource):
    def _fill_all(self, parts: list[tuple[int, str, memoryview]], leaves: bool) -> list[list[bytes]]:
        return [self._fill(self._conn, rowid, compression, part, leaves) for rowid, compression, part in parts]

    def _fill_chunk(self, conn: Any, rowid: int, compression: str, part: memoryview, leaves: bool) -> list[bytes]:
        if compression != "none":
            return super()._fill_chunk(conn, rowid, compression, part, leaves)
        row = conn.execute("SELECT data FROM chunk WHERE id = ?", (rowid,)).fetchone()
        if row is None or len(row[0]) != len(part):
            raise self._tampered()
        part[:] = row[0]
        return _leaves(part) if leaves else []


class PgBlobStore(BlobStore):
    def sink(self) -> PgBlobSink:
        return PgBlobSink(self.conn, self.chunk_size)

    def source(self, blob_id: int) -> PgBlobSource:
        return PgBlobSource(self.conn, blob_id)
