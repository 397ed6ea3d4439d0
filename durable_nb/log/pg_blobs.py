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
from .pg_connect import quote_ident

# Advisory locks share the server's lock table (max_locks_per_transaction × connections): hashes are folded into
# this many lock ids, so a cell storing thousands of blobs holds at most this many locks.
_LOCK_BUCKETS = 4096
_LOCK_SPACE = 0x626c6f62 << 16  # "blob": keeps our advisory lock ids apart from the migration lock


def _hash_lock(digest_sql: str) -> str:
    """The advisory lock id of a content hash (an SQL expression of `digest_sql`)."""
    return f"{_LOCK_SPACE} + mod(abs(hashtext({digest_sql})), {_LOCK_BUCKETS})"


def referencing_sql(conn: Any) -> str:
    """SQL of every blob id some log of this database uses: the blob schema is shared, so gc of one log must
    count the references of all of them."""
    rows = conn.execute("SELECT table_schema, table_name FROM information_schema.tables WHERE table_name IN "
                        "('output_blob', 'activity_blob') ORDER BY 1, 2").fetchall()
    return " UNION ".join(f"SELECT blob_id FROM {quote_ident(schema)}.{table}" for schema, table in rows)


def lock_unclaimed(conn: Any, blob_ids: list[int]) -> list[int]:
    """Inside a transaction: the blobs of `blob_ids` whose hash lock this transaction now holds. A writer that
    reuses a stored blob holds its lock until it commits the reference; gc deletes only what it could lock, and
    only tries (never waits), so it never joins a writer in a deadlock. A blob skipped now is left for the next
    gc."""
    marks = ",".join("?" * len(blob_ids))
    return [r[0] for r in conn.execute(
        f"SELECT id FROM blob WHERE id IN ({marks}) AND pg_try_advisory_xact_lock({_hash_lock('hash')})",
        blob_ids).fetchall()]


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
        self.conn.execute(f"SELECT pg_advisory_xact_lock({_hash_lock('?')})", (digest,))
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
