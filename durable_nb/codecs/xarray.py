"""xarray DataArray / Dataset as a tagged tree: each variable's numpy buffer a `.npy` leaf (object ones as
tagged items), its dims, attrs and encoding as tagged plain data. Only default (pandas) indexes on dimension
coordinates are rebuilt; custom or multi-indexes, and dask-backed variables, go on to pickle."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .tagged import decode_tree, encode_tree

if TYPE_CHECKING:
    from .streams import Sink, Source


class XarrayCodec:
    name = "xarray"
    version = 1
    safe = True

    def accepts(self, value: Any) -> bool:
        xr = sys.modules.get("xarray")
        return xr is not None and type(value) in (xr.DataArray, xr.Dataset)

    def encode(self, value: Any, sink: Sink) -> dict[str, Any]:
        import xarray as xr

        for name, index in value.xindexes.items():
            if type(index) is not xr.indexes.PandasIndex or name not in value.dims:
                raise ValueError(f"index {name!r} is a {type(index).__name__}, which is not rebuilt here")
        if isinstance(value, xr.DataArray):
            tree = {"kind": "array", "name": value.name, "variable": _variable(value.variable),
                    "coords": _variables(value.coords.variables)}
        else:
            tree = {"kind": "dataset", "data_vars": _variables({k: value.variables[k] for k in value.data_vars}),
                    "coords": _variables(value.coords.variables), "attrs": dict(value.attrs),
                    "encoding": dict(value.encoding)}
        return encode_tree(tree, sink)

    def decode(self, meta: dict[str, Any], sources: Sequence[Source]) -> Any:
        import xarray as xr

        tree = decode_tree(meta, sources)
        coords = {name: _rebuild(v) for name, v in tree["coords"]}
        if tree["kind"] == "array":
            array = xr.DataArray(_rebuild(tree["variable"]), coords=coords, name=tree["name"])
            array.encoding = tree["variable"]["encoding"]  # DataArray(variable) drops the variable's encoding
            return array
        data = {name: _rebuild(v) for name, v in tree["data_vars"]}
        dataset = xr.Dataset(data, coords=coords, attrs=tree["attrs"])
        dataset.encoding = tree["encoding"]
        return dataset


def _variables(variables: Any) -> list[tuple[Any, dict[str, Any]]]:
    return [(name, _variable(v)) for name, v in variables.items()]


def _variable(variable: Any) -> dict[str, Any]:
    if type(variable._data).__module__.partition(".")[0] == "dask":
        raise ValueError("a dask-backed variable would be computed")
    return {"dims": tuple(variable.dims), "data": variable.values, "attrs": dict(variable.attrs),
            "encoding": dict(variable.encoding)}


def _rebuild(tree: dict[str, Any]) -> Any:
    import xarray as xr

    return xr.Variable(tree["dims"], tree["data"], attrs=tree["attrs"], encoding=tree["encoding"])
