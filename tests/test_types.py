"""Values of the data ecosystem (polars, pyarrow, xarray, scipy.sparse, torch, scikit-learn) and plain Python types
beyond JSON: exact round trips through safe codecs, fingerprints from buffers that agree across processes and
hash seeds, in-place mutation seen by %%durable, and replay from a colleague's log that was never trusted."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import typing
import uuid
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
import scipy.sparse as sp
import torch
import xarray as xr
from shells import Shell, become
from test_codecs import Log

from durable_nb.errors import EncodeError
from durable_nb.fingerprint import fingerprint

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = ("polars", "torch", "xarray", "scipy", "sklearn", "pandas", "pyarrow", "safetensors")


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    log = Log(tmp_path / "x.durable.db")
    yield log
    log.conn.close()


class Color(enum.Enum):
    RED = 1
    GREEN = "g"


class Perm(enum.IntFlag):
    R = 4
    W = 2


Point = collections.namedtuple("Point", "x y")


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    when: dt.datetime
    scores: list[float]
    tags: frozenset[str] = frozenset()


class Level(enum.Enum):
    LOW = 1
    LO = 1  # an alias: the same member


@dataclasses.dataclass(frozen=True)
class Tagged:
    label: str
    version: int = dataclasses.field(init=False, default=1)  # never set on the instance: read from the class


@dataclasses.dataclass(slots=True)
class Slotted:
    values: list[int]
    frame: Any = None


class Pair(typing.NamedTuple):
    left: int
    right: str = "r"

    def swapped(self) -> tuple[str, int]:
        return self.right, self.left


class Span(collections.namedtuple("Span", "start stop")):
    __slots__ = ()

    @property
    def length(self) -> int:
        return int(self.stop - self.start)


def polars_frame() -> pl.DataFrame:
    return pl.DataFrame({
        "i": [1, None, 3], "f": [0.5, float("nan"), None], "s": ["a", None, "a string longer than twelve"],
        "c": pl.Series(["x", "y", "x"], dtype=pl.Categorical),
        "e": pl.Series(["b", "a", "b"], dtype=pl.Enum(["b", "a"])),
        "t": pl.Series([1, 2, 3]).cast(pl.Datetime("us", "Europe/Paris")), "l": [[1], [2, 3], None],
        "st": [{"a": 1}, {"a": 2}, None], "d": pl.Series(["1.5", "2.25", None]).cast(pl.Decimal(10, 2)),
        "b": [True, None, False], "bin": [b"\x00", b"yz", None],
    })


def xr_dataset() -> xr.Dataset:
    time = np.array(["2024-01-01", "2024-01-02"], dtype="datetime64[ns]")
    ds = xr.Dataset({"temp": (("time", "site"), np.arange(6.0).reshape(2, 3), {"units": "K", "range": (0, 1)}),
                     "flag": ("site", np.array([True, False, True]))},
                    coords={"time": time, "site": np.array(["a", "b", "c"], dtype=object),
                            "elev": ("site", np.array([1, 2, 3], dtype="int32"))},
                    attrs={"title": "t", "version": 2, "created": dt.date(2024, 1, 1)})
    ds.encoding = {"unlimited_dims": {"time"}}
    return ds


def generators() -> list[Any]:
    """numpy's random generators as tutorials hold them: drawn from, with a cached normal, spawned, bare."""
    drawn = np.random.default_rng(7)
    drawn.random(3)
    legacy = np.random.RandomState(4)
    legacy.randn(3)  # an odd count: a normal stays cached
    child = np.random.default_rng(1).spawn(2)[1]
    return [drawn, legacy, child, *(np.random.Generator(getattr(np.random, name)(3))
                                    for name in ("PCG64DXSM", "MT19937", "Philox", "SFC64")), np.random.PCG64(9)]


def rng_state(value: Any) -> Any:
    if isinstance(value, np.random.RandomState):
        return value.get_state(legacy=False)
    return (value if isinstance(value, np.random.BitGenerator) else value.bit_generator).state


