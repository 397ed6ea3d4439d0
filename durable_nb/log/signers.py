"""The `signer` table: one row per Ed25519 public key that signed a stored value of this log (durable_nb.keys).

A signed row references its signer by id rather than carrying 32 bytes of key, and a reader learns who signed a
value, and under which name, from this table. Logs older than migration 7 have no such table: their signatures
are HMACs of their recorder's secret (durable_nb.signing), and their rows read as signed by no key. The
`signed_batch` table holds one signature over many activity results (codecs.Batch), referenced by their batch_id.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..keys import PublicKey
from .connect import applied_version

if TYPE_CHECKING:
    from ..codecs import Batch

SIGNERS_SINCE = 7  # the migration that added the table and the signer_id columns



def of(alias: str) -> str:
    """Two select-list expressions: the key and the name of the signer of the rows of `alias` (scalar subqueries,
    for the writers' logs, which are always migrated)."""
    return (f"(SELECT s.public_key FROM signer s WHERE s.id = {alias}.signer_id), "
            f"(SELECT s.name FROM signer s WHERE s.id = {alias}.signer_id)")


def signer_id(conn: sqlite3.Connection, key: PublicKey) -> int:
    """The id of `key` in this log, added on its first use (inside the caller's transaction)."""
    found = conn.execute("SELECT id FROM signer WHERE public_key = ?", (key.raw,)).fetchone()
    if found is None:
        # Two writers adding the same key at once: the second's insert does nothing and it reads the first's row.
        conn.execute("INSERT INTO signer (public_key, name) VALUES (?, ?) ON CONFLICT (public_key) DO NOTHING",
                     (key.raw, key.comment))
        found = conn.execute("SELECT id FROM signer WHERE public_key = ?", (key.raw,)).fetchone()
    return int(found[0])


def has_signers(conn: sqlite3.Connection) -> bool:
    """Whether this log knows signers (a log opened read-only keeps the schema it was written with)."""
    return applied_version(conn) >= SIGNERS_SINCE


def columns(conn: sqlite3.Connection, alias: str) -> str:
    """`of(alias)` for a reader of a log that may be older (then two NULLs: no value has a signer key)."""
    return of(alias) if has_signers(conn) else "NULL, NULL"


def public_key(raw: bytes | memoryview | None, name: str | None) -> PublicKey | None:
    """A signer as read back from a row of `columns`."""
    return None if raw is None else PublicKey(bytes(raw), name or "")


def listed(conn: sqlite3.Connection) -> list[tuple[int, PublicKey]]:
    if not has_signers(conn):
        return []
    return [(int(i), PublicKey(bytes(raw), name or ""))
            for i, raw, name in conn.execute("SELECT id, public_key, name FROM signer ORDER BY id")]


def add_batch(conn: sqlite3.Connection, signer: int, digests: bytes, signature: str) -> int:
    """A signed batch (codecs.Batch) of this log, inside the caller's transaction; its id."""
    (found,) = conn.execute("INSERT INTO signed_batch (signer_id, digests, signature) VALUES (?, ?, ?) "
                            "RETURNING id", (signer, digests, signature)).fetchone()
    return int(found)


def batches(conn: sqlite3.Connection, ids: Iterable[int] | None = None) -> dict[int, Batch]:
    """The signed batches `ids` (all of them when None), by id."""
    from ..codecs import Batch  # deferred for start-up speed: the codecs package loads every codec module

    if not has_signers(conn):
        return {}
    sql = ("SELECT b.id, s.public_key, s.name, b.digests, b.signature FROM signed_batch b "
           "JOIN signer s ON s.id = b.signer_id")
    wanted = None if ids is None else sorted(set(ids))
    if wanted is not None:
        if not wanted:
            return {}
        sql += f" WHERE b.id IN ({', '.join('?' * len(wanted))})"
    return {int(i): Batch(PublicKey(bytes(raw), name or ""), bytes(digests), signature)
            for i, raw, name, digests, signature in conn.execute(sql, tuple(wanted or ()))}
