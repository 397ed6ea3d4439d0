"""Fingerprints of the data ecosystem's values beyond numpy / pandas / pyarrow: polars, torch, xarray, scipy.sparse.

Imported by `fingerprint._resolve` only when a value whose type comes from one of these libraries is first
fingerprinted (so that library is already imported). Like the core handlers, each one hashes type-tagged raw
buffers through the caller's hasher: never a pickle, an id() or a memory address, so fingerprints agree across
processes and hash seeds. scikit-learn estimators need nothing here: their pickle state (parameters and fitted
arrays) goes through the generic reduction, whose ndarrays hash by buffer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from .errors import Unfingerprintable
from .fingerprint import (
    Handler,
    _chunked,
    _Hasher,
    _null_positions,
    _raw,
    _type_name,
    _unfingerprintable,
    _var_width,
    on_pool,
)

# Arrow string views (what polars hands over without a copy): a 16-byte view per value, inline up to this length.
_VIEW_INLINE = 12
_VIEW_BLOCK = 1 << 20  # views whose lengths one task checks: 16 MiB


def handler(t: type) -> Handler | None:
    top = t.__module__.partition(".")[0]
    resolve = _RESOLVERS.get(top)
    return resolve(t) if resolve is not None else None


# ---------------------------------------------------------------------------------------------- polars


def _polars_handler(t: type) -> Handler | None:
    import polars as pl

    if issubclass(t, pl.DataFrame):
        return _polars_frame
    if issubclass(t, pl.Series):
        return _polars_series
    if issubclass(t, pl.LazyFrame):
        return _polars_lazy
    return None


def _polars_frame(h: _Hasher, df: Any) -> None:
    import polars as pl

    if h.seen(df):
        return
    h.put(b"lF")
    h.visit((df.height, df.columns, [repr(d) for d in df.dtypes]))
    # newest compat level: strings come over as Arrow string views, without the copy large_string would need
    table = df.to_arrow(compat_level=pl.CompatLevel.newest())
    for column in table.columns:
        _arrow_column(h, column)


def _polars_series(h: _Hasher, series: Any) -> None:
    import polars as pl

    if h.seen(series):
        return
    h.put(b"lS")
    h.visit_in(series.name, "the name of a polars Series")
    h.visit((len(series), repr(series.dtype)))
    _arrow_column(h, series.to_frame().to_arrow(compat_level=pl.CompatLevel.newest()).column(0))


def _polars_lazy(h: _Hasher, lazy: Any) -> None:
    """A LazyFrame is its plan (with any in-memory frames it scans). polars documents the serialized plan as
    stable within one polars version, so the version is part of the fingerprint."""
    import io

    import polars as pl

    try:
        plan = lazy.serialize(format="binary")
    except Exception as e:
        raise _unfingerprintable(lazy, f"polars cannot serialize its plan ({e})") from e
    # The plan holds its frames as polars writes them, layout included: a column that has an all-valid validity
    # bitmap (fill_null's result) is written unlike the same column replayed from the log, which has none, so
    # `query.collect()` after a restart never replayed. Read back and written again, the plan is layout-free.
    with contextlib.suppress(Exception):  # a plan polars cannot read back keeps its first form: at worst a miss
        plan = pl.LazyFrame.deserialize(io.BytesIO(plan), format="binary").serialize(format="binary")
    h.put(b"lL")
    h.visit(pl.__version__)
    h.visit(plan)


def _arrow_column(h: _Hasher, chunked: Any) -> None:
    """An Arrow column as polars exports it: string views and dictionaries (Categorical / Enum) are hashed by
    their logical content; everything else as fingerprint.py hashes Arrow columns."""
    import pyarrow as pa

    typ = chunked.type
    if pa.types.is_dictionary(typ):
        # Category codes depend on polars' string cache, not on the values: hash the values they stand for.
        # (Arrow's take has no string_view kernel: the categories, few, are widened first.)
        values = typ.value_type
        wide = pa.large_string() if pa.types.is_string_view(values) else values
        h.put(b"ld")
        _chunked(h, pa.chunked_array([c.dictionary.cast(wide).take(c.indices) for c in chunked.chunks], type=wide))
    elif pa.types.is_string_view(typ) or pa.types.is_binary_view(typ):
        _string_views(h, chunked)
    else:
        _chunked(h, chunked)


def _string_views(h: _Hasher, chunked: Any) -> None:
    """Strings of at most 12 bytes live inside their 16-byte view (length, bytes, zero padding), so when a
    column holds no longer one its views are its canonical content, hashed in place. A column with longer
    strings is cast to large_string (a copy) and hashed by lengths and bytes."""
    import numpy as np
    import pyarrow as pa

    h.put(b"lv")
    h.visit((str(chunked.type), len(chunked), chunked.null_count))
    if chunked.null_count:
        _null_positions(h, chunked)
    views, unsure = [], []
    for chunk in chunked.chunks:
        if not len(chunk):
            continue
        buffers = chunk.buffers()
        rows = np.frombuffer(buffers[1], dtype=np.uint8).reshape(-1, 16)[chunk.offset:chunk.offset + len(chunk)]
        if chunk.null_count:  # what a null's view holds is arbitrary: zero it (a copy of the views only)
            rows = rows.copy()
            rows[chunk.is_null().to_numpy(zero_copy_only=False)] = 0
        views.append(rows)
        # Longer strings live in the data buffers after the views: with none, there is nothing to check.
        if any(b is not None and b.size for b in buffers[2:]):
            unsure.append(rows)
    # Lengths are checked block by block on the hashing pool (numpy releases the GIL while it reduces).
    blocks = [rows[i:i + _VIEW_BLOCK] for rows in unsure for i in range(0, len(rows), _VIEW_BLOCK)]
    if any(on_pool(_longest, blocks)):
        wide = pa.large_binary() if pa.types.is_binary_view(chunked.type) else pa.large_string()
        h.put(b"w")
        _var_width(h, chunked.cast(wide), "<i8")
        return
    h.put(b"i")
    for rows in views:
        h.put(rows.reshape(-1))


def _longest(rows: Any) -> bool:
    return bool(rows.view("<i4")[:, 0].max() > _VIEW_INLINE)


# ---------------------------------------------------------------------------------------------- torch

# numpy has no bfloat16, float8 or complex32: their bits are hashed through a same-width integer view.
_SAME_WIDTH_INT = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}


def _torch_handler(t: type) -> Handler | None:
    import torch

    if t is torch.Tensor or t is torch.nn.Parameter:
        return _tensor
    return None


def _tensor(h: _Hasher, tensor: Any) -> None:
    import torch

    if h.seen(tensor):
        return
    h.put(b"tT")
    h.visit((_type_name(type(tensor)), str(tensor.dtype), tuple(tensor.shape), str(tensor.device),
             tensor.requires_grad, str(tensor.layout)))
    if tensor.layout == torch.sparse_coo:
        coalesced = tensor.detach().coalesce()
        _tensor(h, coalesced.indices())
        _tensor(h, coalesced.values())
        return
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_nested:
        raise _unfingerprintable(tensor, f"tensors of layout {tensor.layout} are not supported")
    if tensor.is_meta:  # no data: shape and dtype are all there is
        return
    _raw(h, tensor_as_numpy(tensor))


def tensor_as_numpy(tensor: Any) -> Any:
    """A numpy view of a tensor's elements on the CPU (a copy only for another device, conjugate or negative
    bits); dtypes numpy lacks are viewed as a same-width integer type. Strides are kept."""
    import torch

    data = tensor.detach()
    if data.device.type != "cpu":
        data = data.cpu()
    data = data.resolve_conj().resolve_neg()
    try:
        return data.numpy()
    except TypeError:
        return data.view(getattr(torch, _SAME_WIDTH_INT[data.element_size()])).numpy()


# ---------------------------------------------------------------------------------------------- xarray


def _xarray_handler(t: type) -> Handler | None:
    import xarray as xr

    if issubclass(t, xr.DataArray):
        return _data_array
    if issubclass(t, xr.Dataset):
        return _dataset
    if issubclass(t, xr.Variable):  # also IndexVariable
        return _variable
    return None


def _data_array(h: _Hasher, da: Any) -> None:
    if h.seen(da):
        return
    h.put(b"xA")
    h.visit_in(da.name, "the name of a DataArray")
    _variable(h, da.variable)
    _variables(h, da.coords.variables)
    _indexes(h, da)


def _dataset(h: _Hasher, ds: Any) -> None:
    if h.seen(ds):
        return
    h.put(b"xD")
    h.visit((list(ds.data_vars), list(ds.coords)))
    # Data variables, then coordinates: how they interleave in ds.variables depends on how the Dataset was
    # built (to_dataset puts coordinates first), not on its content, and identical() ignores it.
    _variables(h, ds.data_vars.variables)
    _variables(h, ds.coords.variables)
    h.visit_in(ds.attrs, "the attrs of a Dataset")
    h.visit_in(ds.encoding, "the encoding of a Dataset")
    _indexes(h, ds)


def _variables(h: _Hasher, variables: Any) -> None:
    h.put(b"x")
    h.tag(b"v", len(variables))
    for name, variable in variables.items():
        h.visit_in(name, "a variable name")
        _variable(h, variable)


def _variable(h: _Hasher, variable: Any) -> None:
    h.put(b"xV")
    h.visit((_type_name(type(variable)), variable.dims))
    data = variable._data
    if type(data).__module__.partition(".")[0] == "dask":
        raise Unfingerprintable(f"cannot fingerprint a dask-backed xarray variable {variable.dims}: computing it "
                                "would run the whole graph. Call .compute() (or .load()) first, or declare what "
                                "it depends on with --deps-file.")
    h.visit(variable.values)  # numpy buffers; a lazily loaded file variable is read once
    h.visit_in(variable.attrs, "the attrs of an xarray variable")
    h.visit_in(variable.encoding, "the encoding of an xarray variable")


def _indexes(h: _Hasher, obj: Any) -> None:
    """Which index type each indexed coordinate has (default: pandas); their values are the coordinates'."""
    h.visit([(name, _type_name(type(index))) for name, index in obj.xindexes.items()])


