"""pandas DataFrame / Series / Index through Arrow IPC, only when the round trip is exact.

Layout: blob 0 is the Arrow schema (with pandas' metadata); then each group of consecutive columns (about
GROUP_BYTES each) is an IPC stream in its own blob. Per-group blobs deduplicate a frame that gained one
column, and let decoding free each group's Arrow memory while pandas takes the columns over.

Exactness is proven before anything is written: the first HEAD_ROWS rows go through the very decode path and
must compare equal with the same dtypes, labels and index types. Object columns are accepted only when
every value is bytes / Decimal / date (Arrow would otherwise infer, and NaN vs None would blur), and
attrs are not carried: such values go on to pickle.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from ..log.blobs import BlobSink, BlobSource

HEAD_ROWS = 64
GROUP_BYTES = 8 * 1024 * 1024
# Arrow strings come back as pandas `str` dtype, not object: object columns of str go to pickle.
_EXACT_OBJECT_TYPES = ("binary", "large_binary", "decimal", "date")
_SERIES_COLUMN = "values"


class ArrowCodec:
    name = "arrow"
    version = 1
    safe = True

    def accepts(self, value: Any) -> bool:
        pd = sys.modules.get("pandas")
        if pd is None:  # pandas not imported: the value cannot be a pandas object
            return False
        if type(value) in (pd.DataFrame, pd.Series):
            return True
        return isinstance(value, pd.Index) and type(value).__module__.split(".")[0] == "pandas"

    def encode(self, value: Any, sink: BlobSink) -> dict[str, Any]:
        import pyarrow as pa

        kind, frame, meta = _as_frame(value)
        if getattr(value, "attrs", None):
            raise ValueError("pandas .attrs are not carried by Arrow")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. mixed-type labels: the head check below decides
            table = pa.Table.from_pandas(frame, preserve_index=None)
        _check_object_columns(table)
        groups = _groups(table)
        meta |= {"rows": len(frame), "groups": [len(g) for g in groups], **_freqs(frame)}
        _check_round_trip(value, kind, meta, frame, table, groups)
        sink.put(table.schema.serialize())
        for group in groups:
            part = table.select(group).replace_schema_metadata(None)
            with sink.writer() as out, pa.ipc.new_stream(out, part.schema) as stream:
                stream.write_table(part)
        return meta

    def decode(self, meta: dict[str, Any], sources: Sequence[BlobSource]) -> Any:
        import pyarrow as pa

        schema = pa.ipc.read_schema(pa.py_buffer(sources[0].read()))
        table = _assemble(schema, [_read_group(s) for s in sources[1:]], meta["rows"])
        # self_destruct frees each group's Arrow memory as pandas takes its columns over (peak ≈ one copy)
        return _restore(meta, table.to_pandas(self_destruct=True))


def _as_frame(value: Any) -> tuple[str, pd.DataFrame, dict[str, Any]]:
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return "frame", value, {"kind": "frame"}
    if isinstance(value, pd.Series):
        if value.name is not None and type(value.name) not in (str, int, float, bool):
            raise ValueError(f"Series name of type {type(value.name).__name__} is not JSON")
        return "series", value.to_frame(name=_SERIES_COLUMN), {"kind": "series", "name": value.name}
    return "index", pd.DataFrame(index=value), {"kind": "index"}


def _check_object_columns(table: pa.Table) -> None:
    for column in table.schema.pandas_metadata["columns"]:
        if column["numpy_type"] != "object":
            continue
        data = table.column(column["field_name"])
        if column["pandas_type"] == "empty" and len(data) == 0:
            continue
        if not str(data.type).startswith(_EXACT_OBJECT_TYPES) or data.null_count:
            raise ValueError(f"object column {column['name']!r} holds {data.type} (with "
                             f"{data.null_count} nulls), which Arrow does not give back exactly")


def _groups(table: pa.Table) -> list[list[int]]:
    groups: list[list[int]] = []
    size = GROUP_BYTES
    for i, column in enumerate(table.columns):
        if size >= GROUP_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += column.nbytes
    return groups


def _freqs(frame: pd.DataFrame) -> dict[str, Any]:
    """Arrow drops a DatetimeIndex / TimedeltaIndex frequency; meta keeps it."""
    freq = getattr(frame.index, "freqstr", None)
    return {"freq": freq} if freq else {}


def _check_round_trip(value: Any, kind: str, meta: dict[str, Any], frame: pd.DataFrame, table: pa.Table,
                      groups: list[list[int]]) -> None:
    import pandas as pd
    import pyarrow as pa

    # The head is converted afresh (a slice of `table` would keep the whole RangeIndex's metadata), then cast
    # to the whole frame's Arrow types, so that it proves what the full value will get.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head = pa.Table.from_pandas(frame.iloc[:HEAD_ROWS], preserve_index=None)
    head = head.cast(pa.schema(table.schema, metadata=head.schema.metadata))
    rebuilt = _assemble(head.schema, [head.select(g) for g in groups], len(frame.iloc[:HEAD_ROWS]))
    back = _restore(meta, rebuilt.to_pandas())
    expected = _unused_levels_dropped(value.iloc[:HEAD_ROWS] if kind != "index" else value[:HEAD_ROWS])
    exact = {"check_exact": True, "check_index_type": True}
    if kind == "frame":
        pd.testing.assert_frame_equal(back, expected, check_column_type=True, check_flags=True,
                                      check_freq=True, **exact)
        _same_labels(back.columns, expected.columns)
    elif kind == "series":
        pd.testing.assert_series_equal(back, expected, check_series_type=True, check_freq=True, **exact)
        if type(back.name) is not type(expected.name):
            raise ValueError("Series name type changed")
    else:
        pd.testing.assert_index_equal(back, expected, exact=True, check_exact=True)
    _same_labels(back if kind == "index" else back.index, expected if kind == "index" else expected.index)


def _unused_levels_dropped(value: Any) -> Any:
    """A MultiIndex comes back with only the levels it uses (as after `remove_unused_levels()`), which is all
    that equality and every lookup see; the head check compares against that."""
    import pandas as pd

    if isinstance(value, pd.MultiIndex):
        return value.remove_unused_levels()
    if isinstance(getattr(value, "index", None), pd.MultiIndex):
        value = value.set_axis(value.index.remove_unused_levels(), axis=0)
    if isinstance(getattr(value, "columns", None), pd.MultiIndex):
        value = value.set_axis(value.columns.remove_unused_levels(), axis=1)
    return value


def _same_labels(got: pd.Index, want: pd.Index) -> None:
    """assert_*_equal accepts 1 == 1.0 == True as labels; the types must match too."""
    got_types, want_types = [type(x) for x in got[:HEAD_ROWS]], [type(x) for x in want[:HEAD_ROWS]]
    if type(got) is not type(want) or got_types != want_types:
        raise ValueError("labels change type through Arrow")
    if list(got.names) != list(want.names) or [type(n) for n in got.names] != [type(n) for n in want.names]:
        raise ValueError("label names change through Arrow")


def _read_group(source: BlobSource) -> pa.Table:
    import pyarrow as pa

    buffer = pa.allocate_buffer(source.size)
    source.readinto(memoryview(buffer))  # verified before Arrow parses a byte of it
    return pa.ipc.open_stream(buffer).read_all()


def _assemble(schema: pa.Schema, parts: list[pa.Table], rows: int) -> pa.Table:
    import pyarrow as pa

    if not parts:  # only a RangeIndex: a table of `rows` rows and no columns
        # select() keeps num_rows; drop_columns() and replace_schema_metadata() lose it
        placeholder = pa.schema([("_", pa.null())], metadata=schema.metadata)
        return pa.table([pa.nulls(rows)], schema=placeholder).select([])
    columns = [column for part in parts for column in part.columns]
    parts.clear()  # the assembled table must hold the only references, for self_destruct
    return pa.Table.from_arrays(columns, schema=schema)


def _restore(meta: dict[str, Any], frame: pd.DataFrame) -> Any:
    import pandas as pd

    if "freq" in meta:
        index_type = pd.DatetimeIndex if isinstance(frame.index, pd.DatetimeIndex) else pd.TimedeltaIndex
        frame.index = index_type(frame.index, freq=meta["freq"])
    if meta["kind"] == "series":
        series = frame[_SERIES_COLUMN]
        series.name = meta["name"]
        return series
    if meta["kind"] == "index":
        return frame.index
    return frame
