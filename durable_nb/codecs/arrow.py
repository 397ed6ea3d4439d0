"""pandas DataFrame / Series / Index through Arrow IPC and raw buffers, only when the round trip is exact.

Columns of a plain numpy dtype (ints, floats, bools, datetime64, timedelta64) are stored as their raw bytes,
one blob each, and decoded straight into the rows of the consolidated 2-D blocks pandas keeps them in: one
copy from the log, as np.load makes, where Arrow would add a conversion copy and pandas a consolidation copy.
All other columns (strings, categoricals, nullable and timezone-aware types) and the index go through Arrow.

Layout: blob 0 is the Arrow schema of the Arrow part (with pandas' metadata). When there are raw columns,
blob 1 is the schema of the whole frame without rows (it gives back the column labels), then one blob per raw
column. Then each group of consecutive Arrow columns (about GROUP_BYTES each) is an IPC stream in its own
blob. Per-column and per-group blobs deduplicate a frame that gained one column, and let decoding free each
group's Arrow memory while pandas takes the columns over.

Exactness is proven before anything is written: the first HEAD_ROWS rows go through the very decode path and
must compare equal with the same dtypes, labels and index types. Object columns are accepted only when
every value is bytes / Decimal / date (Arrow would otherwise infer, and NaN vs None would blur), and
attrs are not carried: such values go on to pickle.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .npy import raw_bytes

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from .streams import Sink, Source

HEAD_ROWS = 64
GROUP_BYTES = 8 * 1024 * 1024
# Arrow strings come back as pandas `str` dtype, not object: object columns of str go to pickle.
_EXACT_OBJECT_TYPES = ("binary", "large_binary", "decimal", "date")
_SERIES_COLUMN = "values"


class ArrowCodec:
    name = "arrow"
    version = 3  # 2: raw numpy columns; 3: MultiIndex level frequencies, one-level MultiIndex (older readers refuse)
    safe = True

    def accepts(self, value: Any) -> bool:
        pd = sys.modules.get("pandas")
        if pd is None:  # pandas not imported: the value cannot be a pandas object
            return False
        if type(value) in (pd.DataFrame, pd.Series):
            return True
        return isinstance(value, pd.Index) and type(value).__module__.split(".")[0] == "pandas"

    def encode(self, value: Any, sink: Sink) -> dict[str, Any]:
        import pyarrow as pa

        kind, frame, meta = _as_frame(value)
        if getattr(value, "attrs", None):
            raise ValueError("pandas .attrs are not carried by Arrow")
        raw = _raw_columns(frame)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. mixed-type labels: the head check below decides
            table = _to_arrow(frame, raw)
            labels = pa.Table.from_pandas(frame.iloc[:0], preserve_index=None).schema if raw else None
        _check_object_columns(table)
        groups = _groups(table)
        meta |= {"rows": len(frame), "groups": [len(g) for g in groups], **_freqs(frame)}
        if raw:
            meta["raw"] = [[position, dtype.str] for position, dtype in raw.items()]
        _check_round_trip(value, kind, meta, frame, labels, table, groups)
        sink.put(table.schema.serialize())
        if labels is not None:
            sink.put(labels.serialize())
        for position in raw:
            sink.put(raw_bytes(frame.iloc[:, position].to_numpy()))
        for group in groups:
            part = table.select(group).replace_schema_metadata(None)
            with sink.writer() as out, pa.ipc.new_stream(out, part.schema) as stream:
                stream.write_table(part)
        return meta

    def decode(self, meta: dict[str, Any], sources: Sequence[Source]) -> Any:
        import pyarrow as pa

        def schema(source: Source) -> pa.Schema:
            return pa.ipc.read_schema(pa.py_buffer(source.read()))

        raw = meta.get("raw", [])  # absent in version 1, which had no raw columns
        groups_start = 2 + len(raw) if raw else 1  # after the Arrow schema, the labels and the raw columns
        labels = schema(sources[1]) if raw else None
        raw_sources = dict(zip((position for position, _ in raw), sources[2:groups_start], strict=True))
        parts = [_read_group(s) for s in sources[groups_start:]]

        def fill(position: int, row: Any) -> None:
            raw_sources[position].readinto(raw_bytes(row))

        return _restore(meta, _rebuild(meta, schema(sources[0]), labels, parts, fill))


def _raw_columns(frame: pd.DataFrame) -> dict[int, np.dtype[Any]]:
    """Positions and dtypes of the columns stored raw: plain numpy dtypes that Arrow also knows."""
    import numpy as np

    return {i: dtype for i, dtype in enumerate(frame.dtypes)
            if isinstance(dtype, np.dtype) and dtype.kind in "biufmM" and dtype.isnative}


def _to_arrow(frame: pd.DataFrame, raw: dict[int, Any]) -> pa.Table:
    """The Arrow part: the index and the columns not stored raw (raw ones are never converted, so a strided
    numeric column costs no Arrow copy)."""
    import pyarrow as pa

    if not raw:
        return pa.Table.from_pandas(frame, preserve_index=None)
    others = [label for i, label in enumerate(frame.columns) if i not in raw]
    return pa.Table.from_pandas(frame, columns=others, preserve_index=None)


def _as_frame(value: Any) -> tuple[str, pd.DataFrame, dict[str, Any]]:
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        return "frame", value, {"kind": "frame"}
    if isinstance(value, pd.Series):
        name = value.name
        # A column of MultiIndex columns (`df[("temp", "mean")]`) is named by a tuple.
        parts = name if type(name) is tuple else (name,)
        if name is not None and not all(type(p) in (str, int, float, bool) for p in parts):
            raise ValueError(f"Series name {name!r} is not JSON")
        meta = {"kind": "series", "name": list(name) if type(name) is tuple else name}
        return "series", value.to_frame(name=_SERIES_COLUMN), meta | ({"tuple_name": True} if parts is name else {})
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
    """What Arrow drops of the index, which meta keeps: a DatetimeIndex / TimedeltaIndex frequency, the
    frequencies of a MultiIndex's levels (`groupby(...).resample("D")`), that a one-level MultiIndex is one
    (`value_counts(["site"])`)."""
    import pandas as pd

    index = frame.index
    if not isinstance(index, pd.MultiIndex):
        freq = getattr(index, "freqstr", None)
        return {"freq": freq} if freq else {}
    found: dict[str, Any] = {"multi": True} if index.nlevels == 1 else {}
    levels = [getattr(level, "freqstr", None) for level in index.remove_unused_levels().levels]
    return found | ({"level_freqs": levels} if any(levels) else {})


def _check_round_trip(value: Any, kind: str, meta: dict[str, Any], frame: pd.DataFrame,
                      labels: pa.Schema | None, table: pa.Table, groups: list[list[int]]) -> None:
    import pandas as pd
    import pyarrow as pa

    # The head is converted afresh (a slice of `table` would keep the whole RangeIndex's metadata), then cast
    # to the whole frame's Arrow types, so that it proves what the full value will get.
    first = frame.iloc[:HEAD_ROWS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head = _to_arrow(first, dict.fromkeys(p for p, _ in meta.get("raw", [])))
    head = head.cast(pa.schema(table.schema, metadata=head.schema.metadata))

    def fill(position: int, row: Any) -> None:
        row[:] = first.iloc[:, position].to_numpy()

    rebuilt = _rebuild(meta | {"rows": len(first)}, head.schema, labels, [head.select(g) for g in groups], fill)
    back = _restore(meta, rebuilt)
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


def _read_group(source: Source) -> pa.Table:
    import pyarrow as pa

    buffer = pa.allocate_buffer(source.size)
    source.readinto(memoryview(buffer))  # verified before Arrow parses a byte of it
    return pa.ipc.open_stream(buffer).read_all()


def _rebuild(meta: dict[str, Any], schema: pa.Schema, labels: pa.Schema | None, parts: list[pa.Table],
             fill: Callable[[int, Any], None]) -> pd.DataFrame:
    """The frame from its Arrow part and its raw columns (`fill(position, row)` fills one block row)."""
    table = _assemble(schema, parts, meta["rows"])
    # self_destruct frees each group's Arrow memory as pandas takes its columns over (peak ≈ one copy)
    arrow_part = table.to_pandas(self_destruct=True)
    if labels is None:
        return arrow_part
    blocks = _raw_blocks(meta["raw"], meta["rows"], fill)
    columns = labels.empty_table().to_pandas().columns
    return _combine(blocks, arrow_part, columns)


def _raw_blocks(raw: list[list[Any]], rows: int, fill: Callable[[int, Any], None]) -> list[tuple[Any, Any]]:
    """One 2-D block per dtype, shaped (columns, rows) as pandas keeps it, each row filled in place."""
    import numpy as np

    positions: dict[str, list[int]] = {}
    for position, dtype in raw:
        positions.setdefault(dtype, []).append(position)
    blocks = []
    for dtype, where in positions.items():
        block = np.empty((len(where), rows), dtype=np.dtype(dtype))
        for row, position in zip(block, where, strict=True):
            fill(position, row)
        blocks.append((block, np.array(where, dtype=np.intp)))
    return blocks


def _combine(blocks: list[tuple[Any, Any]], arrow_part: pd.DataFrame, columns: pd.Index) -> pd.DataFrame:
    """The raw blocks and the Arrow part's columns as one frame, without copying either."""
    import numpy as np
    import pandas as pd

    raw_positions = {int(p) for _, placement in blocks for p in placement}
    other_positions = [i for i in range(len(columns)) if i not in raw_positions]
    # a numpy-typed column of the Arrow part (e.g. objects) as its ndarray, others as their ExtensionArray
    others = [column.to_numpy() if isinstance(column.dtype, np.dtype) else column.array
              for column in (arrow_part.iloc[:, k] for k in range(arrow_part.shape[1]))]
    from_blocks = _block_api()
    if from_blocks is None:  # pandas < 3: the constructor copies into consolidated blocks
        arrays = {p: block[j] for block, placement in blocks for j, p in enumerate(placement)}
        arrays |= dict(zip(other_positions, others, strict=True))
        frame = pd.DataFrame({i: arrays[i] for i in range(len(columns))}, index=arrow_part.index, copy=False)
        frame.columns = columns
        return frame
    for position, array in zip(other_positions, others, strict=True):
        block = array[None, :] if isinstance(array, np.ndarray) else array  # numpy blocks are 2-D
        blocks.append((block, np.array([position], dtype=np.intp)))
    return from_blocks(blocks, index=arrow_part.index, columns=columns)


