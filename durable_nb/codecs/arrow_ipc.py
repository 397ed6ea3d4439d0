"""pyarrow Table / RecordBatch / Array / ChunkedArray as one Arrow IPC stream (schema, metadata and chunks
kept), read back zero-copy from the verified blob buffer."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from .streams import Sink, Source

_COLUMN = "values"


class ArrowIpcCodec:
    name = "arrow_ipc"
    version = 1
    safe = True

    def accepts(self, value: Any) -> bool:
        pa = sys.modules.get("pyarrow")
        if pa is None:  # pyarrow not imported: the value cannot be an Arrow object
            return False
        return type(value) in (pa.Table, pa.RecordBatch, pa.ChunkedArray) or isinstance(value, pa.Array)

    def encode(self, value: Any, sink: Sink) -> dict[str, Any]:
        import pyarrow as pa

        kind, table = _as_table(value)
        with sink.writer() as out, pa.ipc.new_stream(out, table.schema) as stream:
            if isinstance(table, pa.RecordBatch):
                stream.write_batch(table)
            else:
                for batch in table.to_batches():  # one batch per chunk: the chunking comes back as it was
                    stream.write_batch(batch)
        return {"kind": kind}

    def decode(self, meta: dict[str, Any], sources: Sequence[Source]) -> Any:
        return from_stream(sources[0], meta["kind"])


def _as_table(value: Any) -> tuple[str, Any]:
    import pyarrow as pa

    if isinstance(value, pa.Table):
        return "table", value
    if isinstance(value, pa.RecordBatch):
        return "batch", value
    if isinstance(value, pa.ChunkedArray):
        return "chunked", pa.table({_COLUMN: value})
    return "array", pa.record_batch({_COLUMN: value})


def read_stream(source: Source) -> pa.Table:
    """The table of an IPC stream blob, its buffers pointing into the one buffer the blob was read into."""
    import pyarrow as pa

    buffer = pa.allocate_buffer(source.size)
    source.readinto(memoryview(buffer))  # verified before Arrow parses a byte of it
    table = pa.ipc.open_stream(buffer).read_all()
    table.validate()  # buffer sizes and counts against the schema: a crafted stream fails here, not later
    return table


def from_stream(source: Source, kind: str) -> Any:
    import pyarrow as pa

    table = read_stream(source)
    if kind == "table":
        return table
    if kind == "chunked":
        return table.column(0)
    batches = table.to_batches()
    if kind == "batch":
        return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)
    column = table.column(0)
    return column.chunk(0) if column.num_chunks else pa.array([], type=column.type)
