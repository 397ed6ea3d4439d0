from __future__ import annotations

import decimal
import json
import math
import subprocess
import sys
import textwrap
import threading
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from durable_nb import codecs
from durable_nb.codecs import Encoded, decode_value, encode_value, npy
from durable_nb.errors import DecodeError, EncodeError, UntrustedError
from durable_nb.log.blobs import BlobStore
from durable_nb.log.connect import connect, write_transaction

REPO = Path(__file__).resolve().parents[1]


class Log:
    def __init__(self, path: Path, chunk_size: int = 8 * 1024 * 1024) -> None:
        self.path = path
        self.conn = connect(path)
        self.store = BlobStore(self.conn, chunk_size=chunk_size)

    def encode(self, value: Any) -> tuple[Encoded, list[int]]:
        with write_transaction(self.conn, self.path):
            sink = self.store.sink()
            encoded = encode_value(value, sink)
        json.dumps(encoded.meta)  # meta must be JSON-able
        return encoded, sink.blob_ids

    def decode(self, encoded: Encoded, blob_ids: list[int], *, allow_pickle: bool = True) -> Any:
        sources = [self.store.source(b) for b in blob_ids]
        return decode_value(encoded.codec, encoded.version, json.loads(json.dumps(encoded.meta)), sources,
                            allow_pickle=allow_pickle)

    def round_trip(self, value: Any) -> tuple[Encoded, Any]:
        encoded, blob_ids = self.encode(value)
        return encoded, self.decode(encoded, blob_ids)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    log = Log(tmp_path / "x.durable.db")
    yield log
    log.conn.close()


