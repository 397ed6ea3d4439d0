"""What work in background threads reports about a log: its last error per source, and live status lines.

The activity flusher, the checkpointer and the replicator run beside the kernel; an exception there has no
caller to reach. They report it here instead, and `%durable_status`, the next cell's status line and
`durable-nb status` show it until the same source succeeds again. Errors are kept per process (what another
process can see of them is in the log's files: see `journal.pending`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_errors: dict[Path, dict[str, tuple[float, str]]] = {}
_providers: dict[tuple[Path, str], Callable[[], dict[str, Any]]] = {}


def _key(log_path: str | Path) -> Path:
    return Path(log_path).resolve()


def failed(log_path: str | Path, source: str, message: str) -> None:
    """`source` (e.g. "activity flusher") could not do its work on this log; `message` says why and what to do."""
    with _lock:
        _errors.setdefault(_key(log_path), {})[source] = (time.time(), message)


def succeeded(log_path: str | Path, source: str) -> None:
    with _lock:
        _errors.get(_key(log_path), {}).pop(source, None)


def problems(log_path: str | Path) -> list[str]:
    """One line per source whose last attempt on this log failed, oldest first."""
    if not _errors:  # every cell asks: no path resolution while nothing ever failed
        return []
    with _lock:
        found = sorted(_errors.get(_key(log_path), {}).items(), key=lambda kv: kv[1][0])
    return [f"{source}: {message}" for source, (_, message) in found]


def provide(log_path: str | Path, name: str, status: Callable[[], dict[str, Any]] | None) -> None:
    """Register (or with None, remove) a live status for this log, e.g. the replicator's state."""
    with _lock:
        if status is None:
            _providers.pop((_key(log_path), name), None)
        else:
            _providers[(_key(log_path), name)] = status


def live_status(log_path: str | Path, name: str) -> dict[str, Any] | None:
    with _lock:
        status = _providers.get((_key(log_path), name))
    return status() if status is not None else None
