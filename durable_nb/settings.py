"""Display settings a cell changes — numpy's print options, pandas' display options — recorded with it and set
again when it replays: a replayed `np.set_printoptions(precision=3)` cell must leave every later output looking
as it did the first time. Only cells whose code names such a setter pay for the look (a text search).
"""

from __future__ import annotations

import json
import sys
from typing import Any

NAME = "__settings__"
_SETTERS = ("set_printoptions", "set_option", "options.", "reset_option")


def may_change(code: str) -> bool:
    return any(s in code for s in _SETTERS)


def snapshot() -> dict[str, Any]:
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
    return found


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in after.items() if before.get(k, v) != v or k not in before}


def apply(settings: dict[str, Any]) -> None:
    numpy = {k.removeprefix("numpy."): v for k, v in settings.items() if k.startswith("numpy.")}
    if numpy:
        import numpy as np

        np.set_printoptions(**numpy)
    for key, value in settings.items():
        if key.startswith("pandas."):
            import pandas as pd

            pd.set_option(key.removeprefix("pandas."), value)


def _plain(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