def sparse_values() -> list[Any]:
    dense = np.array([[0, 1.5, 0], [2, 0, 0], [0, 0, 3]])
    return [cls(dense) for cls in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.bsr_matrix, sp.dia_matrix,
                                   sp.lil_matrix, sp.dok_matrix, sp.csr_array, sp.csc_array, sp.coo_array,
                                   sp.lil_array, sp.dok_array)]


def tensors() -> list[Any]:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return [base, base.t(), base[:, ::2], base.to(torch.bfloat16), base.to(torch.float8_e4m3fn),
            torch.tensor([1 + 2j], dtype=torch.complex64), torch.tensor(True), torch.zeros(0, 3, dtype=torch.int64),
            torch.nn.Parameter(base.clone()), base.clone().requires_grad_(True)]


def plain_values() -> list[Any]:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    return [
        (1, "a", (None, 2.5)), {1, 2, 3}, frozenset({"a", "b"}), {(1, 2): "tuple key", 3: [b"x"]},
        b"\x00\xff" * 3000, bytearray(b"abc"), 1 + 2j, range(2, 10, 3),
        dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=paris), dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=-5), "EST")), dt.date(2024, 2, 29),
        dt.time(23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=1))), dt.timedelta(days=-1, microseconds=5),
        decimal.Decimal("-1.2300E+5"), decimal.Decimal("NaN"), fractions.Fraction(-3, 7),
        uuid.UUID("12345678-1234-5678-1234-567812345678"), pathlib.PurePosixPath("/a/b.txt"), Path("rel/c"),
        Color.GREEN, Perm.R, Point(1, [2]), Run("r", dt.datetime(2024, 1, 1), [0.5], frozenset({"x"})),
        collections.OrderedDict(b=1, a=2), collections.defaultdict(list, {"k": [1]}),
        collections.Counter("abca"), collections.deque([1, (2, 3)], maxlen=4), slice(1, None, -2), ...,
        pd.Timestamp("2024-10-27 00:30:00.123456789", tz="UTC").tz_convert("Europe/Paris"),
        pd.Timestamp(np.datetime64("2024-01-01", "s")), pd.Timedelta("3h 5ns"), pd.NaT, pd.NA,
        pd.Period("2024Q1", "Q-DEC"),
        {"arr": np.arange(5), "frame": polars_frame(), "nested": [np.float32(1.5), {"deep": (Color.RED,)}]},
    ]


