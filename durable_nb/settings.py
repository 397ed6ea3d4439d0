"""Process-wide state a cell changes and later cells read — numpy's print options, pandas' display options,
matplotlib's style (rcParams), the global random generators of Python, numpy and torch — recorded with the cell
and set again when it replays. A replayed `np.random.seed(0)` or `plt.style.use("ggplot")` cell must leave the
next new cell drawing the same numbers and the same-looking plots as a plain Run All.

Generators change whenever a number is drawn (also inside libraries: `df.sample()`, scikit-learn without a
`random_state`), so their states are compared around every cell (microseconds); options change only through
their setters, so only cells whose code names one pay for the look at every option (a text search). A generator's
full state is read only when a cheap token of it moved.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any, NamedTuple, cast

NAME = "__settings__"
_SETTERS = ("set_printoptions", "set_option", "options.", "reset_option",
            "style.use", "style.context", "rcParams", ".rc(", "rcdefaults", "rc_context", "xkcd",
            "matplotlib.use", "mpl.use", "switch_backend", "%matplotlib",
            "set_theme", "set_style", "set_context", "set_palette", "sns.set(")
# rcParams a style never sets (matplotlib's own list): they belong to the machine and session, not the look. The
# backend is kept: a cell's `matplotlib.use("agg")` decides whether the figures of later cells show.
_RC_KEPT = {"backend_fallback", "interactive", "toolbar", "timezone", "figure.max_open_warning",
            "figure.raise_window", "savefig.directory", "tk.window_focus", "docstring.hardcopy", "date.epoch",
            "webagg.port", "webagg.address", "webagg.port_retries", "webagg.open_in_browser"}
_CYCLE = "axes.prop_cycle"
_BACKEND = "matplotlib.backend"
_UNKNOWN = object()


def may_change(code: str) -> bool:
    return any(s in code for s in _SETTERS)


def snapshot(code: str) -> dict[str, Any]:
    """The state `code` may change, to compare with `changed`: the generators always (as tokens), options when
    `code` names a setter."""
    found = _generators()
    if may_change(code):
        found.update(_options())
    return found


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What moved from the snapshot `before` to `after`, as JSON-able values; `after` must be the state now (a
    generator's state is read when its token moved)."""
    found = {}
    for key, value in after.items():
        if (before[key] if key in before else _default(key)) == value:
            continue
        generator = _GENERATORS.get(key)
        try:
            found[key] = value if generator is None else generator.state()
        except Exception:  # as in _generators: a state that cannot be read is not kept, nothing breaks
            continue
    return found


def apply(settings: dict[str, Any]) -> None:
    """Set what `changed` found, but the backend: a replay sets that first (apply_backend)."""
    numpy = {k.removeprefix("numpy."): v for k, v in settings.items() if k.startswith("numpy.") and
             k not in _GENERATORS}
    if numpy:
        import numpy as np

        np.set_printoptions(**numpy)
    rc = {k.removeprefix("matplotlib."): v for k, v in settings.items() if k.startswith("matplotlib.") and
          k != _BACKEND}
    if rc:
        _set_rc(rc)
    for key, value in settings.items():
        if key.startswith("pandas."):
            import pandas as pd

            pd.set_option(key.removeprefix("pandas."), value)
        elif key in _GENERATORS:
            _GENERATORS[key].restore(value)


def apply_backend(settings: dict[str, Any]) -> None:
    """matplotlib's backend as the cell left it; a replay sets it before figures unpickle, so that they join it
    (switching closes every figure)."""
    backend = settings.get(_BACKEND)
    if backend is None:
        return
    import matplotlib as mpl

    params: Any = mpl.rcParams
    if params._get("backend") == backend:
        return
    with contextlib.suppress(ImportError, ValueError):  # a GUI backend this machine lacks: figures show as they can
        mpl.use(backend)


def _options() -> dict[str, Any]:
    found: dict[str, Any] = {}
    np = sys.modules.get("numpy")
    if np is not None:
        found.update({f"numpy.{k}": v for k, v in np.get_printoptions().items() if _plain(v)})
    pd = sys.modules.get("pandas")
    if pd is not None:
        try:
            keys = [k for k in pd._config.config._registered_options if k.startswith("display.")]
        except AttributeError:  # pandas moved its option registry: nothing is kept, nothing breaks
            keys = []
        found.update({f"pandas.{k}": v for k in keys if _plain(v := pd.get_option(k))})
    mpl = sys.modules.get("matplotlib")
    if mpl is not None and hasattr(mpl, "rcParams"):
        params = mpl.rcParams
        read = getattr(params, "_get", params.__getitem__)  # _get leaves an automatic backend unresolved
        for k in list(params.keys()):
            v = _rc_value(k, read(k))
            if k not in _RC_KEPT and _plain(v):
                found[f"matplotlib.{k}"] = v
    return found


