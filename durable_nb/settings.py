"""Process-wide state a cell changes and later cells read — numpy's print options, pandas' display options,
matplotlib's style (rcParams), the global random generators of Python, numpy and torch — recorded with the cell
and set again when it replays. A replayed `np.random.seed(0)` or `plt.style.use("ggplot")` cell must leave the
next new cell drawing the same numbers and the same-looking plots as a plain Run All.

Generators change whenever a number is drawn (also inside libraries: `df.sample()`, scikit-learn without a
`random_state`), so their states are compared around every cell (microseconds); options change only through
their setters, so only cells whose code names one pay for the look at every option (a text search).
"""

from __future__ import annotations

import json
import sys
from typing import Any

NAME = "__settings__"
_SETTERS = ("set_printoptions", "set_option", "options.", "reset_option",
            "style.use", "style.context", "rcParams", ".rc(", "rcdefaults", "rc_context", "xkcd",
            "set_theme", "set_style", "set_context", "set_palette", "sns.set(")
# rcParams a style never sets (matplotlib's own list): they belong to the machine and session, not the look.
_RC_KEPT = {"backend", "backend_fallback", "interactive", "toolbar", "timezone", "figure.max_open_warning",
            "figure.raise_window", "savefig.directory", "tk.window_focus", "docstring.hardcopy", "date.epoch",
            "webagg.port", "webagg.address", "webagg.port_retries", "webagg.open_in_browser"}
_CYCLE = "axes.prop_cycle"


def may_change(code: str) -> bool:
    return any(s in code for s in _SETTERS)


def snapshot(code: str) -> dict[str, Any]:
    """The state `code` may change, as JSON-able values: the generators always, options when `code` names a
    setter."""
    found = _generators()
    if may_change(code):
        found.update(_options())
    return found


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in after.items() if before.get(k, v) != v or k not in before}


def apply(settings: dict[str, Any]) -> None:
    numpy = {k.removeprefix("numpy."): v for k, v in settings.items() if k.startswith("numpy.") and
             k != "numpy.random"}
    if numpy:
        import numpy as np

        np.set_printoptions(**numpy)
    rc = {k.removeprefix("matplotlib."): v for k, v in settings.items() if k.startswith("matplotlib.")}
    if rc:
        _set_rc(rc)
    for key, value in settings.items():
        if key.startswith("pandas."):
            import pandas as pd

            pd.set_option(key.removeprefix("pandas."), value)
        elif key in _GENERATORS:
            _GENERATORS[key][2](value)


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
        for k, v in dict(mpl.rcParams).items():
            if k == _CYCLE:
                v = v.by_key()
            if k not in _RC_KEPT and _plain(v):
                found[f"matplotlib.{k}"] = v
    return found


def _set_rc(rc: dict[str, Any]) -> None:
    import matplotlib as mpl

    if _CYCLE in rc:
        from cycler import cycler  # matplotlib's own dependency

        rc[_CYCLE] = cycler(**rc[_CYCLE])
    params: Any = mpl.rcParams  # typed by its known keys; these come from a log of this same library
    params.update(rc)


# -- the global random generators: their state as JSON (hex for the raw words), and how to set it again


def _python_state() -> Any:
    import random

    return random.getstate()


def _set_python_state(state: Any) -> None:
    import random

    version, words, gauss = state
    random.setstate((version, tuple(words), gauss))


def _numpy_state() -> Any:
    import numpy as np

    state: Any = np.random.get_state(legacy=True)  # a tuple with legacy=True (a dict otherwise)
    name, keys, pos, has_gauss, cached = state
    return [name, keys.astype("<u4").tobytes().hex(), int(pos), int(has_gauss), float(cached)]


def _set_numpy_state(state: Any) -> None:
    import numpy as np

    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, np.frombuffer(bytes.fromhex(keys), "<u4"), pos, has_gauss, cached))


def _torch_state() -> Any:
    import torch

    return bytes(torch.random.get_rng_state().numpy()).hex()


def _set_torch_state(state: Any) -> None:
    import torch

    torch.random.set_rng_state(torch.frombuffer(bytearray.fromhex(state), dtype=torch.uint8))


# key -> (module that must be imported already, get, set): a generator of a library the process never imported
# cannot have been drawn from.
_GENERATORS = {
    "python.random": ("random", _python_state, _set_python_state),
    "numpy.random": ("numpy", _numpy_state, _set_numpy_state),
    "torch.random": ("torch", _torch_state, _set_torch_state),
}


def _generators() -> dict[str, Any]:
    found = {}
    for key, (module, get, _) in _GENERATORS.items():
        if module in sys.modules:
            try:
                found[key] = get()
            except Exception:  # a half-imported or unusual build: its state is not kept, nothing breaks
                continue
    return found


def _plain(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
