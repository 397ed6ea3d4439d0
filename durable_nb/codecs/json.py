"""Exact plain data as JSON: None, bool, int, float (nan/inf too), str, and lists / str-keyed dicts of them.

"Exact" means the JSON round trip gives back an equal value of the very same types and structure: a tuple,
an int subclass, a dict subclass, a non-str key or one list appearing twice (aliasing) send the value on
to pickle.
Small documents live inline in meta; bigger ones in a blob.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .streams import Sink, Source

INLINE_LIMIT = 64 * 1024
_SCALARS = (type(None), bool, int, float, str)


class JsonCodec:
    name = "json"
    version = 1
    safe = True

    def accepts(self, value: Any) -> bool:
        return _exact(value)

    def encode(self, value: Any, sink: Sink) -> dict[str, Any]:
        # ensure_ascii keeps lone surrogates (valid in a Python str, not in UTF-8) as escapes
        text = json.dumps(value, ensure_ascii=True, allow_nan=True, check_circular=False)
        if len(text) <= INLINE_LIMIT:
            return {"inline": text, "inline_size": len(text)}
        sink.put(text.encode("ascii"))
        return {}

    def decode(self, meta: dict[str, Any], sources: Sequence[Source]) -> Any:
        text = meta["inline"] if "inline" in meta else sources[0].read().decode("ascii")
        return json.loads(text)


def _exact(value: Any) -> bool:
    """Iterative (deep data must not hit the recursion limit); every container may appear only once."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is not list and kind is not dict:
            return False
        if id(item) in seen:
            return False
        seen.add(id(item))
        if kind is dict:
            if not all(type(k) is str for k in item):
                return False
            stack.extend(item.values())
        else:
            stack.extend(item)
    return True
