"""The current log of this process, and the rules that choose its default path.

Rules, first match wins: an explicit path (open_log / %config DurableMagics.db / --db), the DURABLE_NB_DB
environment variable, `<notebook stem>.durable.db` beside the notebook (IPython's `__session__` or the
JPY_SESSION_NAME variable), else `durable.db` in the working directory.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .log.connect import Durability
from .log.store import DurableLog

_lock = threading.Lock()
_current: DurableLog | None = None


def notebook_path() -> Path | None:
    """The notebook this kernel runs, if Jupyter told us."""
    session: object = None
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            session = shell.user_ns.get("__session__")
    except ImportError:
        pass
    session = session or os.environ.get("JPY_SESSION_NAME")
    if isinstance(session, str) and session.endswith(".ipynb"):
        return Path(session)
    return None


def default_log_path() -> Path:
    env = os.environ.get("DURABLE_NB_DB")
    if env:
        return Path(env).expanduser()
    nb = notebook_path()
    if nb is not None:
        return nb.with_name(nb.stem + ".durable.db")
    return Path("durable.db")


def configured_path(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path).expanduser() if path is not None else default_log_path()


def open_log(path: str | os.PathLike[str] | None = None, *, durability: Durability = "normal",
             from_scratch: bool = False) -> DurableLog:
    """Open (creating if needed) the log at `path` (default: the rules above) and make it this process's
    current log. Re-opening the current path returns the same object. `from_scratch`: records of earlier runs
    are not replayed."""
    global _current
    target = configured_path(path)
    with _lock:
        if (_current is not None and _current.path == target.resolve() and _current.durability == durability
                and _current.from_scratch == from_scratch):
            return _current
        if _current is not None:
            _current.close()
        nb = notebook_path()
        _current = DurableLog(target, readonly=False, durability=durability, notebook=str(nb) if nb else None,
                              from_scratch=from_scratch)
        return _current


def current_log() -> DurableLog:
    """The current log, opened by the default rules on first use."""
    return _current if _current is not None else open_log()


def current_if_open() -> DurableLog | None:
    return _current


def close_log() -> None:
    global _current
    with _lock:
        if _current is not None:
            _current.close()
            _current = None
