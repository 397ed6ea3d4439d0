"""What a codec needs from storage, owned by the codecs: somewhere to put a value's bytes, and a way to read
them back. The SQLite blob store implements it (durable_nb.log.blobs); so can any other backend, and so do the
in-memory sinks of activity results, without the codecs knowing which."""

from __future__ import annotations

from typing import Any, Protocol


class Writer(Protocol):
    """A binary file opened for writing one blob (Arrow and pickle stream into it)."""

    def write(self, data: Any, /) -> int: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> Any: ...


class Sink(Protocol):
    """Where one value's blobs go; `blob_ids` and `sizes` are then exactly its blobs, in decoding order."""

    @property
    def blob_ids(self) -> list[int]: ...

    @property
    def sizes(self) -> list[int]: ...

    def put(self, buffer: Any) -> int: ...

    def writer(self) -> Writer: ...

    def mark(self) -> int: ...

    def discard(self, mark: int) -> None: ...


class Source(Protocol):
    """One stored blob: its size, its content hash, and its bytes (read whole or into a caller's buffer)."""

    @property
    def size(self) -> int: ...

    @property
    def hash(self) -> str: ...

    def read(self) -> bytearray: ...

    def readinto(self, buffer: Any) -> int: ...