def _block_api() -> Callable[..., pd.DataFrame] | None:
    try:
        from pandas.api.internals import create_dataframe_from_blocks
    except ImportError:
        return None
    from_blocks: Callable[..., pd.DataFrame] = create_dataframe_from_blocks
    return from_blocks


def _assemble(schema: pa.Schema, parts: list[pa.Table], rows: int) -> pa.Table:
    import pyarrow as pa

    if not parts:  # only a RangeIndex: a table of `rows` rows and no columns
        # select() keeps num_rows; drop_columns() and replace_schema_metadata() lose it
        placeholder = pa.schema([("_", pa.null())], metadata=schema.metadata)
        return pa.table([pa.nulls(rows)], schema=placeholder).select([])
    columns = [column for part in parts for column in part.columns]
    parts.clear()  # the assembled table must hold the only references, for self_destruct
    return pa.Table.from_arrays(columns, schema=schema)


def _multi_index(index: pd.Index, meta: dict[str, Any]) -> pd.MultiIndex:
    import pandas as pd

    if not isinstance(index, pd.MultiIndex):  # Arrow gives a one-level MultiIndex back flat
        index = pd.MultiIndex.from_arrays([index])
    for position, freq in enumerate(meta.get("level_freqs", [])):
        if freq:
            level = index.levels[position]
            index = index.set_levels(type(level)(level, freq=freq), level=position)
    return index


def _restore(meta: dict[str, Any], frame: pd.DataFrame) -> Any:
    import pandas as pd

    if "freq" in meta:
        index_type = pd.DatetimeIndex if isinstance(frame.index, pd.DatetimeIndex) else pd.TimedeltaIndex
        frame.index = index_type(frame.index, freq=meta["freq"])
    if meta.get("multi") or "level_freqs" in meta:
        frame.index = _multi_index(frame.index, meta)
    if meta["kind"] == "series":
        series = frame[_SERIES_COLUMN]
        series.name = tuple(meta["name"]) if meta.get("tuple_name") else meta["name"]
        return series
    if meta["kind"] == "index":
        return frame.index
    return frame