def _frame() -> pd.DataFrame:
    n = 200
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "i64": np.arange(n, dtype="int64"), "i8": np.arange(n, dtype="int8"),
        "u32": np.arange(n, dtype="uint32"),
        "f64": rng.random(n), "f32": rng.random(n).astype("float32"),
        "nan": np.where(np.arange(n) % 3 == 0, np.nan, 1.5),
        "bool": np.arange(n) % 2 == 0,
        "str": [f"s{i}" for i in range(n)],
        "str_na": pd.array([None if i % 5 == 0 else f"v{i}" for i in range(n)], dtype="str"),
        "ts": pd.date_range("2024-01-01", periods=n, freq="h"),
        "ts_tz": pd.date_range("2024-01-01", periods=n, freq="min", tz="Europe/Paris"),
        "ts_s": pd.date_range("2024-01-01", periods=n, freq="D").astype("datetime64[s]"),
        "td": pd.to_timedelta(np.arange(n), unit="s"),
        "cat": pd.Categorical(["a", "b", "c", "a"] * (n // 4)),
        "ocat": pd.Categorical([1, 2] * (n // 2), categories=[2, 1], ordered=True),
        "Int64": pd.array([None if i % 7 == 0 else i for i in range(n)], dtype="Int64"),
        "boolean": pd.array([None if i % 7 == 0 else i % 2 == 0 for i in range(n)], dtype="boolean"),
        "bytes": [b"b%d" % i for i in range(n)],
        "dec": [decimal.Decimal(i) / 4 for i in range(n)],
    })


def _assert_frame_exact(got: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got, want, check_exact=True, check_index_type=True, check_column_type=True,
                                  check_freq=True, check_flags=True)
    assert [type(c) for c in got.columns] == [type(c) for c in want.columns]


def test_dataframe_of_common_dtypes_round_trips_through_arrow(log: Log) -> None:
    df = _frame()
    encoded, back = log.round_trip(df)
    assert encoded.codec == "arrow"
    assert encoded.type_name == "pandas.DataFrame"
    _assert_frame_exact(back, df)
    back.loc[0, "i64"] = 99  # decoded frames are writable
    assert back.loc[0, "i64"] == 99


@pytest.mark.parametrize("index", [
    pd.RangeIndex(5, 205, 1, name="r"),
    pd.Index([f"k{i}" for i in range(200)], name="key"),
    pd.MultiIndex.from_arrays([np.arange(200) // 10, [f"x{i}" for i in range(200)]], names=["a", "b"]),
    pd.date_range("2020-01-01", periods=200, freq="D", name="day"),
    pd.CategoricalIndex(["u", "v"] * 100),
], ids=["range", "named", "multi", "datetime-freq", "categorical"])
def test_dataframe_indexes_round_trip(log: Log, index: pd.Index) -> None:
    df = _frame().iloc[:, :4].set_axis(index)
    encoded, back = log.round_trip(df)
    assert encoded.codec == "arrow"
    _assert_frame_exact(back, df)


def test_groupby_results_keep_their_multiindex_through_arrow(log: Log) -> None:
    """What pandas' own verbs return: a resample within groups has a frequency on its date level (after `tail`
    too), `value_counts` of a column list has a one-level MultiIndex, a column of an aggregation is named by a
    tuple. They went to pickle."""
    hours = pd.date_range("2025-01-01", periods=24 * 6, freq="h", tz="Europe/Berlin")
    readings = pd.DataFrame({"site": ["north", "south", "east"] * 48, "temp": np.arange(144.0)}, index=hours)
    daily = readings.groupby("site").resample("D")["temp"].agg(["mean", "max"])
    counts = readings.value_counts(["site"])
    column = readings.groupby("site").agg({"temp": ["mean"]})[("temp", "mean")]  # named by a tuple
    for value in (daily, daily.tail(3), daily.tail(3)["mean"], counts, counts.index, column):
        encoded, back = log.round_trip(value)
        assert encoded.codec == "arrow", value
        if isinstance(value, pd.Index):
            pd.testing.assert_index_equal(back, value, exact=True)
            continue
        assert back.index.nlevels == value.index.nlevels and back.equals(value)
        if isinstance(value.index, pd.MultiIndex):
            levels = value.index.remove_unused_levels().levels
            assert [getattr(lv, "freq", None) for lv in back.index.levels] == [getattr(lv, "freq", None)
                                                                                for lv in levels]
        if isinstance(value, pd.Series):
            assert back.name == value.name and type(back.name) is type(value.name)


def test_non_str_column_names_round_trip(log: Log) -> None:
    df = pd.DataFrame(np.arange(12.0).reshape(4, 3), columns=[0, 1, 2])
    encoded, back = log.round_trip(df)
    assert encoded.codec == "arrow"
    _assert_frame_exact(back, df)


def test_series_and_index_round_trip(log: Log) -> None:
    series = pd.Series(np.arange(50.0), index=pd.Index([f"r{i}" for i in range(50)], name="row"), name=3)
    encoded, back = log.round_trip(series)
    assert encoded.codec == "arrow"
    pd.testing.assert_series_equal(back, series, check_exact=True, check_index_type=True)
    assert back.name == 3 and type(back.name) is int
    multi = pd.MultiIndex.from_product([[1, 2], ["a", "b"]], names=["n", "s"])
    for index in (multi, pd.RangeIndex(3, 30, 3), pd.RangeIndex(0, 0)):
        encoded, back = log.round_trip(index)
        assert encoded.codec == "arrow"
        pd.testing.assert_index_equal(back, index, exact=True)


@pytest.mark.parametrize("df", [
    pd.DataFrame({"mixed": pd.Series([1, "a", 2.5], dtype=object)}),
    pd.DataFrame({"obj_none": pd.Series(["a", None, "b"], dtype=object)}),
    pd.DataFrame({"obj_str": pd.Series(["a", "b"], dtype=object)}),
    pd.DataFrame({"dicts": [{"a": 1}, {"b": 2}, {}]}),
    pd.DataFrame({"x": [1, 2]}, index=[1, "a"]),
    pd.DataFrame([[1, 2]], columns=[1, "a"]),
    pd.DataFrame({"x": [1, 2]}, index=pd.MultiIndex.from_tuples([(1, "a"), (2, "b")], names=["s", 7])),
], ids=["mixed-object", "object-with-none", "object-str", "dicts", "mixed-index", "mixed-column-names",
    "int-level-name"])
def test_inexact_frames_fall_back_to_pickle(log: Log, df: pd.DataFrame) -> None:
    encoded, back = log.round_trip(df)
    assert encoded.codec == "pickle"
    _assert_frame_exact(back, df)
    assert [type(x) for x in back.iloc[:, 0]] == [type(x) for x in df.iloc[:, 0]]


def test_frame_with_attrs_falls_back_to_pickle(log: Log) -> None:
    df = pd.DataFrame({"a": [1, 2]})
    df.attrs["unit"] = "m"
    encoded, back = log.round_trip(df)
    assert encoded.codec == "pickle"
    assert back.attrs == {"unit": "m"}


def test_dataframe_layout_raw_columns_and_arrow_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from durable_nb.codecs import arrow

    monkeypatch.setattr(arrow, "GROUP_BYTES", 1000)
    log = Log(tmp_path / "g.durable.db", chunk_size=512)
    df = pd.DataFrame({"a": np.arange(500.0), "s": [str(i) for i in range(500)], "b": np.arange(500),
                       "t": [str(2 * i) for i in range(500)], "c": np.ones(500)})
    encoded, blob_ids = log.encode(df)
    assert encoded.meta["raw"] == [[0, "<f8"], [2, "<i8"], [4, "<f8"]]
    assert encoded.meta["groups"] == [1, 1]
    assert len(blob_ids) == 7  # Arrow schema, labels, three raw columns, two Arrow groups
    back = log.decode(encoded, blob_ids)
    _assert_frame_exact(back, df)
    assert back._mgr.nblocks == 4  # one block per numpy dtype (consolidated, as pandas makes them), one per str
    _, blob_ids2 = log.encode(df.assign(d=np.zeros(500)))
    assert set(blob_ids[2:]) <= set(blob_ids2)  # unchanged columns are stored once


def test_frames_decode_without_pandas_block_api(log: Log, monkeypatch: pytest.MonkeyPatch) -> None:
    """pandas < 3 has no pandas.api.internals.create_dataframe_from_blocks: the constructor path must give the
    same frame."""
    from durable_nb.codecs import arrow

    df = _frame()
    encoded, blob_ids = log.encode(df)
    monkeypatch.setattr(arrow, "_block_api", lambda: None)
    _assert_frame_exact(log.decode(encoded, blob_ids), df)


def test_frames_of_strided_and_mixed_numpy_columns_round_trip(log: Log) -> None:
    """A frame built from a C-ordered 2-D array keeps F-ordered blocks (strided columns); datetime and
    timedelta columns are raw too."""
    df = pd.DataFrame(np.arange(40.0).reshape(10, 4), columns=list("wxyz"))
    df["when"] = pd.date_range("2024-01-01", periods=10, freq="s")
    df["took"] = pd.to_timedelta(np.arange(10), unit="ms")
    encoded, back = log.round_trip(df)
    assert [position for position, _ in encoded.meta["raw"]] == [0, 1, 2, 3, 4, 5]
    _assert_frame_exact(back, df)
    back.iloc[0, 0] = -1.0  # writable
    assert back.iloc[0, 0] == -1.0 and df.iloc[0, 0] == 0.0


@pytest.mark.parametrize("arr", [
    np.arange(24, dtype="float64").reshape(2, 3, 4),
    np.asfortranarray(np.arange(12, dtype="int32").reshape(3, 4)),
    np.array(3.5),
    np.empty((0, 5), dtype="uint16"),
    np.array([True, False]),
    np.array([1 + 2j, 3 - 1j], dtype="complex64"),
    np.array(["2024-01-01", "NaT"], dtype="datetime64[ns]"),
    np.array([1, 2], dtype="timedelta64[s]"),
    np.array([1, 2], dtype=">i4"),
    np.array(["ab", "c"], dtype="U2"),
    np.zeros(3, dtype=[("x", "<f8"), ("y", "<i4", (2,))]),
    np.arange(20.0)[::3],
], ids=["f64-3d", "F-order", "0-d", "empty", "bool", "c64", "M8", "m8", "big-endian", "unicode", "structured",
        "strided"])
def test_arrays_round_trip_through_npy(log: Log, arr: np.ndarray[Any, Any]) -> None:
    encoded, back = log.round_trip(arr)
    assert encoded.codec == "npy"
    assert type(back) is np.ndarray and back.dtype == arr.dtype and back.shape == arr.shape
    assert back.tobytes() == arr.tobytes()  # bitwise, so NaT and NaN count too
    if arr.flags.f_contiguous and not arr.flags.c_contiguous:
        assert back.flags.f_contiguous
    assert back.flags.writeable
    assert encoded.size == arr.nbytes


def test_numpy_scalars_round_trip(log: Log) -> None:
    for scalar in (np.float32(1.5), np.int64(-3), np.datetime64("2024-01-01", "D"), np.bool_(True)):
        encoded, back = log.round_trip(scalar)
        assert encoded.codec == "npy"
        assert type(back) is type(scalar) and back == scalar


def test_object_arrays_of_plain_items_are_tagged_others_pickled(log: Log) -> None:
    arr = np.array([1, "a", None], dtype=object)
    encoded, back = log.round_trip(arr)
    assert encoded.codec == "tagged"
    assert back.dtype == object and list(back) == [1, "a", None]
    encoded, back = log.round_trip(np.array([1, types.SimpleNamespace(x=1)], dtype=object))
    assert encoded.codec == "pickle" and back[1].x == 1


@pytest.mark.parametrize("value", [
    None, True, 0, -(2**100), 1.5, -0.0, float("inf"), "", "é\ud800", [], {},
    {"a": [1, 2.0, None, {"b": "c"}], "": False}, [[[[]]]],
])
def test_plain_data_round_trips_through_json(log: Log, value: Any) -> None:
    encoded, back = log.round_trip(value)
    assert encoded.codec == "json"
    assert back == value and type(back) is type(value)
    assert json.dumps(encoded.meta, allow_nan=False)  # meta stays strict JSON


def test_json_nan_and_large_values(log: Log) -> None:
    encoded, back = log.round_trip([float("nan")])
    assert encoded.codec == "json" and math.isnan(back[0])
    big = {"k": list(range(30_000))}
    encoded, blob_ids = log.encode(big)
    assert encoded.codec == "json" and len(blob_ids) == 1 and "inline" not in encoded.meta
    assert log.decode(encoded, blob_ids) == big


@pytest.mark.parametrize("value", [
    (1, 2), [1, (2,)], {1: "a"}, OrderedDict(a=1), [True, np.int64(3)], (lambda x: [x, x])([1]),
])
def test_plain_data_beyond_json_goes_to_the_tagged_codec(log: Log, value: Any) -> None:
    encoded, back = log.round_trip(value)
    assert encoded.codec == "tagged"
    assert back == value and type(back) is type(value)


def test_unknown_objects_go_to_pickle(log: Log) -> None:
    encoded, back = log.round_trip([types.SimpleNamespace(a=1)])
    assert encoded.codec == "pickle" and back[0].a == 1


def test_aliasing_and_cycles_survive_through_pickle(log: Log) -> None:
    inner: list[int] = [1]
    cyclic: list[Any] = [inner, inner]
    cyclic.append(cyclic)
    encoded, back = log.round_trip(cyclic)
    assert encoded.codec == "pickle"
    assert back[0] is back[1] and back[2] is back


def test_same_value_twice_is_one_blob(log: Log) -> None:
    arr = np.random.default_rng(2).random(1000)
    _, first = log.encode(arr)
    _, second = log.encode(arr.copy())
    assert first == second
    assert log.conn.execute("SELECT count(*) FROM blob").fetchone()[0] == 1


def test_pickle_uses_out_of_band_buffers(log: Log) -> None:
    value = types.SimpleNamespace(arr=np.arange(1000.0), tag=(1, 2))
    encoded, blob_ids = log.encode(value)
    assert encoded.codec == "pickle" and encoded.meta["buffers"] == 1 and len(blob_ids) == 2
    back = log.decode(encoded, blob_ids)
    assert np.array_equal(back.arr, value.arr) and back.tag == (1, 2)
    back.arr[0] = 7.0  # buffers come back writable


def test_pickle_requires_trust_before_reading(log: Log) -> None:
    encoded, blob_ids = log.encode(types.SimpleNamespace(x=1))
    with write_transaction(log.conn, log.path):
        log.conn.execute("DELETE FROM chunk")  # no byte could be read: the refusal must come first
    with pytest.raises(UntrustedError, match="not trusted"):
        log.decode(encoded, blob_ids, allow_pickle=False)


def test_pickle_digest_mismatch_is_refused(log: Log) -> None:
    encoded, blob_ids = log.encode(types.SimpleNamespace(x=1))
    meta = dict(encoded.meta, blake2b="0" * 64)
    with pytest.raises(DecodeError, match="does not match its recorded digest"):
        log.decode(encoded.replace(meta=meta), blob_ids)


def test_tampered_chunk_is_never_decoded(log: Log) -> None:
    arr = np.random.default_rng(3).random(10_000)
    encoded, blob_ids = log.encode(arr)
    with write_transaction(log.conn, log.path):
        log.conn.execute("UPDATE chunk SET data = CAST(zeroblob(length(data)) AS BLOB)")
    with pytest.raises(DecodeError, match="failed verification: the log was modified"):
        log.decode(encoded, blob_ids)


def test_multi_chunk_values(tmp_path: Path) -> None:
    log = Log(tmp_path / "c.durable.db", chunk_size=4096)
    arr = np.random.default_rng(4).random(50_000)
    df = pd.DataFrame({"x": arr, "s": [str(i) for i in range(50_000)]})
    for value in (arr, df):
        encoded, blob_ids = log.encode(value)
        back = log.decode(encoded, blob_ids)
        if isinstance(value, pd.DataFrame):
            _assert_frame_exact(back, value)
        else:
            assert np.array_equal(back, value)
    assert log.conn.execute("SELECT max(chunk_count) FROM blob").fetchone()[0] > 50


def test_unpicklable_value_names_type_and_reason(log: Log) -> None:
    with write_transaction(log.conn, log.path), pytest.raises(EncodeError) as info:
        encode_value({"lock": threading.Lock()}, log.store.sink())
    assert "dict" in str(info.value) and "cannot pickle '_thread.lock' object" in str(info.value)
    assert log.conn.execute("SELECT count(*) FROM blob").fetchone()[0] == 0


def test_unknown_or_newer_codec_is_a_decode_error(log: Log) -> None:
    with pytest.raises(DecodeError, match="unknown"):
        decode_value("parquet9", 1, {}, [], allow_pickle=True)
    with pytest.raises(DecodeError, match="newer"):
        decode_value("npy", npy.NpyCodec.version + 1, {}, [], allow_pickle=True)


def test_main_module_closures_and_classes_pickle_by_value(tmp_path: Path) -> None:
    db = tmp_path / "m.durable.db"
    record = textwrap.dedent(f"""
        from durable_nb.codecs import encode_value
        from durable_nb.log.blobs import BlobStore
        from durable_nb.log.connect import connect, write_transaction
        import json
        class Point:
            def __init__(self, x): self.x = x
            def double(self): return Point(self.x * 2)
        def make_adder(n):
            return lambda v: v + n
        conn = connect({str(db)!r})
        with write_transaction(conn, {str(db)!r}):
            sink = BlobStore(conn).sink()
            enc = encode_value({{"p": Point(21), "add": make_adder(2), "cls": Point}}, sink)
        print(json.dumps([enc.codec, enc.version, enc.meta, sink.blob_ids]))
    """)
    replay = textwrap.dedent(f"""
        import json, sys
        from durable_nb.codecs import decode_value
        from durable_nb.log.blobs import BlobStore
        from durable_nb.log.connect import connect
        codec, version, meta, ids = json.loads(sys.stdin.read())
        store = BlobStore(connect({str(db)!r}, readonly=True))
        v = decode_value(codec, version, meta, [store.source(i) for i in ids], allow_pickle=True)
        print(v["p"].double().x, v["add"](40), isinstance(v["p"], v["cls"]))
    """)
    first = subprocess.run([sys.executable, "-c", record], capture_output=True, text=True, cwd=REPO,
                           check=True)
    second = subprocess.run([sys.executable, "-c", replay], input=first.stdout, capture_output=True,
                            text=True, cwd=REPO, check=True)
    assert second.stdout.split() == ["42", "42", "True"]


def test_frames_recorded_by_arrow_codec_version_1_still_decode(log: Log,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Version 1 had no raw columns: every column went through Arrow (what an empty `_raw_columns` writes)."""
    from durable_nb.codecs import arrow

    df = _frame()
    monkeypatch.setattr(arrow, "_raw_columns", lambda frame: {})
    encoded, blob_ids = log.encode(df)
    monkeypatch.undo()
    assert "raw" not in encoded.meta
    _assert_frame_exact(log.decode(encoded.replace(version=1), blob_ids), df)


def test_the_registry_names_each_codec_as_its_module_does_and_only_pickle_is_unsafe() -> None:
    # The library codecs are known by name before their modules load (a script's first call loads none).
    for registered in codecs.CODECS:
        loaded = getattr(registered, "codec", registered)
        assert loaded.name == registered.name
        assert loaded.safe is (registered is not codecs.PICKLE), registered.name
    assert {c.name for c in codecs.CODECS if c.safe} == codecs.SAFE_CODECS
