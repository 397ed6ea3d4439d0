"""Values stored by name: modules, and classes and functions that an importable module exports.

`from sklearn.linear_model import LogisticRegression` binds an object its module already holds: it is stored as
`sklearn.linear_model:LogisticRegression` and a replay imports it again, as the cell itself would. Nothing is
unpickled, so a colleague needs no trust for an import, and the object is the module's own (`is` holds).

Importing a module runs its code, and a log may come from someone else: decoding finds modules (for these
references and for the classes of tagged values) only among those already imported, a fixed list of standard
library modules without side effects, and the modules the replayed cell's own import statements name (running
the cell would import them anyway). Anything else is a miss, with the reason: the cell runs, nothing imported.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import io
import sys
import types
from collections.abc import Iterable, Iterator
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
    """Find what `reference_of` named; DecodeError (a miss, never a crash) when it is not there."""
    module, _, qualname = target.partition(":")
    found: Any = loaded_module(module, f"{target.replace(':', '.')} (bound to {name})")
    try:
        for part in qualname.split(".") if qualname else ():
            found = getattr(found, part)
    except AttributeError as exc:
        raise DecodeError(f"{target.replace(':', '.')} (bound to {name}) is not there: {exc}") from exc
    return found


# Standard library modules whose import only defines things, and that define the Enums and namedtuples values
# hold (re.RegexFlag, http.HTTPStatus, inspect.FullArgSpec...). Fixed: never taken from the log or the machine.
_STDLIB = frozenset({
    "argparse", "ast", "calendar", "collections", "concurrent.futures", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "dis", "enum", "fractions", "functools", "http", "inspect", "ipaddress", "json",
    "logging", "numbers", "os", "pathlib", "platform", "re", "sched", "shutil", "signal", "socket", "sqlite3",
    "ssl", "statistics", "string", "time", "tokenize", "typing", "urllib.parse", "uuid", "zoneinfo",
})
_CELL_IMPORTS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("cell_imports", default=())


@contextlib.contextmanager
def cell_imports(modules: Iterable[str]) -> Iterator[None]:
    """While decoding the outputs of a cell whose import statements name `modules`, they may be imported."""
    token = _CELL_IMPORTS.set(tuple(modules))
    try:
        yield
    finally:
        _CELL_IMPORTS.reset(token)


def loaded_module(module: str, what: str) -> types.ModuleType:
    """The module named `module`, imported only if it is allowed (see the module docstring); DecodeError
    naming `what` needed it and why it was not imported otherwise."""
    found = sys.modules.get(module)
    if found is None and module != "__main__":
        own = _CELL_IMPORTS.get()
        top = module.partition(".")[0]
        if module in _STDLIB:
            _import(module, what)
        else:
            # The cell's own imports of that package (`import sklearn.linear_model` loads ..._logistic).
            for name in (m for m in own if m.partition(".")[0] == top and not m.endswith(".*")):
                # `from a import f` names a.f, a candidate, not a module; a module that fails to import
                # fails again when the cell runs, where the user sees why.
                with contextlib.suppress(Exception):
                    _import_quietly(name)
            parent, _, leaf = module.rpartition(".")
            # `from numpy import *` imports what numpy.__all__ names, submodules such as numpy.char too.
            if f"{parent}.*" in own and leaf in getattr(sys.modules.get(parent), "__all__", ()):
                with contextlib.suppress(Exception):
                    _import_quietly(module)
        found = sys.modules.get(module)
    if not isinstance(found, types.ModuleType):
        raise DecodeError(f"{what} needs module {module}, which is not imported in this kernel: decoding never "
                          "imports a module only the log names (importing runs its code). A cell that imports it "
                          f"itself replays, others run instead; to load such a value, import {module} first if "
                          "you trust it")
    return found


def _import_quietly(module: str) -> None:
    """Import `module` for a replay: what importing it prints (a library's warning on import) is in the cell's
    recorded streams already, which the replay shows."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        importlib.import_module(module)


def _import(module: str, what: str) -> None:
    try:
        _import_quietly(module)
    except ImportError as exc:
        raise DecodeError(f"{what} needs module {module}, which cannot be imported here: {exc}") from exc
