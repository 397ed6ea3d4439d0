"""The last resort: cloudpickle, protocol 5, with out-of-band buffers.

The main stream is one blob and each out-of-band buffer (array data, Arrow buffers, torch tensors inside
modules and optimizers — version 2) another,
stored without a copy; decoding hands writable bytearrays back as the buffers. Unpickling runs code, so this
codec is not `safe`, and the main stream's blake2b digest (collision-resistant, unlike the blob's xxh3) is
kept in meta, which the trust module signs, and checked before anything is unpickled.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import DecodeError

if TYPE_CHECKING:
    from ..log.blobs import BlobSink, BlobSource

PROTOCOL = 5


class PickleCodec:
    name = "pickle"
    version = 2  # 2: torch tensors out of band (version 1 values decode the same way)
    safe = False

    def accepts(self, value: Any) -> bool:
        return True

    def encode(self, value: Any, sink: BlobSink) -> dict[str, Any]:
        buffers: list[pickle.PickleBuffer] = []
        main = _dumps(value, buffers)
        sink.put(main)
        for buffer in buffers:
            sink.put(buffer.raw())
        return {"blake2b": _digest(main), "buffers": len(buffers)}

    def decode(self, meta: dict[str, Any], sources: Sequence[BlobSource]) -> Any:
        if len(sources) != 1 + meta["buffers"]:
            raise DecodeError(f"pickled value expects {1 + meta['buffers']} blobs, the log lists "
                              f"{len(sources)}: the log was modified or is incomplete; re-run the cell.")
        main = sources[0].read()
        if _digest(main) != meta["blake2b"]:
            raise DecodeError(f"pickled value in blob {sources[0].hash} does not match its recorded digest: "
                              "the log was modified; it was not unpickled. Re-run the cell to record it "
                              "again.")
        buffers = [source.read() for source in sources[1:]]
        return pickle.loads(main, buffers=buffers)


@functools.cache
def _pickler_class() -> type:
    import cloudpickle

    class Pickler(cloudpickle.CloudPickler):  # type: ignore[misc]
        """cloudpickle, with plain torch tensors reduced to an out-of-band buffer of their bytes (torch's own
        reduction copies every storage into the main stream)."""

        def reducer_override(self, obj: Any) -> Any:
            if "torch" in sys.modules:
                from .torch import plain_tensor, reduce_tensor

                if plain_tensor(obj):
                    return reduce_tensor(obj)
            return super().reducer_override(obj)

    return Pickler


def _dumps(value: Any, buffers: list[pickle.PickleBuffer]) -> bytes:
    out = io.BytesIO()
    _pickler_class()(out, protocol=PROTOCOL, buffer_callback=buffers.append).dump(value)
    return out.getvalue()


def _digest(data: bytes | bytearray) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()