# ---------------------------------------------------------------------------------------------- scipy.sparse


def _scipy_handler(t: type) -> Handler | None:
    if not t.__module__.startswith("scipy.sparse"):
        return None
    from scipy import sparse

    if issubclass(t, (sparse.sparray, sparse.spmatrix)):
        return _sparse
    return None


_SPARSE_PARTS = {"csr": ("indptr", "indices", "data"), "csc": ("indptr", "indices", "data"),
                 "bsr": ("indptr", "indices", "data"), "coo": ("coords", "data"), "dia": ("offsets", "data")}


def _sparse(h: _Hasher, matrix: Any) -> None:
    """A sparse matrix / array as its component arrays, in canonical form (sorted, duplicates summed), so the
    order entries were inserted in does not count; explicit zeros do (they are stored entries)."""
    if h.seen(matrix):
        return
    fmt = matrix.format
    h.put(b"sM")
    h.visit((_type_name(type(matrix)), fmt, matrix.shape, str(matrix.dtype)))
    parts = _SPARSE_PARTS.get(fmt)
    if parts is None:  # lil, dok: hashed as their CSR form
        h.put(b"r")
        matrix, parts = matrix.tocsr(), _SPARSE_PARTS["csr"]
    elif fmt in ("csr", "csc", "coo") and not matrix.has_canonical_format:
        matrix = matrix.copy()
        matrix.sum_duplicates()
    if fmt == "bsr":
        h.visit(matrix.blocksize)
    for part in parts:
        h.visit(getattr(matrix, part))


_RESOLVERS: dict[str, Callable[[type], Handler | None]] = {
    "polars": _polars_handler,
    "torch": _torch_handler,
    "xarray": _xarray_handler,
    "scipy": _scipy_handler,
}
LIBRARIES = tuple(_RESOLVERS)
