"""The last resort: cloudpickle, protocol 5, with out-of-band buffers.

The main stream is one blob and each out-of-band buffer (array data, Arrow buffers...) another,
stored without a copy; decoding hands writable bytearrays back as the buffers. Unpickling runs code, so this
codec is not `safe`, and the main stream's blake2b digest (collision-resistant, unlike the blob's xxh3) is
kept in meta, which the trust module signs, and checked before anything is unpickled.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import DecodeError

if TYPE_CHECKING:
    from ..log.blobs import BlobSink, BlobSource

PROTOCOL = 5


class PickleCodec:
    name = "pickle"
    version = 1
    safe = False

    def accepts(self, value: Any) -> bool:
        return True

    def encode(self, value: Any, sink: BlobSink) -> dict[str, Any]:
        import cloudpickle

        buffers: list[pickle.PickleBuffer] = []
        main = cloudpickle.dumps(value, protocol=PROTOCOL, buffer_callback=buffers.append)
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


def _digest(data: bytes | bytearray) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()