def same_python(a: Any, b: Any) -> bool:
    """==, with NaN equal to NaN at any depth."""
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_python(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same_python(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def assert_same(got: Any, want: Any) -> None:
    assert type(got) is type(want)
    if isinstance(want, pl.DataFrame):
        assert got.schema == want.schema and got.equals(want, null_equal=True)
    elif isinstance(want, pl.Series):
        assert got.equals(want, check_dtypes=True, check_names=True, null_equal=True)
    elif isinstance(want, (pa.Table, pa.RecordBatch, pa.Array, pa.ChunkedArray)):
        assert got.equals(want) or same_python(got.to_pylist(), want.to_pylist())  # equals() says NaN != NaN
        assert got.type == want.type if hasattr(want, "type") else got.schema.equals(want.schema, check_metadata=True)
    elif isinstance(want, (xr.Dataset, xr.DataArray)):
        assert got.identical(want) and fingerprint(got.encoding) == fingerprint(want.encoding)  # NaN fill values
        for name, variable in want.coords.items() if isinstance(want, xr.DataArray) else want.variables.items():
            assert fingerprint(got[name].encoding) == fingerprint(variable.encoding), name
    elif sp.issparse(want):
        assert got.format == want.format and got.dtype == want.dtype and got.shape == want.shape
        assert (got != want).nnz == 0 and np.array_equal(got.toarray(), want.toarray())
    elif isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape and got.device == want.device
        assert got.requires_grad == want.requires_grad
        assert torch.equal(got.view(torch.uint8) if got.element_size() == 1 else got.detach(),
                           want.view(torch.uint8) if want.element_size() == 1 else want.detach())
    elif isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape
        # Bit for bit (a NaN equals itself); object arrays element by element.
        assert np.array_equal(got, want) if want.dtype.hasobject else got.tobytes() == want.tobytes()
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            assert_same(got[key], want[key])
    elif isinstance(want, list):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert_same(a, b)
    elif isinstance(want, (np.random.Generator, np.random.RandomState, np.random.BitGenerator)):
        assert fingerprint(rng_state(got)) == fingerprint(rng_state(want))
    elif want is pd.NA or want is pd.NaT:
        assert got is want
    elif isinstance(want, decimal.Decimal) and want.is_nan():
        assert got.is_nan() and str(got) == str(want)
    else:
        assert got == want
        if isinstance(want, collections.deque):
            assert got.maxlen == want.maxlen
        if isinstance(want, pd.Timestamp):
            assert got.unit == want.unit
        if isinstance(want, (dt.datetime, dt.time)):
            assert got.fold == want.fold and got.tzinfo == want.tzinfo and str(got.tzinfo) == str(want.tzinfo)


# ---------------------------------------------------------------------------------------------- round trips

CASES = {
    "polars frame": lambda: polars_frame(),
    "polars series": lambda: polars_frame()["s"],
    "polars empty": lambda: pl.DataFrame({"a": pl.Series([], dtype=pl.Int8)}),
    "arrow table": lambda: pa.table({"a": [1, None], "s": ["x", "y"]}).replace_schema_metadata({"k": "v"}),
    "arrow batch": lambda: pa.record_batch({"a": pa.array([1.5, None])}),
    "arrow array": lambda: pa.array(["a", None, "c"]).slice(1),
    "arrow chunked": lambda: pa.chunked_array([[1, 2], [], [3]], type=pa.int16()),
    "xarray dataset": xr_dataset,
    "xarray dataarray": lambda: xr_dataset()["temp"].rename("t2"),
}
CODEC_OF = {"polars": "polars", "arrow": "arrow_ipc", "xarray": "xarray"}


@pytest.mark.parametrize("case", list(CASES))
def test_library_values_round_trip_through_safe_codecs(log: Log, case: str) -> None:
    value = CASES[case]()
    encoded, back = log.round_trip(value)
    assert encoded.codec == CODEC_OF[case.split()[0]]
    assert_same(back, value)


def test_numpy_generators_round_trip_and_draw_on_as_the_originals(log: Log) -> None:
    for value in generators():
        encoded, back = log.round_trip(value)
        assert encoded.codec == "nprandom", type(value)
        assert_same(back, value)
        if isinstance(value, np.random.RandomState):
            assert back.randn(3).tolist() == value.randn(3).tolist()  # the cached normal first
        elif isinstance(value, np.random.Generator):
            assert back.random(4).tolist() == value.random(4).tolist()
            assert back.spawn(1)[0].integers(1 << 60) == value.spawn(1)[0].integers(1 << 60)
        else:
            assert back.random_raw(2).tolist() == value.random_raw(2).tolist()


def test_sparse_round_trips_keep_class_and_index_dtypes(log: Log) -> None:
    for value in sparse_values():
        encoded, back = log.round_trip(value)
        assert encoded.codec == "sparse", type(value)
        assert_same(back, value)
    big = sp.random(50, 40, density=0.1, format="csr", random_state=1)
    big.indices, big.indptr = big.indices.astype(np.int64), big.indptr.astype(np.int64)
    _, back = log.round_trip(big)
    assert back.indices.dtype == np.int64 and back.indptr.dtype == np.int64


def test_xarray_values_opened_from_a_file_keep_every_encoding(log: Log, tmp_path: Path) -> None:
    # What open_dataset leaves in .encoding (numpy dtypes, NaN fill values, units) is what to_netcdf writes back.
    ds = xr_dataset().drop_vars("site").assign_attrs(created="2024-01-01")
    ds.to_netcdf(tmp_path / "d.nc", engine="scipy")
    with xr.open_dataset(tmp_path / "d.nc", engine="scipy") as opened:
        assert isinstance(opened["temp"].encoding["dtype"], np.dtype)
        for value in (opened, opened["temp"], opened.load()):
            encoded, back = log.round_trip(value)
            assert encoded.codec == "xarray", type(value)
            assert_same(back, value)
    da = xr_dataset()["temp"]
    da.encoding = {"dtype": np.dtype("int16"), "scale_factor": 0.1, "_FillValue": -1}
    da.coords["time"].encoding = {"units": "days since 2000-01-01"}
    assert_same(log.round_trip(da)[1], da)


def test_numpy_dtypes_are_tagged_values_and_structured_ones_pickled(log: Log) -> None:
    for dtype in (np.dtype(">i2"), np.dtype("<M8[ns]"), np.dtype("S1"), np.dtype("U3"), np.dtype("O")):
        encoded, back = log.round_trip({"d": dtype})
        assert encoded.codec == "tagged" and back["d"] == dtype and type(back["d"]) is type(dtype)
    assert log.encode(np.dtype([("a", "<i4")]))[0].codec == "pickle"


def test_tensors_round_trip_exactly(log: Log) -> None:
    for value in tensors():
        encoded, back = log.round_trip(value)
        assert encoded.codec == "torch", value
        assert_same(back, value)


def test_dense_tensors_keep_their_memory_order_and_other_views_become_contiguous(log: Log) -> None:
    from durable_nb.errors import DecodeError

    base = torch.arange(120, dtype=torch.float32).reshape(2, 3, 4, 5)
    kept = [base.transpose(0, 3), base.to(memory_format=torch.channels_last),
            base.to(torch.bfloat16).permute(2, 0, 3, 1)]
    for value in kept:
        for back in (log.round_trip(value)[1], log.round_trip({"m": torch.nn.Identity(), "t": value})[1]["t"]):
            assert back.stride() == value.stride() and not back.is_contiguous()
            assert_same(back, value)
    assert log.round_trip(base.to(memory_format=torch.channels_last))[1].is_contiguous(
        memory_format=torch.channels_last)
    for view in (base[:, ::2], torch.zeros(1).expand(3)):
        back = log.round_trip(view)[1]
        assert back.is_contiguous() and torch.equal(back, view)
    encoded, blob_ids = log.encode(base.transpose(0, 3))
    crafted = dict(encoded.meta, stride=[1, 10**12, 1, 1])  # would span a terabyte
    with pytest.raises(DecodeError, match="not a dense layout"):
        log.decode(encoded.replace(meta=crafted), blob_ids)


def test_state_dicts_are_tagged_trees_of_tensors(log: Log) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    for state in (model.state_dict(), opt.state_dict()):
        encoded, back = log.round_trip(state)
        assert encoded.codec == "tagged"
        assert_same(back, state)
    back = log.round_trip(model.state_dict())[1]
    assert back._metadata == model.state_dict()._metadata
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    fresh.load_state_dict(back)
    assert torch.equal(fresh[0].weight, model[0].weight)


def test_tensor_of_an_absent_device_comes_back_on_the_cpu_with_a_note(log: Log,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    encoded, blob_ids = log.encode(torch.arange(3.0))
    meta = dict(encoded.meta, device="cuda:7")
    back = log.decode(encoded.replace(meta=meta), blob_ids)
    assert back.device.type == "cpu" and torch.equal(back, torch.arange(3.0))
    assert capsys.readouterr().err.strip() == ("durable_nb: a tensor recorded on cuda:7 is restored on the CPU "
                                               "(no cuda:7 here)")


def test_modules_and_optimizers_are_pickled_with_tensors_out_of_band(log: Log) -> None:
    model = torch.nn.Linear(256, 128)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    encoded, blob_ids = log.encode({"model": model, "opt": opt})
    assert encoded.codec == "pickle" and encoded.version == 3 and encoded.meta["buffers"] == 2
    main = log.store.source(blob_ids[0]).size
    assert main < 16_000 < model.weight.numel() * 4, "the weights are not in the main stream"
    back = log.decode(encoded, blob_ids)
    assert torch.equal(back["model"].weight, model.weight) and isinstance(back["model"].weight, torch.nn.Parameter)
    assert back["opt"].param_groups[0]["params"][0] is back["model"].weight, "sharing survives"
    back["model"].weight.data[0, 0] = 1.0  # writable


def test_sklearn_estimators_are_pickled_and_round_trip(log: Log) -> None:
    from sklearn.linear_model import LogisticRegression

    X = np.random.default_rng(0).random((40, 3))
    model = LogisticRegression().fit(X, X[:, 0] > 0.5)
    encoded, back = log.round_trip(model)
    assert encoded.codec == "pickle"
    assert np.array_equal(back.coef_, model.coef_) and fingerprint(back) == fingerprint(model)


def test_lazy_frame_cannot_be_stored_and_names_collect(log: Log) -> None:
    from durable_nb.codecs import encode_value
    from durable_nb.log.connect import write_transaction

    for value in (pl.LazyFrame({"a": [1]}), {"lazy": pl.LazyFrame({"a": [1]})}):
        with write_transaction(log.conn, log.path), pytest.raises(EncodeError, match=r"\.collect\(\)"):
            encode_value(value, log.store.sink())
    assert log.conn.execute("SELECT count(*) FROM blob").fetchone()[0] == 0


def test_plain_python_values_round_trip_through_the_tagged_codec(log: Log) -> None:
    for value in plain_values():
        encoded, back = log.round_trip(value)
        assert encoded.codec == "tagged", value
        assert_same(back, value)


def test_enum_dataclass_and_namedtuple_edge_cases_round_trip_with_their_fingerprint(log: Log) -> None:
    shared = Slotted([1, 2], pl.DataFrame({"a": [1]}))
    values = [Level.LO, Tagged("x"), Slotted([3]), Pair(1), Span(2, 5), [shared, shared], Perm.R]
    for value in values:
        encoded, back = log.round_trip(value)
        assert encoded.codec == "tagged", value
        assert type(back) is type(value) and fingerprint(back) == fingerprint(value), value
    assert log.round_trip(Tagged("x"))[1].__dict__ == {"label": "x"}, "an unset field stays unset"
    assert log.round_trip(Level.LO)[1] is Level.LOW
    assert log.round_trip(Pair(4, "l"))[1].swapped() == ("l", 4) and log.round_trip(Span(2, 5))[1].length == 3
    back = log.round_trip([shared, shared])[1]
    assert back[0] is back[1] and back[0].frame.equals(shared.frame)
    # A combination of flags has no member name: pickled, exactly.
    combined = log.round_trip(Perm.R | Perm.W)
    assert combined[0].codec == "pickle" and combined[1] == Perm.R | Perm.W


def test_tagged_values_keep_sharing_and_refuse_cycles(log: Log) -> None:
    inner = [1]
    arr = np.arange(3)
    _, back = log.round_trip((inner, inner, {"a": arr, "b": arr}))
    assert back[0] is back[1] and back[2]["a"] is back[2]["b"]
    cyclic: dict[str, Any] = {}
    cyclic["self"] = (cyclic,)
    encoded, back = log.round_trip(cyclic)
    assert encoded.codec == "pickle" and back["self"][0] is back


def test_notebook_classes_and_custom_state_go_to_pickle(log: Log) -> None:
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec("import dataclasses\n@dataclasses.dataclass\nclass P:\n    x: int\np = P(1)\n", ns)
    encoded, back = log.round_trip(ns["p"])
    assert encoded.codec == "pickle" and back.x == 1
    tz = dt.datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo.no_cache("Europe/Paris"))
    assert log.round_trip(tz)[0].codec == "pickle"


def test_tagged_decoding_never_unpickles_a_leaf(log: Log) -> None:
    from durable_nb.errors import UntrustedError

    encoded, blob_ids = log.encode((1, np.arange(3)))
    doc = json.loads(encoded.meta["inline"])
    doc[2][1] = "pickle"  # a crafted log naming pickle for a leaf
    meta = {"inline": json.dumps(doc)}
    with pytest.raises(UntrustedError):
        log.decode(encoded.replace(meta=meta), blob_ids, allow_pickle=False)


# ---------------------------------------------------------------------------------------------- fingerprints

DETERMINISM = """
import json, sys
sys.path.insert(0, {tests!r})
import numpy as np, polars as pl, pyarrow as pa, torch, xarray as xr, scipy.sparse as sp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from test_types import polars_frame, xr_dataset, sparse_values, tensors, plain_values, generators
from durable_nb.fingerprint import fingerprint
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
opt = torch.optim.Adam(model.parameters())
model(torch.ones(2, 3)).sum().backward(); opt.step()
X = np.random.default_rng(0).random((60, 3))
values = {{
    "polars": polars_frame(), "series": polars_frame()["c"], "lazy": polars_frame().lazy().select(pl.col("i") * 2),
    "arrow": pa.table({{"s": ["a", None]}}), "xarray": xr_dataset(), "dataarray": xr_dataset()["temp"],
    "module": model, "optimizer": opt, "state_dict": model.state_dict(), "opt_state": opt.state_dict(),
    "sklearn": make_pipeline(StandardScaler(), HistGradientBoostingClassifier(max_iter=3, random_state=0)).fit(
        X, X[:, 0] > 0.5),
    **{{f"sparse{{i}}": v for i, v in enumerate(sparse_values())}},
    **{{f"rng{{i}}": v for i, v in enumerate(generators())}},
    **{{f"tensor{{i}}": v for i, v in enumerate(tensors())}},
    **{{f"plain{{i}}": v for i, v in enumerate(plain_values())}},
}}
print(json.dumps({{k: fingerprint(v) for k, v in values.items()}}))
"""


def test_fingerprints_agree_across_processes_and_hash_seeds(tmp_path: Path) -> None:
    script = tmp_path / "fp.py"
    script.write_text(DETERMINISM.format(tests=str(REPO / "tests")))
    results = []
    for seed in ("1", "4242"):
        out = subprocess.run([sys.executable, str(script)], env={**os.environ, "PYTHONHASHSEED": seed}, cwd=tmp_path,
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout))
    assert results[0] == results[1]
    assert len(set(results[0].values())) == len(results[0])


def test_equal_values_built_differently_fingerprint_equal() -> None:
    df = polars_frame()
    assert fingerprint(pl.concat([df.head(1), df.tail(2)], rechunk=False)) == fingerprint(df.clone().rechunk())
    cat = pl.Series(["b", "a"], dtype=pl.Categorical)
    assert fingerprint(cat) == fingerprint(pl.Series(["a", "b"], dtype=pl.Categorical).reverse())
    assert fingerprint(pl.Series(["ab", "abcdefgh"]).str.slice(0, 2)) == fingerprint(pl.Series(["ab", "ab"]))
    # short strings only, but a data buffer left over from a long one that was filtered out
    kept = pl.Series(["ab", "a string longer than twelve", "cd"]).filter(pl.Series([True, False, True]))
    assert fingerprint(kept) == fingerprint(pl.Series(["ab", "cd"]))
    base = torch.arange(12.0).reshape(3, 4)
    assert fingerprint(base.t()) == fingerprint(base.t().contiguous())
    assert fingerprint(base.to(torch.bfloat16)[:, ::2]) == fingerprint(base.to(torch.bfloat16)[:, ::2].clone())
    coo = sp.coo_matrix(([1.0, 2.0], ([1, 0], [0, 1])), shape=(2, 2))
    assert fingerprint(coo) == fingerprint(sp.coo_matrix(([2.0, 1.0], ([0, 1], [1, 0])), shape=(2, 2)))
    assert fingerprint(xr_dataset()) == fingerprint(xr_dataset().copy(deep=True))


def test_one_changed_element_changes_the_fingerprint() -> None:
    df = polars_frame()
    changes = [
        (df, df.with_columns(pl.when(pl.col("i") == 3).then(4).otherwise(pl.col("i")).alias("i"))),
        (pl.Series(["a" * 20, "b"]), pl.Series(["a" * 19 + "b", "b"])),
        (torch.zeros(4), torch.zeros(4).index_fill_(0, torch.tensor([2]), 1.0)),
        (torch.zeros(4), torch.zeros(4, dtype=torch.bfloat16)), (torch.zeros(4), torch.zeros(4).requires_grad_()),
        (xr_dataset(), xr_dataset().assign_attrs(title="u")),
        (sp.csr_matrix(np.eye(3)), sp.csr_matrix(np.eye(3) * 2)), (sp.csr_matrix(np.eye(3)), sp.csr_array(np.eye(3))),
    ]
    for before, after in changes:
        assert fingerprint(before) != fingerprint(after), type(before)


def test_importing_durable_nb_and_loading_the_extension_import_no_library() -> None:
    from durable_nb.fingerprint import _LIBRARIES
    from durable_nb.fingerprint_libs import LIBRARIES as HANDLED

    assert _LIBRARIES == HANDLED
    code = textwrap.dedent(f"""
        import sys
        import durable_nb
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        ip.run_cell("%load_ext durable_nb")
        import durable_nb.codecs, durable_nb.fingerprint
        durable_nb.fingerprint.fingerprint({{"a": (1, 2.0, b"x")}})
        print(sorted(m for m in {LIBRARIES!r} if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------------------------- %%durable

MUTATIONS = {
    "polars": ("import polars as pl\nv = pl.DataFrame({'a': [1, 2]})", "v = v  # no-op",
               "v.insert_column(1, pl.Series('b', [3, 4]))"),
    "torch": ("import torch\nv = torch.zeros(3)", "", "v[1] = 5"),
    "xarray": ("import xarray as xr, numpy as np\nv = xr.DataArray(np.zeros(3), dims='x')", "", "v[0] = 1.0"),
    "sparse": ("import scipy.sparse as sp, numpy as np\nv = sp.csr_matrix(np.eye(3))", "", "v.data[0] = 7.0"),
    "arrow": ("import pyarrow as pa\nv = [pa.array([1, 2])]", "", "v.append(pa.array([3]))"),
    "plain": ("import datetime as dt\nv = {dt.date(2024, 1, 1): {1, 2}}", "", "v[dt.date(2024, 1, 1)].add(3)"),
}


@pytest.mark.parametrize("kind", list(MUTATIONS))
def test_in_place_mutation_reruns_the_cell_that_reads_it(shell: Shell, kind: str) -> None:
    setup, _, mutate = MUTATIONS[kind]
    shell.run(setup)
    reader = "out = str(v)[:10]"
    shell.durable(reader)
    shell.durable(reader)
    assert shell.last_status()["state"] == "replayed"
    shell.run(mutate)
    shell.durable(reader)
    status = shell.last_status()
    assert status["state"] == "recorded" and "input v changed" in (status["reason"] or ""), status


# ---------------------------------------------------------------------------------------------- sharing

PRODUCE = textwrap.dedent("""
    import datetime as dt, decimal, fractions, uuid, pathlib, collections, enum
    import numpy as np, pandas as pd, polars as pl, pyarrow as pa, xarray as xr, scipy.sparse as sp, torch
    frame = pl.DataFrame({'a': [1, 2], 's': ['x', None]})
    table = pa.table({'a': [1.5, None]})
    cube = xr.DataArray(np.arange(4.0).reshape(2, 2), dims=('x', 'y'), coords={'x': [10, 20]}, attrs={'u': 'm'})
    matrix = sp.csr_array(np.eye(3))
    weights = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3).t()
    state = torch.nn.Linear(2, 1).state_dict()
    plain = (dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), decimal.Decimal('1.10'), fractions.Fraction(1, 3),
             uuid.UUID(int=5), pathlib.Path('data/x.csv'), {b'k', b'v'}, collections.OrderedDict(a=1),
             enum.Enum._missing_ is not None, dt.timedelta(3), 2j, collections.Counter('abca'),
             collections.deque([1], maxlen=3), pd.Timestamp('2024-01-01', tz='UTC'), pd.Timedelta('2h'), pd.NaT)
    from urllib.parse import urlparse
    from test_types import Color, Point, Run
    series = frame['s']
    batch = pa.record_batch({'x': [1, 2]})
    arr = pa.array(['p', None, 'q']).slice(1)
    chunks = pa.chunked_array([[1], [2, 3]])
    dataset = cube.to_dataset(name='c').assign_attrs(title='t')
    matrices = [f(np.eye(3)) for f in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.bsr_matrix, sp.dia_matrix,
                                       sp.lil_matrix, sp.dok_matrix, sp.coo_array, sp.dok_array)]
    tensors = [torch.nn.Parameter(torch.ones(2)), torch.ones(3).to(torch.float8_e5m2),
               torch.zeros(1, 2, 3, 2).to(memory_format=torch.channels_last)]
    records = [Run('r', dt.datetime(2024, 1, 1), [0.5]), Color.RED, Point(1, 2), np.dtype('>i2'),
               urlparse('https://example.org/a?b=1')]
    rng = np.random.default_rng(11)
    noise = rng.normal(size=3)
