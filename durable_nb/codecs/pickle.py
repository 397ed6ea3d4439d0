"""The last resort: cloudpickle, protocol 5, with out-of-band buffers.

The main stream is one blob and each out-of-band buffer (array data, Arrow buffers, torch tensors inside
modules and optimizers — version 2) another,
stored without a copy; decoding hands writable bytearrays back as the buffers. Unpickling runs code, so this
codec is not `safe`, and the main stream's blake2b digest (collision-resistant, unlike the blob's xxh3) is
kept in meta, which the trust module signs, and checked before anything is unpickled.

A cell's pickled outputs are one stream (a bundle), so objects they share (`fig` and the `ax` drawn into it)
are still shared after a replay; objects the stream reaches that are stored elsewhere — a variable the cell
read and left alone, an output stored by a safe codec — are written as references to them by name
(pickle's persistent ids) and come back as those very objects. Open files are refused, never turned into
something else (cloudpickle would make them StringIO copies).
"""

from __future__ import annotations

import functools
import io
import os
import sys
from collections import ChainMap
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ..errors import DecodeError

if TYPE_CHECKING:
    import pickle

    from .streams import Sink, Source

PROTOCOL = 5


class _Sink(Protocol):
    def put(self, buffer: Any) -> int: ...


class _Discard:
    def put(self, buffer: Any) -> int:
        return 0


class PickleCodec:
    name = "pickle"
    version = 3  # 2: torch tensors out of band; 3: with their strides (older versions decode the same way)
    safe = False

    def accepts(self, value: Any) -> bool:
        return True

    def encode(self, value: Any, sink: Sink) -> dict[str, Any]:
        meta, _ = _dump(value, {}, sink)
        return meta

    def decode(self, meta: dict[str, Any], sources: Sequence[Source]) -> Any:
        return load(meta, sources, _no_references)

    def encode_bundle(self, values: list[Any], references: dict[int, str], sink: Sink) -> dict[str, Any]:
        """Pickle `values` as one stream (a list); an object whose id is in `references` is written as that
        name. meta["references"] lists the names used."""
        meta, used = _dump(values, references, sink)
        return {**meta, "references": sorted(used)}


def problem(value: Any, references: dict[int, str]) -> str | None:
    """Why `value` cannot be pickled (with those references), or None: pickles it into nothing."""
    try:
        _dump(value, references, _Discard())
    except Exception as exc:
        return str(exc) or type(exc).__name__
    return None


def load(meta: dict[str, Any], sources: Sequence[Source], resolve: Callable[[str], Any]) -> Any:
    """Unpickle a value or a bundle; `resolve(name)` gives the object a reference names."""
    if len(sources) != 1 + meta["buffers"]:
        raise DecodeError(f"pickled value expects {1 + meta['buffers']} blobs, the log lists "
                          f"{len(sources)}: the log was modified or is incomplete; re-run the cell.")
    main = sources[0].read()
    if _digest(main) != meta["blake2b"]:
        raise DecodeError(f"pickled value in blob {sources[0].hash} does not match its recorded digest: "
                          "the log was modified; it was not unpickled. Re-run the cell to record it "
                          "again.")
    buffers = [source.read() for source in sources[1:]]
    import pickle  # deferred for start-up speed: a script's first call need not unpickle anything

    unpickler = pickle.Unpickler(io.BytesIO(main), buffers=buffers)
    unpickler.persistent_load = resolve  # type: ignore[method-assign]
    return unpickler.load()


def _dump(value: Any, references: dict[int, str], sink: _Sink) -> tuple[dict[str, Any], set[str]]:
    buffers: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    used: set[str] = set()

    def persistent_id(obj: Any) -> str | None:
        name = references.get(id(obj))
        if name is not None:
            used.add(name)
        return name

    # pickle calls persistent_id for every object it writes: only give it one when it can hit.
    _pickler_class()(stream, PROTOCOL, buffers.append, persistent_id if references else None).dump(value)
    main = stream.getbuffer()
    sink.put(main)
    for buffer in buffers:
        sink.put(buffer.raw())
    return {"blake2b": _digest(main), "buffers": len(buffers)}, used


@functools.cache
def _pickler_class() -> type:
    import cloudpickle

    from .torch import plain_tensor, reduce_tensor  # deferred with cloudpickle: only pickling needs them

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        dispatch_table: ClassVar[ChainMap[Any, Any]] = ChainMap(_REDUCERS, cloudpickle.Pickler.dispatch_table)

        def __init__(self, file: Any, protocol: int, buffer_callback: Any, persistent_id: Any) -> None:
            if persistent_id is not None:
                self.persistent_id = persistent_id  # looked up once, when the C pickler starts
            super().__init__(file, protocol=protocol, buffer_callback=buffer_callback)

        def reducer_override(self, obj: Any) -> Any:
            # Plain torch tensors as an out-of-band buffer of their bytes: torch's own reduction copies every
            # storage into the main stream.
            if "torch" in sys.modules and plain_tensor(obj):
                return reduce_tensor(obj)
            return super().reducer_override(obj)

    return Pickler


def _no_references(name: str) -> Any:
    raise DecodeError(f"the pickled value refers to variable {name}, which this reader cannot provide")


def closed_file(name: str, mode: str, encoding: str | None) -> Any:
    """A closed file as `with open(...) as f:` leaves it: the same path and kind of object, closed (a file
    opened for writing comes back as one opened for reading, then closed: nothing is truncated)."""
    binary = "b" in mode
    target = name if isinstance(name, str) and os.path.isfile(name) else os.devnull
    found = open(target, "rb" if binary else "r", encoding=None if binary else encoding)  # noqa: SIM115
    found.close()
    return found


def _refuse_file(obj: Any) -> Any:
    for name in ("stdout", "stderr"):
        if obj is getattr(sys, name):
            return getattr, (sys, name)
    if obj.closed:
        return closed_file, (getattr(obj, "name", os.devnull), getattr(obj, "mode", "rb"),
                             getattr(obj, "encoding", None))
    import pickle  # loaded already: a value is being pickled

    raise pickle.PicklingError(
        f"an open file ({getattr(obj, 'name', '?')!r}, mode {getattr(obj, 'mode', '?')!r}) is a live OS resource, "
        "not data; open it in the cell that reads it (with open(...) as f:)")


def cached_property_of(func: Any, attrname: str | None) -> functools.cached_property[Any]:
    """A cached_property as it was (Python 3.11's holds a lock, which pickle cannot take)."""
    prop = functools.cached_property(func)
    prop.attrname = attrname
    return prop


def _reduce_cached_property(prop: functools.cached_property[Any]) -> Any:
    return cached_property_of, (prop.func, prop.attrname)


_REDUCERS: dict[type, Any] = {
    **{t: _refuse_file for t in (io.TextIOWrapper, io.BufferedReader, io.BufferedWriter, io.BufferedRandom,
                                 io.FileIO)},
    functools.cached_property: _reduce_cached_property,
}


def _digest(data: bytes | bytearray | memoryview) -> str:
    import hashlib  # deferred for start-up speed: OpenSSL loads in ~3 ms, and only pickled values need it

    return hashlib.blake2b(data, digest_size=32).hexdigest()