def _rc_value(key: str, value: Any) -> Any:
    """An rcParam as plain data: the colour cycle as its lists, matplotlib's string enums (CapStyle) as strings,
    which rcParams validates back into them."""
    if key == _CYCLE:
        return value.by_key()
    return str(value) if isinstance(value, str) else value


def _default(key: str) -> Any:
    """The option's value in a new process (_UNKNOWN when there is no telling): an option of a library the cell
    imported is kept only if the cell changed it from there, not all of them."""
    library, _, name = key.partition(".")
    try:
        if library == "matplotlib":
            return _rc_value(name, sys.modules["matplotlib"].rcParamsOrig._get(name))
        if library == "pandas":
            return sys.modules["pandas"]._config.config._registered_options[name].defval
    except (KeyError, AttributeError):  # an option this version does not list: kept
        pass
    return _UNKNOWN


def _set_rc(rc: dict[str, Any]) -> None:
    import matplotlib as mpl

    if _CYCLE in rc:
        from cycler import cycler  # matplotlib's own dependency

        rc[_CYCLE] = cycler(**rc[_CYCLE])
    params: Any = mpl.rcParams  # typed by its known keys; these come from a log of this same library
    params.update(rc)


# -- the global random generators: a cheap token compared around every cell, and the state as JSON (hex for the
# raw words) read only when the token moved


class _Generator(NamedTuple):
    module: str  # a generator of a library the process never imported cannot have been drawn from
    token: Callable[[], object]
    state: Callable[[], Any]
    restore: Callable[[Any], None]


def _python_state() -> Any:
    import random

    return random.getstate()


def _set_python_state(state: Any) -> None:
    import random

    version, words, gauss = state
    random.setstate((version, tuple(words), gauss))


_MT19937_BYTES = 624 * 4 + 4  # numpy's mt19937_state: the key words and the position


# The last full read of numpy's legacy state: (raw words, has_gauss, the cached normal).
_numpy_seen: tuple[bytes, int, float] | None = None


def _numpy_token() -> object:
    """numpy's legacy state as (raw words, has_gauss, cached normal). The raw words cost ~1 µs where get_state
    builds a dict and an array (~30 µs); the cached normal is not reachable so: it is read in full unless the words
    are those of the last full read and no normal was cached then (drawing one moves the words)."""
    import ctypes  # numpy's .ctypes attribute has imported it already

    import numpy as np

    global _numpy_seen
    generator = np.random.mtrand._rand._bit_generator
    if type(generator).__name__ != "MT19937":  # np.random.set_bit_generator chose another: not kept
        raise TypeError("only numpy's legacy MT19937 state is kept")
    raw = ctypes.string_at(generator.ctypes.state_address, _MT19937_BYTES)
    if _numpy_seen is None or _numpy_seen[0] != raw or _numpy_seen[1]:
        _, _, _, has_gauss, cached = np.random.get_state(legacy=True)
        _numpy_seen = (raw, int(has_gauss), float(cached))
    return _numpy_seen


def _numpy_state() -> Any:
    import numpy as np

    state: Any = np.random.get_state(legacy=True)  # a tuple with legacy=True (a dict otherwise)
    name, keys, pos, has_gauss, cached = state
    return [name, keys.astype("<u4").tobytes().hex(), int(pos), int(has_gauss), float(cached)]


def _set_numpy_state(state: Any) -> None:
    import numpy as np

    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, np.frombuffer(bytes.fromhex(keys), "<u4"), pos, has_gauss, cached))


def _torch_token() -> object:
    import torch

    return bytes(torch.random.get_rng_state().numpy())


def _torch_state() -> Any:
    return cast(bytes, _torch_token()).hex()


def _set_torch_state(state: Any) -> None:
    import torch

    torch.random.set_rng_state(torch.frombuffer(bytearray.fromhex(state), dtype=torch.uint8))


_GENERATORS = {
    "python.random": _Generator("random", _python_state, _python_state, _set_python_state),
    "numpy.random": _Generator("numpy", _numpy_token, _numpy_state, _set_numpy_state),
    "torch.random": _Generator("torch", _torch_token, _torch_state, _set_torch_state),
}


def _generators() -> dict[str, Any]:
    found = {}
    for key, generator in _GENERATORS.items():
        if generator.module in sys.modules:
            try:
                found[key] = generator.token()
            except Exception:  # a half-imported or unusual build: its state is not kept, nothing breaks
                continue
    return found


def _plain(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
