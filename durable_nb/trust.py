"""Reviewing logs and trusting their signers: `durable-nb verify` checks every stored value; `durable-nb trust user`
trusts a teammate's key after reviewing what they recorded (their values, past and future, replay here) and
`trust add | list | remove` manage those keys (durable_nb.keys); `durable-nb trust log` re-signs a colleague's
whole SQLite log with this user's key after that review. The signatures themselves: codecs.signature/distrust.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from . import keys, signing
from .codecs import CODECS, Batch, signature, trusted, verifies
from .codecs.pickle import _digest
from .errors import DecodeError, LogError, NotALogError, SigningKeyError, UntrustedError
from .keys import PublicKey
from .log import signers
from .log.blobs import BlobSource
from .log.connect import is_postgres
from .log.pg_blobs import PgBlobSource
from .log.store import LogStore
from .pg_url import is_postgres_url


def untrusted_reason(problem: UntrustedError) -> str:
    """The status text of a cell whose record holds a pickled value nobody this user trusts signed."""
    return f"untrusted: {problem}"


def shown(log: object) -> str:
    """A log as the user would type it: a PostgreSQL URL (without password), or a path relative to the working
    directory when inside it."""
    text = str(log)
    return text if is_postgres_url(text) else _shown(text, os.getcwd())


@functools.lru_cache(maxsize=64)  # two resolves (syscalls), and every replay names its log for each output
def _shown(path: str, cwd: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(cwd).resolve()))
    except ValueError:
        return str(Path(path))


# -- reviewing a whole log: verify and trust ------------------------------------------------------------------


@dataclass
class StoredValue:
    """One stored value of a log (a cell output or an activity result) and where its bytes are."""
    where: str
    codec: str
    version: int
    meta: dict[str, Any]
    blob_ids: list[int]
    inline: bytes | None
    signature: str | None
    table: str  # the row holding the signature: output or activity_call
    row_key: tuple[Any, ...]
    # The blobs decoding reads: its own, or for one of a cell's pickled outputs, those of the shared stream.
    reads: list[int] = field(default_factory=list)
    signer: PublicKey | None = None  # None: an HMAC signature (logs older than signer keys), or none
    batch: Batch | None = None  # an activity result signed with the others of its flush

    @property
    def signed_by(self) -> PublicKey | None:
        return self.batch.signer if self.batch is not None else self.signer


@dataclass
class Finding:
    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


@dataclass
class Review:
    """What `verify_log` found. `tampered`: bytes or records that changed after they were written (never
    decoded); `unsigned`: intact pickled values signed by nobody this user trusts (they replay once trusted);
    `signed_by_you`: those signed by this user or a key this user trusts."""
    path: Path
    log: str = ""  # as the user would type it
    blobs: int = 0
    blob_bytes: int = 0
    values: int = 0
    pickled: int = 0
    signed_by_you: int = 0
    tampered: list[Finding] = field(default_factory=list)
    unsigned: list[StoredValue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.tampered

    def lines(self) -> list[str]:
        out = [f"checked {self.blobs} blobs ({self.blob_bytes / 1e6:.1f} MB) and {self.values} stored values "
               f"({self.pickled} pickled) in {self.path}"]
        out += [f"TAMPERED {f}" for f in self.tampered]
        if self.unsigned:
            out.append(f"{len(self.unsigned)} pickled values are signed by nobody you trust (recorded by someone "
                       "else); after reviewing what they recorded, trust their key with durable-nb trust user "
                       f"NAME {shown(self.log)}:")
            out += [f"  untrusted {v.where} ({v.codec}){_by(v)}" for v in self.unsigned]
        if self.ok:
            out.append("no tampering found" + ("" if self.unsigned else
                                                "; every pickled value is signed by you or a key you trust"))
        else:
            out.append(f"{len(self.tampered)} tampered values or blobs: they are treated as missing and never "
                       "decoded; their cells run again when replayed")
        return out


@dataclass
class Trusted:
    """What `trust_log` did: the values it signed, those already signed, those refused (tampered)."""
    path: Path
    signed: list[StoredValue] = field(default_factory=list)
    already: int = 0
    refused: list[Finding] = field(default_factory=list)
    dry_run: bool = False

    def lines(self) -> list[str]:
        verb = "would sign" if self.dry_run else "signed"
        out = [f"{verb} {len(self.signed)} pickled values in {self.path} with your key"
               f" ({self.already} were already signed by you){' (--dry-run: nothing signed)' * self.dry_run}"]
        out += [f"  {verb} {v.where} ({v.codec})" for v in self.signed]
        out += [f"NOT SIGNED {f} — tampered values are never trusted; re-run their cells" for f in self.refused]
        return out


def _by(value: StoredValue) -> str:
    return f", signed by {value.signed_by.shown()}" if value.signed_by is not None else ""


def stored_values(conn: sqlite3.Connection) -> list[StoredValue]:
    """Every value of the log that has a codec: cell outputs, then activity results."""
    blobs: dict[tuple[str, tuple[Any, ...]], list[int]] = {}
    for execution_id, name, blob_id in conn.execute(
            "SELECT execution_id, name, blob_id FROM output_blob ORDER BY execution_id, name, seq"):
        blobs.setdefault(("output", (execution_id, name)), []).append(blob_id)
    for call_id, blob_id in conn.execute("SELECT call_id, blob_id FROM activity_blob ORDER BY call_id, seq"):
        blobs.setdefault(("activity_call", (call_id,)), []).append(blob_id)
    found = []
    for execution_id, name, cell, codec, version, type_name, meta, signed, key, key_name in conn.execute(
            "SELECT o.execution_id, o.name, coalesce(e.cell_name, e.cell_id), o.codec, o.codec_version, o.type, "
            f"o.meta, o.signature, {signers.columns(conn, 'o')} FROM output o JOIN execution e "
            "ON e.id = o.execution_id WHERE o.codec IS NOT NULL ORDER BY o.execution_id, o.rowid"):
        shown = "result" if name == "__result__" else f"variable {name}"
        where = (f"execution {execution_id}{f' (cell {cell})' if cell else ''} {shown} "
                 f"({str(type_name).removeprefix('__main__.')})")
        meta_ = _meta(meta)
        own = blobs.get(("output", (execution_id, name)), [])
        reads = blobs.get(("output", (execution_id, meta_["bundle_of"])), []) if "bundle_of" in meta_ else own
        found.append(StoredValue(where, codec, version or 0, meta_, own, None, signed, "output",
                                 (execution_id, name), reads, signers.public_key(key, key_name)))
    batches = signers.batches(conn)
    batch_of = "batch_id" if batches else "NULL"
    for call_id, function, codec, version, type_name, meta, inline, signed, key, key_name, batch in conn.execute(
            "SELECT id, function, codec, codec_version, type, meta, inline, signature, "
            f"{signers.columns(conn, 'c')}, {batch_of} FROM activity_call c WHERE codec IS NOT NULL ORDER BY id"):
        own = blobs.get(("activity_call", (call_id,)), [])
        found.append(StoredValue(f"activity call {call_id} ({function}) result ({type_name})", codec,
                                 version or 0, _meta(meta), own, None if inline is None else bytes(inline),
                                 signed, "activity_call", (call_id,), own, signers.public_key(key, key_name),
                                 batches.get(batch) if batch is not None else None))
    return found


def _meta(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {"unreadable meta": text}
    return value if isinstance(value, dict) else {"unreadable meta": text}


def verify_log(path: str | os.PathLike[str]) -> Review:
    """Check every blob's content hash, every pickle stream's digest and every pickled value's signature.
    Reads the log read-only; nothing is decoded."""
    with LogStore(path, readonly=True) as log:
        return _review(log.conn, log.path, shown(log))


def trust_log(log: str | os.PathLike[str] | LogStore, *, dry_run: bool = False) -> Trusted:
    """Re-sign with this user's key every intact pickled value (cell outputs and activity results) of a log
    the user has reviewed, so they replay here. Tampered values are refused, never signed."""
    if is_postgres_url(str(log)):
        # Re-signing a shared log would put this user's key on every teammate's value: trust is by key there.
        raise LogError(f"durable-nb trust log re-signs every pickled value with your key, which on the team log "
                       f"{log} would replace your teammates' signatures. Trust a teammate's key instead: "
                       f"durable-nb trust user NAME {log} (after reviewing what they recorded), or durable-nb "
                       "trust add THEIR_KEY.pub.")
    if isinstance(log, LogStore):
        return _trust(log, dry_run)
    if not Path(log).exists():
        raise NotALogError(f"durable log {log} does not exist; check the path (a shared log is usually a "
                           "*.durable.db file sent beside the notebook).")
    with LogStore(log, readonly=False) as opened:
        return _trust(opened, dry_run)


def _trust(log: LogStore, dry_run: bool) -> Trusted:
    review = _review(log.conn, log.path, shown(log))
    done = Trusted(log.path, list(review.unsigned), review.signed_by_you, list(review.tampered), dry_run)
    if dry_run or not done.signed:
        return done
    hashes = dict(log.conn.execute("SELECT id, hash FROM blob").fetchall())
    with log.transaction() as conn:
        signer_id = signers.signer_id(conn, keys.user_key().public)
        for value in done.signed:
            signed = signature(value.codec, value.version, value.meta, _hashes(value, hashes))
            where, batch = ("execution_id = ? AND name = ?", "") if value.table == "output" else \
                ("id = ?", ", batch_id = NULL")
            conn.execute(f"UPDATE {value.table} SET signature = ?, signer_id = ?{batch} WHERE {where}",
                         (signed.signature, signer_id, *value.row_key))
    return done


def _hashes(value: StoredValue, blob_hashes: dict[int, str]) -> list[str]:
    if value.inline is not None:
        import xxhash

        return [xxhash.xxh3_128_hexdigest(value.inline)]
    return [blob_hashes[b] for b in value.blob_ids]


def source(conn: sqlite3.Connection, blob_id: int) -> BlobSource:
    return PgBlobSource(conn, blob_id) if is_postgres(conn) else BlobSource(conn, blob_id)


def _review(conn: sqlite3.Connection, path: Path, log: str) -> Review:

    safe = {c.name: c.safe for c in CODECS}
    review = Review(path, log)
    values = stored_values(conn)
    bad_blobs, hashes = _check_blobs(conn, review, values)
    for value in values:
        review.values += 1
        problems = [bad_blobs[b] for b in value.reads if b in bad_blobs]
        problems += [f"blob {b} is missing from the log" for b in value.reads if b not in hashes]
        if value.inline is not None and value.codec == "pickle" and _stream_digest(value.inline) != \
                value.meta.get("blake2b"):
            problems.append("the pickle stream does not match its recorded BLAKE2b digest")
        if problems:
            review.tampered.append(Finding(value.where, "; ".join(dict.fromkeys(problems))))
        if safe.get(value.codec, False):
            continue
        review.pickled += 1
        if problems:
            continue
        value_hashes = _hashes(value, hashes)
        data = signing.payload(value.codec, value.version, value.meta, value_hashes)
        # A signature that does not match is tampering whoever the signer is; trusting them would not help.
        signer = value.signed_by
        if signer is not None and not (value.batch.holds(data) if value.batch is not None else
                                       verifies(data, value.signature, signer)):
            review.tampered.append(Finding(value.where, f"its signature by {signer.shown()} does not match the "
                                                        "value"))
        elif trusted(value.codec, value.version, value.meta, value_hashes, value.signature, value.signer,
                     value.batch):
            review.signed_by_you += 1
        else:
            review.unsigned.append(value)
    return review


def _pickle_streams(values: list[StoredValue]) -> dict[int, set[str]]:
    """blob id → the BLAKE2b digests that the pickled values whose main stream it is recorded for it."""
    streams: dict[int, set[str]] = {}
    for value in values:
        if value.codec == "pickle" and value.blob_ids:
            streams.setdefault(value.blob_ids[0], set()).add(str(value.meta.get("blake2b")))
    return streams


def _check_blobs(conn: sqlite3.Connection, review: Review,
                 values: list[StoredValue]) -> tuple[dict[int, str], dict[int, str]]:
    """Read every blob once through BlobSource (which verifies its content hash) into one reused buffer;
    returns the failures and the hashes by blob id."""
    streams = _pickle_streams(values)

    rows = conn.execute("SELECT id, hash, size FROM blob ORDER BY id").fetchall()
    buffer = bytearray(max((r[2] for r in rows if isinstance(r[2], int)), default=0))
    bad: dict[int, str] = {}
    for blob_id, blob_hash, size in rows:
        if not isinstance(size, int) or size < 0 or not isinstance(blob_hash, str):
            bad[blob_id] = f"the row of blob {blob_id} is damaged (size {size!r}, hash {blob_hash!r})"
            continue
        review.blobs += 1
        review.blob_bytes += size
        view = memoryview(buffer)[:size]
        try:
            source(conn, blob_id).readinto(view)
        except DecodeError:
            bad[blob_id] = f"blob {blob_hash} ({size} bytes) fails its content hash"
            continue
        if blob_id in streams and streams[blob_id] != {_stream_digest(view)}:
            bad[blob_id] = f"the pickle stream in blob {blob_hash} does not match its recorded BLAKE2b digest"
    users = {b for v in values for b in v.blob_ids}
    review.tampered += [Finding(f"blob {blob_hash} (used by no value)", bad[blob_id])
                        for blob_id, blob_hash, _ in rows if blob_id in bad and blob_id not in users]
    return bad, {r[0]: r[1] for r in rows}


def _stream_digest(data: bytes | bytearray | memoryview) -> str:

    # The pickle codec's own digest function: one definition of what its meta records (hashlib takes views).
    return _digest(cast(bytes, data))


# -- trust across a team: teammates' public keys -------------------------------------------------------------


def public_key() -> keys.PublicKey:
    """This user's public key (created on first use): what a teammate trusts with `durable-nb trust add`."""
    return keys.user_key().public


