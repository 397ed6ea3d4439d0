"""Jupyter server extension: a read-only REST endpoint the "Durable log" side panel reads.

GET {base_url}durable-nb/api/log?notebook=dir/nb.ipynb[&log=PATH] answers, under Jupyter's own
authentication and authorization (resource "contents", action "read"):
    {"log": "dir/nb.durable.db", "exists": true, "runs": [...], "executions": [...]}

Only files under the server's root directory are read (symlinks resolved before the check; hidden paths
refused unless the contents manager allows them), opened read-only, and only through the documented views
`runs` and `executions`: never blob bytes, never code.

A team log on PostgreSQL: when the server runs with DURABLE_NB_DB=postgresql://... (what its kernels inherit
and record into), a request without ?log= reads that log, read-only, limited to the runs of the requested
notebook (a team schema holds many notebooks); "log" is the URL without its password. A request can never name
a URL itself: the browser does not choose which servers the Jupyter server connects to.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.serverapp import ServerApp
from jupyter_server.utils import url_path_join
from tornado import web

from .errors import LogError, NewerLogError, NotALogError
from .log.connect import connect
from .log.current import log_path_for
from .log.pg_connect import PgConnection
from .pg_url import is_postgres_url, parse

ENDPOINT = "durable-nb/api/log"
# Enough for a long session; the panel shows the newest first and needs no paging.
MAX_RUNS = 50
MAX_EXECUTIONS = 500

RUN_COLUMNS = "run_id, started_at, ended_at, host, pid, notebook, executions"
EXECUTION_COLUMNS = (
    "execution_id, run_id, cell_name, cell_id, execution_count, state, started_at, finished_at, duration, "
    "original_duration, replayed_from, saved_seconds, reason, error_type, error_message, replayable, bytes_stored"
)


def _queries(where: str = "") -> tuple[str, str]:
    """The runs, and the newest executions oldest first (each run lists its cells in the order they ran);
    `where` (on run_id) narrows both."""
    runs = f"SELECT {RUN_COLUMNS} FROM runs {where} ORDER BY run_id DESC LIMIT {MAX_RUNS}"
    executions = (f"SELECT * FROM (SELECT {EXECUTION_COLUMNS} FROM executions {where} ORDER BY execution_id "
                  f"DESC LIMIT {MAX_EXECUTIONS}) AS newest ORDER BY execution_id")
    return runs, executions


RUN_QUERY, EXEC_QUERY = _queries()
# A notebook's runs in a shared PostgreSQL log: the notebook as its kernel named it (relative to the server's
# root, or absolute).
_NOTEBOOK_RUNS = "WHERE run_id IN (SELECT id FROM run WHERE notebook IN (?, ?))"


class LogRequestError(Exception):
    """A request the endpoint refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def resolve_under_root(root: Path, requested: str, *, allow_hidden: bool = False) -> Path:
    """The real path of `requested` (absolute, or relative to root), refused unless it lies under root."""
    root = root.resolve()
    candidate = Path(requested)
    full = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not full.is_relative_to(root):
        raise LogRequestError(403, f"{requested} is outside the Jupyter server root {root}; the durable log "
                                   "panel only reads logs under the root. Start Jupyter in a folder that "
                                   "contains the log, or keep the log next to its notebook.")
    relative = full.relative_to(root)
    if not allow_hidden and any(part.startswith(".") for part in relative.parts):
        raise LogRequestError(403, f"{relative} is a hidden path; Jupyter is configured not to serve hidden "
                                   "files (ContentsManager.allow_hidden).")
    return full


