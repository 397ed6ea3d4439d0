"""Where a value was recorded versus where it replays: Python and the versions of the packages it depends on.

Each run records Python, the platform and the key package versions (log/store.py); recording a value also
notes the version of the package its type comes from (a scikit-learn model, say). A replay compares the
recording run with this process and says what differs, e.g. "recorded with pandas 2.2.1, here 3.1.1", so
a surprising value (or one that cannot be loaded here) comes with its likely cause.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cell_log import CellLog

# Packages a codec needs to rebuild a value, besides the package its type comes from.
_CODEC_PACKAGES = {"arrow": ("pyarrow", "pandas"), "npy": ("numpy",), "pickle": ("cloudpickle",)}
_NOT_PACKAGES = frozenset({"__main__", "builtins", ""})


def package_of(type_name: str | None) -> str | None:
    """The top-level module a stored type comes from, or None for builtins and notebook-defined types."""
    top = (type_name or "").split(".")[0]
    return None if top in _NOT_PACKAGES or "." not in (type_name or "") else top


def installed_version(package: str) -> str | None:
    """The version of `package` here: its distribution's (as runs record them), else its `__version__` (for
    modules named unlike their distribution, such as sklearn)."""
    version = _distribution_version(package)
    if version is None:
        found = getattr(sys.modules.get(package), "__version__", None)
        version = found if isinstance(found, str) else None
    return version


@cache
def _distribution_version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except (metadata.PackageNotFoundError, ValueError):
        return None


def note_package(log: CellLog, type_name: str) -> None:
    """Inside the caller's write transaction: add the version of the package of `type_name` to this run's
    packages, unless the run already lists it."""
    package = package_of(type_name)
    if package is None:
        return
    version = installed_version(package)
    if version is None:
        return
    log.note_package(package, version)


def differences(log: CellLog, execution_id: int) -> list[str]:
    """What differs between the run that recorded `execution_id` and this process, for the packages its
    outputs depend on: ["recorded with pandas 2.2.1, here 3.1.1", ...]; empty when nothing relevant differs."""
    row = log.recorded_environment(execution_id)
    if row is None:
        return []
    recorded_python, packages_json = row
    try:
        recorded: dict[str, str] = json.loads(packages_json or "{}")
    except (TypeError, ValueError):  # a damaged row: no versions to compare
        recorded = {}
    if not isinstance(recorded, dict):
        recorded = {}
    found = []
    here_python = ".".join(map(str, sys.version_info[:2]))
    if ".".join(str(recorded_python).split(".")[:2]) != here_python:
        found.append(f"recorded with python {recorded_python}, here {sys.version.split()[0]}")
    for package in _relevant_packages(log, execution_id):
        if package not in recorded:
            continue
        here = installed_version(package)
        if here != recorded[package]:
            found.append(f"recorded with {package} {recorded[package]}, here {here or 'not installed'}")
    return found


def _relevant_packages(log: CellLog, execution_id: int) -> list[str]:
    packages: dict[str, None] = {}
    for codec, type_name in log.output_types(execution_id):
        package = package_of(type_name)
        if package is not None:
            packages[package] = None
        packages.update(dict.fromkeys(_CODEC_PACKAGES.get(codec, ())))
    return list(packages)