def trust_add(keyfile: str | os.PathLike[str], name: str | None = None) -> keys.PublicKey:
    """Trust the public key in `keyfile` (a teammate's signing_key.pub): values it signed, past and future,
    replay here."""
    return keys.TrustedKeys().add_file(keyfile, name)


def trust_list() -> list[keys.PublicKey]:
    """The keys whose values replay here: this user's own first, then the trusted ones by name."""
    return [public_key(), *keys.TrustedKeys().listed()]


def trust_remove(query: str) -> keys.PublicKey:
    """Stop trusting the trusted key named `query` (its name, fingerprint or a prefix of it, or its hex)."""
    if keys.matching([public_key()], query) and not keys.matching(keys.TrustedKeys().listed(), query):
        raise SigningKeyError(f"{query!r} is your own key, which is always trusted: it cannot be removed")
    return keys.TrustedKeys().remove(query)


@dataclass
class SignerReview:
    """What `trust_user` found of one signer's values in a log, and whether it trusted their key."""
    log: str
    key: PublicKey
    values: list[StoredValue]
    tampered: list[Finding]
    dry_run: bool
    yours: bool

    @property
    def trusted(self) -> bool:
        return self.yours or (not self.dry_run and not self.tampered)

    def lines(self) -> list[str]:
        cells = {v.where.split(" variable ")[0] for v in self.values if v.table == "output"}
        calls = sum(v.table == "activity_call" for v in self.values)
        types = sorted({v.where.rsplit("(", 1)[-1].rstrip(")") for v in self.values})
        out = [f"{self.key.shown()} signed {len(self.values)} pickled values in {self.log}: "
               f"{len(cells)} cell executions, {calls} activity results; types: {', '.join(types) or 'none'}"]
        out += [f"  {v.where} ({v.codec})" for v in self.values]
        out += [f"TAMPERED {f}" for f in self.tampered]
        if self.yours:
            out.append("this is your own key: its values always replay here")
        elif self.tampered:
            out.append(f"NOT TRUSTED: {len(self.tampered)} of the values signed by this key were modified since; "
                       "find out who changed the log before trusting its signer")
        elif self.dry_run:
            out.append("--dry-run: nothing trusted; run again without --dry-run to trust this key")
        else:
            name = shlex.quote(self.key.comment or self.key.fingerprint)
            out.append(f"trusted {self.key.shown()}: their values, past and future, replay here (undo with "
                       f"durable-nb trust remove {name})")
        return out


def trust_user(name: str, log: str | os.PathLike[str], *, dry_run: bool = False) -> SignerReview:
    """Review what the signer `name` (their key's name, fingerprint or a prefix of it) recorded in `log`, then
    trust their key unless some of it was tampered with (or `dry_run`)."""
    with LogStore(log, readonly=True) as opened:
        known = [key for _, key in signers.listed(opened.conn)]
        found = keys.matching(known, name)
        if len(found) != 1:
            listed = "; ".join(k.shown() for k in known) or "none"
            problem = f"{len(found)} signers match" if found else "no signer matches"
            raise SigningKeyError(f"{problem} {name!r} in {shown(opened)} (its signers: {listed}); give a "
                                  "fingerprint from that list")
        key = found[0]
        review = _review(opened.conn, opened.path, shown(opened))
        values = [v for v in stored_values(opened.conn) if v.signed_by is not None and v.signed_by.same_key(key)]
        where = {v.where for v in values}
        done = SignerReview(shown(opened), key, values, [f for f in review.tampered if f.where in where], dry_run,
                            key.same_key(public_key()))
    if done.trusted and not done.yours:
        keys.TrustedKeys().add(key)
    return done