def read_log(root: Path, notebook: str, log: str | None, *, allow_hidden: bool = False) -> dict[str, Any]:
    """The panel's data for `notebook` (its log is `log` when given, else the default next to it)."""
    if not notebook and not log:
        raise LogRequestError(400, "missing query parameter: give ?notebook=PATH (relative to the server "
                                   "root) or ?log=PATH.")
    if log is not None and is_postgres_url(log):
        raise LogRequestError(403, "?log= names a file under the Jupyter server root; a PostgreSQL log is the "
                                   "server's own DURABLE_NB_DB, never one a request chooses.")
    team = os.environ.get("DURABLE_NB_DB", "")
    if log is None and is_postgres_url(team):
        return _read_postgres(team, root, notebook)
    path = resolve_under_root(root, log or str(log_path_for(notebook)), allow_hidden=allow_hidden)
    shown = str(path.relative_to(root.resolve()))
    if not path.is_file():
        return {"log": shown, "exists": False, "runs": [], "executions": []}
    try:
        conn = connect(path, readonly=True)
    except NewerLogError as exc:
        raise LogRequestError(409, str(exc)) from exc
    except LogError as exc:
        raise LogRequestError(422, str(exc)) from exc
    try:
        runs, executions = _rows(conn, RUN_QUERY), _rows(conn, EXEC_QUERY)
    except sqlite3.DatabaseError as exc:
        raise LogRequestError(422, f"durable log {shown} cannot be read: {exc}.") from exc
    finally:
        conn.close()
    return {"log": shown, "exists": True, "runs": runs, "executions": executions}



def _read_postgres(url: str, root: Path, notebook: str) -> dict[str, Any]:
    target = parse(url)
    absolute = str((root / notebook).resolve())
    try:
        conn = PgConnection(target, readonly=True)
    except NotALogError:  # nothing recorded into the schema yet
        return {"log": str(target), "exists": False, "runs": [], "executions": []}
    except NewerLogError as exc:
        raise LogRequestError(409, str(exc)) from exc
    except LogError as exc:
        raise LogRequestError(502, str(exc)) from exc
    try:
        runs, executions = (_rows(conn, query, (notebook, absolute)) for query in _queries(_NOTEBOOK_RUNS))
    except LogError as exc:
        raise LogRequestError(502, str(exc)) from exc
    finally:
        conn.close()
    return {"log": str(target), "exists": True, "runs": runs, "executions": executions}


def _rows(conn: Any, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    cursor = conn.execute(query, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


class LogHandler(APIHandler):
    auth_resource = "contents"

    @web.authenticated
    @authorized
    async def get(self) -> None:
        root = Path(self.settings["server_root_dir"]).expanduser()
        allow_hidden = bool(getattr(self.contents_manager, "allow_hidden", False))
        notebook = self.get_query_argument("notebook", "")
        log = self.get_query_argument("log", None)
        try:
            # SQLite may wait on busy_timeout while a kernel writes: keep the event loop free.
            data = await asyncio.to_thread(read_log, root, notebook, log, allow_hidden=allow_hidden)
        except LogRequestError as exc:
            self.set_status(exc.status)
            self.finish({"message": str(exc)})
            return
        self.finish(data)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "durable_nb.server"}]


# SQLite's write-ahead log and its index sit beside a log while a kernel has it open. Litestream reads them
# from disk, so they must stay there; they are only left out of the file browser's listings (the contents
# manager's hide_globs), where they looked like files a user should keep or delete.
LOG_HELPER_GLOBS = ("*.durable.db-wal", "*.durable.db-shm", "durable.db-wal", "durable.db-shm")


def hide_log_helpers(manager: Any) -> None:
    globs = getattr(manager, "hide_globs", None)
    if isinstance(globs, list):
        manager.hide_globs = [*globs, *(g for g in LOG_HELPER_GLOBS if g not in globs)]


def _load_jupyter_server_extension(serverapp: ServerApp) -> None:
    hide_log_helpers(serverapp.contents_manager)
    web_app = serverapp.web_app
    route = url_path_join(web_app.settings["base_url"], ENDPOINT)
    web_app.add_handlers(".*$", [(route, LogHandler)])  # type: ignore[no-untyped-call]
