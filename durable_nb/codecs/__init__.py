"""How values become bytes: one codec per format, tried in order arrow (pandas) → npy → nprandom (numpy's random
generators) → polars → arrow_ipc (pyarrow) → xarray → sparse → torch → json → tagged → pickle: exact safe codecs
before pickle. A codec for a library accepts nothing while that library is not imported (it checks sys.modules),
and its module is imported only once it may (`_Library`): a script that stores no library's values loads none.

A codec writes its blobs through a `Sink` (one sink per value: `sink.blob_ids` are then exactly the
value's blobs, in the order `decode` expects its sources) and returns a JSON-able `meta` dict.
Heavy libraries are imported inside the codecs, so importing this registry stays cheap.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .. import keys, signing
from ..errors import DecodeError, EncodeError, UntrustedError
from ..record import Record
from . import json, pickle

if TYPE_CHECKING:
    from ..keys import PublicKey
    from .streams import Sink, Source


class Codec(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def safe(self) -> bool: ...  # decoding runs no code from the log

    def accepts(self, value: Any) -> bool: ...

    def encode(self, value: Any, sink: Sink) -> dict[str, Any]: ...

    def decode(self, meta: dict[str, Any], sources: Sequence[Source]) -> Any: ...


class Encoded(Record):
    __match_args__ = ("codec", "version", "meta", "type_name", "size")
    __slots__ = __match_args__

    def __init__(self, codec: str, version: int, meta: dict[str, Any], type_name: str, size: int) -> None:
        self.codec = codec
        self.version = version
        self.meta = meta
        self.type_name = type_name
        self.size = size  # raw bytes of the value's blobs plus inline data


class _Library:
    """The codec of one library's values, imported on first use: while its `library` is not imported no value can
    be one of them, so `accepts` says no without importing the codec's module (durable_nb.codecs.NAME). With no
    library (the tagged codec, of the standard library's types) it is imported when a value first reaches it:
    json takes a script's plain results before it."""

    __slots__ = ("_class", "_codec", "library", "name")

    def __init__(self, name: str, class_name: str, library: str | None) -> None:
        self.name = name
        self.library = library
        self._class = class_name
        self._codec: Codec | None = None

    @property
    def codec(self) -> Codec:
        if self._codec is None:
            self._codec = getattr(importlib.import_module(f"{__name__}.{self.name}"), self._class)()
        return self._codec

    @property
    def version(self) -> int:
        return self.codec.version

    @property
    def safe(self) -> bool:
        return self.codec.safe

    def accepts(self, value: Any) -> bool:
        return (self.library is None or self.library in sys.modules) and self.codec.accepts(value)

    def encode(self, value: Any, sink: Sink) -> dict[str, Any]:
        return self.codec.encode(value, sink)

    def decode(self, meta: dict[str, Any], sources: Sequence[Source]) -> Any:
        return self.codec.decode(meta, sources)


# Safe codecs of one kind of value each; the tagged codec stores them as leaves inside plain containers.
LEAF_CODECS: tuple[Codec, ...] = (_Library("arrow", "ArrowCodec", "pandas"), _Library("npy", "NpyCodec", "numpy"),
                                  _Library("nprandom", "NpRandomCodec", "numpy"),
                                  _Library("polars", "PolarsCodec", "polars"),
                                  _Library("arrow_ipc", "ArrowIpcCodec", "pyarrow"),
                                  _Library("xarray", "XarrayCodec", "xarray"),
                                  _Library("sparse", "SparseCodec", "scipy.sparse"),
                                  _Library("torch", "TorchCodec", "torch"))
PICKLE = pickle.PickleCodec()
CODECS: tuple[Codec, ...] = (*LEAF_CODECS, json.JsonCodec(), _Library("tagged", "TaggedCodec", None), PICKLE)
# Pickle is the one codec whose decoding runs code from the log (a test holds every codec's `safe` to this).
_SAFE = tuple(c for c in CODECS if c is not PICKLE)
SAFE_CODECS = frozenset(c.name for c in _SAFE)
# What a cell's key holds of the codecs: changed only when records written by the codecs of before must no longer
# replay. A new codec, or a new version whose decoder still reads its older records, leaves every log's keys as
# they were (arrow 3, tagged 3 and nprandom did: their first version made every recorded cell of every log miss).
KEY_CODECS: dict[str, int] = {"arrow": 2, "npy": 1, "polars": 1, "arrow_ipc": 1, "xarray": 1, "sparse": 2,
                              "torch": 2, "json": 1, "tagged": 2, "pickle": 3}
_BY_NAME: dict[str, Codec] = {c.name: c for c in CODECS}


def type_name(value: Any) -> str:
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def encode_value(value: Any, sink: Sink) -> Encoded:
    """Encode with the first codec that accepts `value` and round-trips it exactly; pickle is the last resort.
    Raises EncodeError naming the type and why pickle could not take it either."""
    found, reason = _first_codec(CODECS, value, sink)
    if found is None:
        raise EncodeError(f"cannot store a value of type {type_name(value)}: {reason}. Make it picklable, or "
                          "delete it at the end of the cell (del NAME) if it need not survive a replay.")
    return found


def encode_safe(value: Any, sink: Sink) -> Encoded | None:
    """Encode with the first safe codec that takes `value`; None when only pickle would (see PICKLE)."""
    return _first_codec(_SAFE, value, sink)[0]


def _first_codec(codecs: Sequence[Codec], value: Any, sink: Sink) -> tuple[Encoded | None, str]:
    reason = "no codec accepts it"
    for codec in codecs:
        mark = sink.mark()
        try:
            if not codec.accepts(value):
                continue
            meta = codec.encode(value, sink)
        except EncodeError:  # a codec that knows no codec may store this value (a polars LazyFrame)
            sink.discard(mark)
            raise
        except Exception as exc:  # a codec that fails hands the value to the next one
            sink.discard(mark)
            reason = _reason(exc)
            continue
        size = sum(sink.sizes[mark:]) + int(meta.get("inline_size", 0))
        return Encoded(codec.name, codec.version, meta, type_name(value), size), reason
    return None, reason


def seal(meta: dict[str, Any]) -> dict[str, Any]:
    """`meta` with a digest of itself: blobs verify their bytes, this verifies what says how to read them (a
    flipped byte in a dtype or an inline document would otherwise decode a wrong value)."""
    return {**meta, _SEAL: _digest(meta)}


def check_seal(meta: dict[str, Any], where: str) -> None:
    """DecodeError when a sealed `meta` was changed since (metas of older logs carry no seal)."""
    sealed = meta.get(_SEAL)
    if sealed is not None and sealed != _digest({k: v for k, v in meta.items() if k != _SEAL}):
        raise DecodeError(f"{where}: its stored description was modified (the log is damaged); it was not decoded")


_SEAL = "seal"


def _digest(meta: dict[str, Any]) -> str:
    import hashlib
    import json as json_

    text = json_.dumps(meta, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Signed(Record):
    __match_args__ = ("signature", "signer")
    __slots__ = __match_args__

    def __init__(self, signature: str, signer: PublicKey) -> None:
        self.signature = signature  # hex of the Ed25519 signature
        self.signer = signer


def signature(codec: str, version: int, meta: dict[str, Any], hashes: list[str]) -> Signed:
    """This user's Ed25519 signature of a stored value: its codec, version, meta and the content hashes of its
    blobs (never the bytes themselves: the cost is the same for any size)."""
    key = keys.user_key()
    return Signed(key.sign(signing.payload(codec, version, meta, hashes)).hex(), key.public)


class Batch:
    """One signature over the payload digests of many values (the activity results of one flush): verified once,
    however many of its values are read."""

    def __init__(self, signer: PublicKey, digests: bytes, signature: str) -> None:
        self.signer = signer
        self.digests = digests
        self.signature = signature
        self._valid: bool | None = None
        self._members: frozenset[bytes] | None = None

    def holds(self, data: bytes) -> bool:
        """Whether the signer signed the payload `data` in this batch."""
        if self._valid is None:
            self._valid = verifies(self.digests, self.signature, self.signer)
        if self._members is None:
            n = signing.DIGEST_BYTES
            self._members = frozenset(self.digests[i:i + n] for i in range(0, len(self.digests), n))
        return self._valid and signing.digest(data) in self._members


def batch_signature(payloads: Sequence[bytes]) -> tuple[bytes, Signed]:
    """The digests of `payloads`, concatenated, and this user's signature of them."""
    key = keys.user_key()
    digests = b"".join(signing.digest(p) for p in payloads)
    return digests, Signed(key.sign(digests).hex(), key.public)


def distrust(codec: str, version: int, meta: dict[str, Any], hashes: list[str], signature: str | None,
             signer: PublicKey | None, log: str = "LOG", batch: Batch | None = None) -> str | None:
    """None when this value may be decoded here, else why not. A value decodes when its codec runs no code, or
    its Ed25519 signature verifies and the signer is this user or a key this user trusts, or (logs written before
    signer keys) its HMAC verifies with this user's secret. The one trust check in front of every decode (cells,
    activities, history); the reason names the signer and the remedy (commands on `log`). A value signed as part of
    a `batch` is checked against the batch's signature instead of its own."""
    if codec in SAFE_CODECS:
        return None
    data = signing.payload(codec, version, meta, hashes)
    if batch is not None:
        signer = batch.signer
    if signer is None:
        if signing.verify(data, signature):
            return None
        return (f"it is pickled and not signed by you; if you trust its author, review and re-sign the log with "
                f"`durable-nb trust log {_quote(log)}`")
    # Trust first: the stat of a trusted-key file is cheaper than verifying a signature.
    if not keys.TrustedKeys().is_trusted(signer):
        name = _quote(signer.comment or signer.fingerprint)
        return (f"it is pickled and signed by {signer.shown()}, a key you do not trust; to trust them, review "
                f"what they recorded and trust their key with `durable-nb trust user {name} {_quote(log)}`")
    if not (batch.holds(data) if batch is not None else verifies(data, signature, signer)):
        return (f"its signature by {signer.shown()} does not match the value: the log was modified since; the "
                "cell or call runs again")
    return None


def _quote(text: str) -> str:
    import shlex  # deferred for start-up speed: only a miss's remedy quotes a command line

    return shlex.quote(text)


def verifies(data: bytes, signature: str | None, signer: PublicKey) -> bool:
    """Whether `signature` (hex) is `signer`'s Ed25519 signature of `data`, whoever the signer is."""
    try:
        raw = bytes.fromhex(signature or "")
    except ValueError:
        return False
    return keys.verify(signer, raw, data)


def trusted(codec: str, version: int, meta: dict[str, Any], hashes: list[str], signature: str | None,
            signer: PublicKey | None, batch: Batch | None = None) -> bool:
    """May this value be decoded here (see `distrust`)."""
    return distrust(codec, version, meta, hashes, signature, signer, batch=batch) is None


def decode_value(codec: str, version: int, meta: dict[str, Any], sources: Sequence[Source], *,
                 allow_pickle: bool) -> Any:
    """Rebuild a value. Unsafe codecs need `allow_pickle` (checked before any byte is read)."""
    found = _BY_NAME.get(codec)
    if found is None:
        raise DecodeError(f"codec {codec!r} is unknown to this durable_nb (known: {', '.join(_BY_NAME)}); "
                          "upgrade durable_nb (pip install -U durable_nb) to replay this value.")
    if version > found.version:
        raise DecodeError(f"codec {codec} version {version} is newer than this durable_nb reads "
                          f"({found.version}); upgrade durable_nb (pip install -U durable_nb) to replay it.")
    if not found.safe and not allow_pickle:
        raise UntrustedError(f"this value is pickled ({codec}) and its signer is not trusted here: loading it "
                             "would run code from the log. Trust its signer (durable-nb trust user NAME LOG), "
                             "or re-run the cell.")
    return found.decode(meta, sources)

