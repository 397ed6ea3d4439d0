"""durable_nb: durable notebook cells.

`%load_ext durable_nb`, then `%%durable` on a cell. The public names below are imported lazily so that
loading the extension stays fast (no pandas, pyarrow or boto3 until they are needed).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "load_ipython_extension": "durable_nb.magics",
    "unload_ipython_extension": "durable_nb.magics",
    "DurableLog": "durable_nb.views",
    "open_log": "durable_nb.session",
    "DurableError": "durable_nb.errors",
    "fleet": "durable_nb.fleets",  # not durable_nb.fleet: a submodule of that name would shadow the function
    "activity": "durable_nb.calls",
    "step": "durable_nb.calls",
    "gather": "durable_nb.calls",  # bounded concurrency for async activity fan-outs
    "Permanent": "durable_nb.retry",
    # History as data; in durable_nb.views because a durable_nb.history module would shadow history().
    **dict.fromkeys(["history", "runs", "activities", "outputs", "load", "diff", "timeline"], "durable_nb.views"),
    "export": "durable_nb.log.maintenance",
    "run_notebook": "durable_nb.jobs",  # a notebook as a resumable batch job (durable-nb run)
    "query": "durable_nb.sql",  # read-only SQL over the views (durable-nb query); not durable_nb.query: shadowing
    # Team trust, verb for verb the CLI's `durable-nb trust ...` and `durable-nb key`.
    **dict.fromkeys(["trust_add", "trust_user", "trust_list", "trust_remove", "trust_log", "public_key"],
                    "durable_nb.trust"),
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'durable_nb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
