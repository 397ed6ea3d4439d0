"""Property tests for the data ecosystem's values: generated polars frames, Arrow tables (sliced, rechunked),
torch tensors (strided, bfloat16 / float8), xarray arrays, scipy.sparse values and pickled values round trip
exactly, keep their fingerprint through the round trip, and fingerprint alike in processes with other hash
seeds. `DURABLE_NB_TORTURE=long` runs many more examples."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import scipy.sparse as sp
import torch
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_codecs import Log
from test_types import assert_same
from torture import size

from durable_nb.codecs import PICKLE, decode_value
from durable_nb.fingerprint import fingerprint

EXAMPLES = size(40, 400)
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

# ---------------------------------------------------------------------------------------------- columns

ints = st.integers(-(2**63), 2**63 - 1)
texts = st.text(max_size=30)  # both sides of the 12-byte inline limit of Arrow string views
ZONES = [None, "UTC", "Europe/Paris", "America/New_York"]


def _column(kind: str, n: int) -> st.SearchStrategy[pl.Series]:
    def nullable(s: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
        return st.lists(st.none() | s, min_size=n, max_size=n)

    if kind == "int":
        return nullable(ints).map(lambda v: pl.Series(v, dtype=pl.Int64))
    if kind == "small":
        return st.sampled_from([pl.Int8, pl.UInt16, pl.Int32, pl.UInt64]).flatmap(
            lambda d: nullable(st.integers(0, 100)).map(lambda v: pl.Series(v, dtype=d)))
    if kind == "float":
        return nullable(st.floats(allow_nan=True, allow_infinity=True)).map(lambda v: pl.Series(v, dtype=pl.Float64))
    if kind == "str":
        return nullable(texts).map(lambda v: pl.Series(v, dtype=pl.String))
    if kind == "bool":
        return nullable(st.booleans()).map(lambda v: pl.Series(v, dtype=pl.Boolean))
    if kind == "cat":
        return nullable(st.sampled_from(["a", "b", "a longer category name"])).map(
            lambda v: pl.Series(v, dtype=pl.Categorical))
    if kind == "enum":
        return nullable(st.sampled_from(["lo", "mid", "hi"])).map(lambda v: pl.Series(v, dtype=pl.Enum(["hi", "mid",
                                                                                                          "lo"])))
    if kind == "time":
        return st.tuples(nullable(st.integers(-(10**15), 10**15)), st.sampled_from(ZONES)).map(
            lambda a: pl.Series(a[0], dtype=pl.Int64).cast(pl.Datetime("us", a[1])))
    if kind == "date":
        return nullable(st.dates()).map(lambda v: pl.Series(v, dtype=pl.Date))
    if kind == "list":
        return nullable(st.lists(st.none() | st.integers(-5, 5), max_size=3)).map(
            lambda v: pl.Series(v, dtype=pl.List(pl.Int64)))
    assert kind == "struct"
    return nullable(st.fixed_dictionaries({"a": st.none() | st.integers(-5, 5), "b": st.none() | texts})).map(
        lambda v: pl.Series(v, dtype=pl.Struct({"a": pl.Int64, "b": pl.String})))


KINDS = ["int", "small", "float", "str", "bool", "cat", "enum", "time", "date", "list", "struct"]


@st.composite
def polars_frames(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(0, 40))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=5))
    frame = pl.DataFrame([draw(_column(kind, n)).alias(f"c{i}_{kind}") for i, kind in enumerate(kinds)])
    if n and draw(st.booleans()):  # several chunks, as vstack / concat leave them
        cut = draw(st.integers(0, n))
        frame = pl.concat([frame[:cut], frame[cut:]], rechunk=False)
    return frame


polars_values = polars_frames() | polars_frames().flatmap(
    lambda f: st.sampled_from(f.columns).map(lambda c: f[c]))


@st.composite
def arrow_values(draw: st.DrawFn) -> Any:
    table = draw(polars_frames()).to_arrow()  # large_string, dictionaries, structs, lists, time zones
    if table.num_rows and draw(st.booleans()):  # an offset into every buffer
        start = draw(st.integers(0, table.num_rows))
        table = table.slice(start, draw(st.integers(0, table.num_rows - start)))
    form = draw(st.sampled_from(["table", "batch", "chunked", "array"]))
    if form == "table":
        return table
    if form == "batch":
        return table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist(
            [], schema=table.schema)
    column = table.column(draw(st.integers(0, table.num_columns - 1)))
    return column if form == "chunked" else column.combine_chunks()


TORCH_DTYPES = [torch.float32, torch.float64, torch.int64, torch.int8, torch.bool, torch.bfloat16, torch.float16,
                torch.float8_e4m3fn, torch.float8_e5m2, torch.complex64, torch.uint16]


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    base = torch.from_numpy(draw(hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0,
                                                                       max_side=5),
                                            elements=st.floats(-1e4, 1e4, width=32))))
    tensor = base.to(draw(st.sampled_from(TORCH_DTYPES)))
    if tensor.dim() >= 2 and draw(st.booleans()):
        tensor = tensor.transpose(0, 1)  # a non-contiguous view
    if tensor.dim() >= 1 and draw(st.booleans()):
        tensor = tensor[:: draw(st.integers(1, 3))]
    if tensor.is_floating_point() and tensor.dtype.itemsize >= 2 and draw(st.booleans()):
        tensor = torch.nn.Parameter(tensor.clone()) if draw(st.booleans()) else tensor.requires_grad_(True)
    return tensor


attrs = st.dictionaries(st.text(min_size=1, max_size=8), st.none() | st.integers() | st.text(max_size=8)
                        | st.floats(allow_nan=False) | st.lists(st.integers(), max_size=3), max_size=3)


@st.composite
def xarray_values(draw: st.DrawFn) -> Any:
    data = draw(hnp.arrays(st.sampled_from([np.float64, np.int32, np.bool_, np.dtype("<M8[ns]")]),
                           hnp.array_shapes(min_dims=1, max_dims=2, max_side=4)))
    dims = ("x", "y")[: data.ndim]
    coords = {"x": ("x", np.arange(data.shape[0]) * 10)} if draw(st.booleans()) else {}
    array = xr.DataArray(data, dims=dims, coords=coords, attrs=draw(attrs), name=draw(st.none() | st.text(max_size=5)))
    array.encoding = draw(attrs)
    return array.to_dataset(name="v").assign_attrs(draw(attrs)) if draw(st.booleans()) else array


SPARSE = [sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.dia_matrix, sp.lil_matrix, sp.dok_matrix, sp.bsr_matrix,
          sp.csr_array, sp.csc_array, sp.coo_array, sp.lil_array, sp.dok_array]


@st.composite
def sparse_values(draw: st.DrawFn) -> Any:
    dense = draw(hnp.arrays(st.sampled_from([np.float64, np.int64, np.complex128]),
                            st.tuples(st.integers(0, 6), st.integers(0, 6)),
                            elements=st.sampled_from([0, 0, 0, 1, -2, 3])))
    return draw(st.sampled_from(SPARSE))(dense)


LIBRARY = {"polars": polars_values, "arrow_ipc": arrow_values(), "torch": tensors(), "xarray": xarray_values(),
           "sparse": sparse_values()}

# ---------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Log]:
    log = Log(tmp_path_factory.mktemp("props") / "p.durable.db")
    yield log
    log.conn.close()


# Every generated value's fingerprint and where the log holds it, for the cross-process check below.
SEEN: list[tuple[str, list[Any], list[int]]] = []


@pytest.mark.parametrize("codec", list(LIBRARY))
def test_library_values_round_trip_exactly_through_their_safe_codec(log: Log, codec: str) -> None:
    @SETTINGS
    @given(LIBRARY[codec])
    def round_trip(value: Any) -> None:
        encoded, blob_ids = log.encode(value)
        back = log.decode(encoded, blob_ids, allow_pickle=False)
        assert encoded.codec == codec, (value, encoded.codec)
        assert_same(back, value)
        assert fingerprint(back) == fingerprint(value), "a replayed value must hash like the recorded one"
        SEEN.append((fingerprint(value), list(encoded.as_tuple()), blob_ids))

    round_trip()


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
    | st.binary(max_size=10) | st.datetimes(timezones=st.none() | st.just(dt.UTC)) | st.decimals(
        allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=4), inner,
                                                                                       max_size=3),
    max_leaves=10)


pickled = st.one_of(plain, tensors(), hnp.arrays(np.float64, hnp.array_shapes(max_dims=2, max_side=4))).flatmap(
    lambda v: st.lists(st.just(v) | plain, min_size=1, max_size=3))


def test_pickled_values_round_trip_exactly_with_tensors_out_of_band(log: Log) -> None:
    # The pickle codec itself, on what reaches it in a notebook: containers mixing plain data and tensors.
    @SETTINGS
    @given(pickled)
    def round_trip(value: list[Any]) -> None:
        with log.conn:
            sink = log.store.sink()
            meta = PICKLE.encode(value, sink)
            ids = list(sink.blob_ids)
        back = decode_value(PICKLE.name, PICKLE.version, json.loads(json.dumps(meta)),
                            [log.store.source(b) for b in ids], allow_pickle=True)
        assert len(back) == len(value)
        for got, want in zip(back, value, strict=True):
            if isinstance(want, (torch.Tensor, np.ndarray)):
                assert_same(got, want)
            else:
                assert got == want and type(got) is type(want)
        assert fingerprint(back) == fingerprint(value)

    round_trip()


CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_codecs import Log
from durable_nb.codecs import Encoded
from durable_nb.fingerprint import fingerprint
log = Log(Path(sys.argv[1]))
seen = json.loads(sys.stdin.read())
print(json.dumps([fingerprint(log.decode(Encoded(*enc), ids, allow_pickle=False)) for enc, ids in seen]))
"""


def test_generated_values_fingerprint_alike_in_processes_with_other_hash_seeds(log: Log) -> None:
    # Each child decodes every value generated above from the log and fingerprints it with its own hash seed.
    assert len(SEEN) >= len(LIBRARY), "run with the round-trip tests above, which generate the values"
    stored = json.dumps([(enc, ids) for _, enc, ids in SEEN])
    for seed in ("1", "987"):
        out = subprocess.run([sys.executable, "-c", CHILD.format(tests=str(Path(__file__).parent)), str(log.path)],
                             input=stored, env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == [want for want, _, _ in SEEN], f"PYTHONHASHSEED={seed}"
