"""Values stored by name: modules, and classes and functions that an importable module exports.

`from sklearn.linear_model import LogisticRegression` binds an object its module already holds: it is stored as
`sklearn.linear_model:LogisticRegression` and a replay imports it again, as the cell itself would. Nothing is
unpickled, so a colleague needs no trust for an import, and the object is the module's own (`is` holds).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from ..errors import DecodeError

_EXPORTABLE = (type, types.FunctionType, types.BuiltinFunctionType)


def reference_of(value: object) -> str | None:
    """`module` or `module:qualname` naming `value` exactly, or None when it is not a module's own object."""
    if isinstance(value, types.ModuleType):
        return value.__name__
    if not isinstance(value, _EXPORTABLE):
        return None
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or module == "__main__" or "<" in qualname:
        return None
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return f"{module}:{qualname}" if found is value else None


def resolve(target: str, name: str) -> Any:
    """Import what `reference_of` named; DecodeError (a miss, never a crash) when it is not there."""
    module, _, qualname = target.partition(":")
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split(".") if qualname else ():
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise DecodeError(f"{target.replace(':', '.')} (bound to {name}) cannot be imported here: {exc}") from exc
    return found