""")
SHARED = ("frame", "table", "cube", "matrix", "weights", "state", "plain", "series", "batch", "arr", "chunks",
          "dataset", "matrices", "tensors", "records", "rng", "noise")


def test_colleague_replays_every_cell_of_these_types_without_trusting_the_log(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from durable_nb import session
    from durable_nb.log.maintenance import export

    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice.mkdir()
    bob.mkdir()

    def kernel(db: Path, secret: Path) -> Shell:
        session.close_log()
        become(monkeypatch, secret)
        monkeypatch.chdir(db.parent)
        return Shell(db)

    sh = kernel(alice / "a.durable.db", alice / "secret")
    sh.durable(PRODUCE, "--name produce")
    assert sh.last_status()["state"] == "recorded" and not sh.last_status()["problems"]
    want = {k: sh.ns[k] for k in SHARED}
    export(alice / "a.durable.db", bob / "shared.durable.db")
    from durable_nb import DurableLog

    with DurableLog(bob / "shared.durable.db", readonly=True) as shared:
        codecs = dict(shared.conn.execute("SELECT name, codec FROM output WHERE kind = 'value'").fetchall())
    assert "pickle" not in codecs.values(), codecs

    sh = kernel(bob / "shared.durable.db", bob / "secret")  # Bob never ran `durable-nb trust`
    sh.durable(PRODUCE, "--name produce")
    assert sh.last_status()["state"] == "replayed", sh.last_status()
    for name, value in want.items():
        assert_same(sh.ns[name], value)
    session.close_log()


def test_crafted_sparse_indices_are_refused(log: Log) -> None:
    from durable_nb.errors import DecodeError

    for value, part in ((sp.csr_matrix(np.eye(3)), "indices"), (sp.coo_array(np.eye(3)), "coords")):
        encoded, blob_ids = log.encode(value)
        doc = json.loads(encoded.meta["inline"])
        node = doc[doc.index(part) + 1]
        leaf = node if node[0] == "L" else node[1]  # coords: a tuple of leaves
        bad = (value.indices if part == "indices" else value.coords[0]).copy()
        bad[-1] = 99  # past the end: scipy's kernels would read out of bounds
        ids = list(blob_ids)
        ids[leaf[4]] = log.encode(bad)[1][0]
        with pytest.raises(DecodeError, match="inconsistent"):
            log.decode(encoded, ids)
