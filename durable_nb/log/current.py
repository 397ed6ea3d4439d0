"""Which log is current: the one set of rules that chooses its path, and the log this process has open.

Rules, first match wins: the configured path (open_log(path) / %config DurableMagics.db / --db), the
DURABLE_NB_DB environment variable, `<notebook stem>.durable.db` beside the notebook (IPython's `__session__`
or the JPY_SESSION_NAME variable), else `durable.db` in the working directory. A configured path or
DURABLE_NB_DB may be a `postgresql://` URL: a log on PostgreSQL (LogStore opens either). `durable_nb.session` opens the
log these rules name; the history views and the activities read the same answer from here.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..pg_url import is_postgres_url
from ..record import Record
from .connect import Durability

if TYPE_CHECKING:
    from .store import LogStore

LOG_SUFFIX = ".durable.db"


class Settings(Record):
    """How the current log is opened: set by the magics' traits, `open_log(...)` or `durable-nb run`."""

    __match_args__ = ("path", "durability", "from_scratch")
    __slots__ = __match_args__

    def __init__(self, path: Path | str | None = None, durability: Durability = "normal",
                 from_scratch: bool = False) -> None:
        self.path = path  # a str only for a PostgreSQL URL
        self.durability = durability
        self.from_scratch = from_scratch


lock = threading.RLock()
_settings = Settings()
_open: LogStore | None = None


def log_path_for(notebook: str | os.PathLike[str]) -> Path:
    """`dir/nb.ipynb` -> `dir/nb.durable.db`: where a notebook's log lives unless told otherwise."""
    path = Path(notebook)
    return path.with_name(path.stem + LOG_SUFFIX) if path.suffix == ".ipynb" else Path(f"{path}{LOG_SUFFIX}")


def notebook_path() -> Path | None:
    """The notebook this kernel runs, if Jupyter told us. IPython is asked only when a program already imported
    it: a plain script must not pay for importing IPython to learn that it is not a notebook."""
    session: object = None
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:
        session = shell.user_ns.get("__session__")
    session = session or os.environ.get("JPY_SESSION_NAME")
    if isinstance(session, str) and session.endswith(".ipynb"):
        return Path(session)
    return None


def location(path: str | os.PathLike[str]) -> Path | str:
    """A configured log as LogStore opens it: a PostgreSQL URL as typed, else a path."""
    return path if isinstance(path, str) and is_postgres_url(path) else Path(path).expanduser()


def configured_path(path: str | os.PathLike[str] | None = None) -> Path | str:
    """The path (or PostgreSQL URL) the rules above choose; `path`, when given, is the first rule."""
    chosen = path if path is not None else _settings.path
    if chosen is not None:
        return location(chosen)
    env = os.environ.get("DURABLE_NB_DB")
    if env:
        return location(env)
    nb = notebook_path()
    return log_path_for(nb) if nb is not None else Path("durable.db")


def settings() -> Settings:
    return _settings


def configure(new: Settings) -> LogStore | None:
    """Change how the current log is chosen. Returns the open log if it no longer matches (for the caller to
    close), else None."""
    global _settings, _open
    with lock:
        _settings = new
        stale = _open
        if stale is not None and matches(stale, new):
            return None
        _open = None
        return stale


def matches(log: LogStore, wanted: Settings) -> bool:
    chosen = configured_path(wanted.path)
    return (log.location == (chosen if isinstance(chosen, str) else str(chosen.resolve()))
            and log.durability == wanted.durability
            and log.from_scratch == wanted.from_scratch)


def get() -> LogStore | None:
    """The log this process has open as its current one, if any."""
    return _open


def set_open(log: LogStore | None) -> None:
    global _open
    with lock:
        _open = log
