"""The current log of this process: opened on first use by the rules of `durable_nb.log.current`.

The magics push their settings here (`configure`) when they load and whenever `%config DurableMagics.db`,
`durability` or `from_scratch` change, so cells, activity calls and the history views all use one log.
"""

from __future__ import annotations

import atexit
import os
from typing import cast

from .log import current
from .log.connect import Durability
from .views import DurableLog


def configure(path: str | os.PathLike[str] | None = None, *, durability: Durability = "normal",
              from_scratch: bool = False) -> None:
    """Choose how the current log is opened; an open log that no longer matches is closed."""
    stale = current.configure(current.Settings(current.location(path) if path is not None else None, durability,
                                               from_scratch))
    if stale is not None:
        stale.close()


def open_log(path: str | os.PathLike[str] | None = None, *, durability: Durability = "normal",
             from_scratch: bool = False) -> DurableLog:
    """Open (creating if needed) the log at `path` (default: the configured path, else the rules of
    durable_nb.log.current) and make it this process's current log. Re-opening the current path returns the
    same object. `from_scratch`: records of earlier runs are not replayed."""
    with current.lock:
        configure(path if path is not None else current.settings().path, durability=durability,
                  from_scratch=from_scratch)
        return current_log()


def current_log() -> DurableLog:
    """The current log, opened by the configured settings on first use."""
    global _opened_in
    with current.lock:
        found = current.get()
        if found is None:
            wanted = current.settings()
            nb = current.notebook_path()
            found = DurableLog(current.configured_path(), readonly=False, durability=wanted.durability,
                               notebook=str(nb) if nb else None, from_scratch=wanted.from_scratch)
            current.set_open(found)
            _opened_in = os.getpid()
        return cast(DurableLog, found)  # only this module sets the open log, always to a DurableLog


def current_if_open() -> DurableLog | None:
    return cast("DurableLog | None", current.get())


def close_log() -> None:
    with current.lock:
        found = current.get()
        current.set_open(None)
    if found is not None:
        found.close()


_opened_in: int | None = None  # the process that opened the current log: this one, or the parent of a fork


def _close_at_exit() -> None:
    # A script or kernel that exits cleanly writes its pending rows and ends its run; a crash leaves the run
    # open, which is how history tells the two apart. A forked child exiting normally runs its parent's exit
    # hooks too: the log and its run are the parent's, left alone.
    if _opened_in == os.getpid():
        close_log()


atexit.register(_close_at_exit)
