"""Memory shared between numpy arrays, kept through a replay.

`x2_sub = x2[:2, :2]` makes two names for one memory: a later `x2_sub[0, 0] = 99` changes `x2` too. A cell's
outputs therefore include every visible array that shares memory with an array it mutated, and an array that
lies inside another visible array (its anchor: the base itself, or a contiguous array covering it) is stored
as a view of it (byte offset, shape, strides, dtype) rather than as a copy, so after a replay later mutations
propagate exactly as they did the first time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .codecs.npy import dtype_from_descr
from .errors import DecodeError


@dataclass
class View:
    name: str
    anchor: str
    meta: dict[str, Any]


def numpy_if_imported() -> Any:
    return sys.modules.get("numpy")


def is_object_array(value: Any) -> bool:
    np = numpy_if_imported()
    return np is not None and type(value) is np.ndarray and value.dtype.hasobject


def _is_plain_array(value: Any, np: Any) -> bool:
    return type(value) is np.ndarray and not value.dtype.hasobject and value.size > 0


def _root(arr: Any, np: Any) -> Any:
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr.base if arr.base is not None else arr


def _bounds(arr: Any, np: Any) -> tuple[int, int]:
    utils = getattr(np.lib, "array_utils", np)  # numpy 2 moved byte_bounds there
    low, high = utils.byte_bounds(arr)
    return int(low), int(high)


def arrays(ns: dict[str, Any], visible: Callable[[str], bool]) -> dict[str, Any]:
    """Visible plain ndarrays, only when some array of the namespace shares its memory with another."""
    np = numpy_if_imported()
    if np is None:
        return {}
    found = {n: v for n, v in ns.items() if _is_plain_array(v, np) and visible(n)}
    roots: dict[int, int] = {}
    for value in found.values():
        key = id(_root(value, np))
        roots[key] = roots.get(key, 0) + 1
    return {n: v for n, v in found.items() if roots[id(_root(v, np))] > 1}


def partners(shared: dict[str, Any], mutated: Iterable[str]) -> list[str]:
    """Visible arrays whose memory overlaps an array the cell mutated: they changed too."""
    np = numpy_if_imported()
    touched = [shared[n] for n in mutated if n in shared]
    return sorted(n for n, v in shared.items()
                  if any(v is not t and np.may_share_memory(v, t) for t in touched))


def view_of(name: str, value: Any, shared: dict[str, Any]) -> View | None:
    """How to rebuild `value` as a view of another visible array, or None when it is stored as its own memory.
    The anchor is the highest-ranked contiguous array covering it (see _rank), so anchors are never views."""
    np = numpy_if_imported()
    if name not in shared:
        return None
    low, high = _bounds(value, np)
    root = _root(value, np)
    mine = _rank(name, value, np)
    best: tuple[tuple[int, bool, str], str] | None = None
    for other, arr in shared.items():
        if arr is value or _root(arr, np) is not root or not (arr.flags.c_contiguous or arr.flags.f_contiguous):
            continue
        a_low, a_high = _bounds(arr, np)
        rank = _rank(other, arr, np)
        if a_low <= low and high <= a_high and rank > mine and (best is None or rank > best[0]):
            best = (rank, other)
    if best is None:
        return None
    anchor = shared[best[1]]
    offset = value.__array_interface__["data"][0] - anchor.__array_interface__["data"][0]
    return View(name, best[1], {"offset": offset, "shape": list(value.shape), "strides": list(value.strides),
                                "dtype": np.lib.format.dtype_to_descr(value.dtype),
                                "writeable": bool(value.flags.writeable)})


def _rank(name: str, arr: Any, np: Any) -> tuple[int, bool, str]:
    """A strict order among arrays of one memory: larger span first, then the array owning it (`x` before
    `x.reshape(-1)`), then the name, so no two arrays can be views of each other."""
    low, high = _bounds(arr, np)
    return high - low, arr.base is None, name


def rebuild(name: str, anchor: Any, meta: dict[str, Any]) -> Any:
    """The view `meta` describes, into the memory of `anchor`; DecodeError when `anchor` cannot hold it."""
    np = numpy_if_imported()

    if np is None or type(anchor) is not np.ndarray or not (anchor.flags.c_contiguous or anchor.flags.f_contiguous):
        raise DecodeError(f"variable {name} was a view of an array that is not here in the same form")
    memory = anchor.reshape(-1, order="A").view(np.uint8)
    try:
        view = np.ndarray(tuple(meta["shape"]), dtype=dtype_from_descr(meta["dtype"]), buffer=memory,
                          offset=meta["offset"], strides=tuple(meta["strides"]))
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"variable {name} cannot be rebuilt as a view of its array here: {exc}") from exc
    if not meta["writeable"]:
        view.flags.writeable = False
    return view


def same_view(current: Any, view: Any) -> bool:
    """`current` already is that view (same memory, layout and type): keep it, and its identity."""
    np = numpy_if_imported()
    return (type(current) is np.ndarray and current.dtype == view.dtype and current.shape == view.shape
            and current.strides == view.strides
            and current.__array_interface__["data"][0] == view.__array_interface__["data"][0])
