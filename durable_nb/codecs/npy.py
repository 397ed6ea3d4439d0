"""Numeric numpy arrays (and numpy scalars) as their raw buffer plus dtype/shape/order in meta.

Encoding hands the array's own memory to the sink (no copy for contiguous arrays); decoding allocates the
result once and fills it in place, so it comes back writable with the same dtype, shape and order.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from .streams import Sink, Source


class NpyCodec:
    name = "npy"
    version = 1
    safe = True

    def accepts(self, value: Any) -> bool:
        np = sys.modules.get("numpy")
        if np is None:  # numpy not imported: the value cannot be a numpy object
            return False
        if type(value) is np.ndarray or isinstance(value, np.generic):
            dtype = value.dtype
            return not dtype.hasobject and dtype.itemsize > 0
        return False

    def encode(self, value: Any, sink: Sink) -> dict[str, Any]:
        import numpy as np

        scalar = isinstance(value, np.generic)
        arr = np.asarray(value)
        order = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
        sink.put(raw_bytes(arr, order))
        meta = {"dtype": np.lib.format.dtype_to_descr(arr.dtype), "shape": list(arr.shape), "order": order,
                "scalar": scalar}
        if not scalar and not arr.flags.writeable:  # e.g. pandas' copy-on-write views (`s.to_numpy()`)
            meta["writeable"] = False
        return meta

    def decode(self, meta: dict[str, Any], sources: Sequence[Source]) -> Any:
        import numpy as np

        arr = np.empty(tuple(meta["shape"]), dtype=dtype_from_descr(meta["dtype"]), order=meta["order"])
        sources[0].readinto(raw_bytes(arr, meta["order"]))
        if not meta.get("writeable", True):
            arr.flags.writeable = False
        return arr[()] if meta["scalar"] else arr


def raw_bytes(arr: np.ndarray[Any, Any], order: str = "C") -> np.ndarray[Any, Any]:
    """The array's bytes as a flat uint8 array: a view when `arr` is contiguous in `order`, else a copy.
    (datetime64 arrays export no buffer themselves; a uint8 view does.)"""
    import numpy as np

    flat = np.ravel(arr, order="F" if order == "F" else "C")
    return flat.view(np.uint8) if flat.size else np.empty(0, np.uint8)


def dtype_from_descr(descr: Any) -> np.dtype[Any]:
    """The dtype of a descr stored in meta (as `np.lib.format.dtype_to_descr` gives it, through JSON)."""
    import numpy as np

    return np.lib.format.descr_to_dtype(_descr(descr))


def _descr(descr: Any) -> Any:
    """JSON turns a structured dtype's tuples into lists; descr_to_dtype wants (name, dtype[, shape])
    tuples back, with tuple names (title, name) and tuple shapes."""
    if not isinstance(descr, list):
        return descr
    fields = []
    for name, dtype, *shape in descr:
        field = (tuple(name) if isinstance(name, list) else name, _descr(dtype))
        fields.append(field + ((tuple(shape[0]),) if shape else ()))
    return fields
