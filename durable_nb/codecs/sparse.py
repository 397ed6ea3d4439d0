"""scipy.sparse matrices and sparse arrays (CSR, CSC, COO, BSR, DIA) as their component arrays, each a `.npy`
leaf of a tagged tree; LIL and DOK as their CSR form, converted back (same entries; a DOK's keys come back in
row order). The class comes from a fixed list of scipy's own, never from the log."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import DecodeError
from .tagged import decode_tree, encode_tree

if TYPE_CHECKING:
    from .streams import Sink, Source

_PARTS = {"csr": ("data", "indices", "indptr"), "csc": ("data", "indices", "indptr"),
          "bsr": ("data", "indices", "indptr"), "coo": ("data", "coords"), "dia": ("data", "offsets")}
# Stored as CSR, rebuilt by this method: they hold Python lists / dicts, not arrays.
_VIA_CSR = {"lil": "tolil", "dok": "todok"}
_CLASSES = tuple(f"{fmt}_{kind}" for fmt in (*_PARTS, *_VIA_CSR) for kind in ("matrix", "array"))


class SparseCodec:
    name = "sparse"
    version = 2  # 2: LIL and DOK
    safe = True

    def accepts(self, value: Any) -> bool:
        sparse = sys.modules.get("scipy.sparse")
        return sparse is not None and type(value).__name__ in _CLASSES and type(value) is getattr(
            sparse, type(value).__name__, None)

    def encode(self, value: Any, sink: Sink) -> dict[str, Any]:
        name = type(value).__name__
        if value.format in _VIA_CSR:
            value = value.tocsr()
        parts = {part: getattr(value, part) for part in _PARTS[value.format]}
        tree = {"class": name, "shape": tuple(value.shape), "dtype": value.dtype.str, **parts}
        if value.format == "bsr":
            tree["blocksize"] = tuple(value.blocksize)
        if value.format in ("csr", "csc", "coo"):
            tree["canonical"] = bool(value.has_canonical_format)
        return encode_tree(tree, sink)

    def decode(self, meta: dict[str, Any], sources: Sequence[Source]) -> Any:
        import numpy as np
        from scipy import sparse

        tree = decode_tree(meta, sources)
        name = tree["class"]
        if name not in _CLASSES:
            raise DecodeError(f"{name!r} is not a scipy.sparse class this codec stores")
        fmt, _, kind = name.partition("_")
        cls = getattr(sparse, f"csr_{kind}" if fmt in _VIA_CSR else name)
        extra = {"blocksize": tree["blocksize"]} if "blocksize" in tree else {}
        # An empty one of the right shape, then its parts set as decoded: the constructor would copy them and
        # may narrow the index dtype.
        value = cls(tree["shape"], dtype=np.dtype(tree["dtype"]), **extra)
        for part in _PARTS[value.format]:
            setattr(value, part, tree[part])
        _check(value)
        if tree.get("canonical"):
            value.has_canonical_format = True
        return getattr(value, _VIA_CSR[fmt])() if fmt in _VIA_CSR else value


def _check(value: Any) -> None:
    """Indices out of bounds would make scipy's C++ kernels read out of bounds: a crafted log must fail here."""
    try:
        if value.format in ("csr", "csc", "bsr"):
            value.check_format(full_check=True)
        elif value.format == "coo":
            for coords, n in zip(value.coords, value.shape, strict=True):
                if len(coords) != value.nnz or (len(coords) and (coords.min() < 0 or coords.max() >= n)):
                    raise ValueError("coordinates out of bounds")
        elif value.data.ndim != 2 or len(value.offsets) != value.data.shape[0]:
            raise ValueError("dia data does not match its offsets")
    except ValueError as exc:
        raise DecodeError(f"sparse {value.format} value is inconsistent ({exc}): the log was modified") from exc
