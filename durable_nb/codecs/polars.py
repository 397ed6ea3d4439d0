"""polars DataFrame / Series as one Arrow IPC stream, handed over without copies in either direction.

polars exports its columns through the Arrow C data interface at its newest compatibility level (strings as
string views, Categorical / Enum as dictionaries with polars' own field metadata), pyarrow writes the stream
into the blob, and decoding maps the verified blob as an Arrow buffer that polars adopts: the replayed frame's
memory is the buffer read from the log. Exactness is proven on the head of the value (schema and values)
before anything is written; Object columns go on to pickle.

A LazyFrame is a query plan, and polars documents its serialized plan as not stable across polars versions
(and as unpickling Python UDFs): it is refused with the remedy, `.collect()`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import EncodeError
from .arrow_ipc import read_stream

if TYPE_CHECKING:
    import pyarrow as pa

    from .streams import Sink, Source

HEAD_ROWS = 64


class PolarsCodec:
    name = "polars"
    version = 1
    safe = True

    def accepts(self, value: Any) -> bool:
        pl = sys.modules.get("polars")
        return pl is not None and type(value) in (pl.DataFrame, pl.Series, pl.LazyFrame)

    def encode(self, value: Any, sink: Sink) -> dict[str, Any]:
        import polars as pl
        import pyarrow as pa

        if isinstance(value, pl.LazyFrame):
            raise EncodeError("cannot store a polars LazyFrame: it is a query plan, and polars documents its "
                              "serialized plan as not stable across polars versions (and as unpickling any Python "
                              "functions in it). Keep the result instead: name = lazy_frame.collect(), or "
                              "exclude it with --ignore NAME")
        series = isinstance(value, pl.Series)
        frame = value.to_frame() if series else value
        if any(dtype == pl.Object for dtype in frame.dtypes):
            raise ValueError("polars Object columns hold Python objects, which Arrow does not carry")
        meta: dict[str, Any] = {"kind": "series" if series else "frame"}
        if series:
            meta["name"] = value.name
        expected = value.head(HEAD_ROWS)
        back = _from_table(_table(frame.head(HEAD_ROWS)), meta)
        if series:
            exact = back.equals(expected, check_dtypes=True, check_names=True, null_equal=True)
        else:
            exact = back.schema == expected.schema and back.equals(expected, null_equal=True)
        if not exact:
            raise ValueError("the value does not come back exactly through Arrow")
        table = _table(frame)
        with sink.writer() as out, pa.ipc.new_stream(out, table.schema) as stream:
            stream.write_table(table)
        return meta

    def decode(self, meta: dict[str, Any], sources: Sequence[Source]) -> Any:
        return _from_table(read_stream(sources[0]), meta)


def _table(frame: Any) -> pa.Table:
    import polars as pl

    return frame.to_arrow(compat_level=pl.CompatLevel.newest())


def _from_table(table: pa.Table, meta: dict[str, Any]) -> Any:
    import polars as pl

    frame = pl.from_arrow(table, rechunk=False)
    assert isinstance(frame, pl.DataFrame)
    if meta["kind"] == "series":
        return frame.to_series(0).alias(meta["name"])
    return frame
