"""LogStore: one open log file — its connection, its current run, its blobs, and crash bookkeeping.

Writers (a kernel, a script) register a *run* lazily, on their first write, so merely opening or inspecting a
log never adds rows. Readers open the file read-only and never write.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, cast

from .. import keys
from ..errors import LogError
from ..pg_url import is_postgres_url
from . import cells, journal, queries
from .blobs import BlobStore
from .cells import ExecutionStart, Recorded, StoredOutput

if TYPE_CHECKING:
    from . import pg_store
    from .calls import Recorder
from .connect import Durability, connect, settle_checkpoints, write_transaction

FLUSH_DELAY = 0.5
# Versions recorded with every run, of those this process has imported: they decide whether a replay happens in
# "the same environment". A package imported later is added when a value of it is stored (environment.py).
KEY_PACKAGES = {"durable_nb": "durable_nb", "ipython": "IPython", "ipykernel": "ipykernel", "numpy": "numpy",
                "pandas": "pandas", "pyarrow": "pyarrow", "cloudpickle": "cloudpickle"}


class LogStore:
    """An open durable log, read-only by default: any log (a colleague's, a restored one) is inspected without
    being written. Writers (the cell runner, `open_log`, gc, trust) pass `readonly=False`. The public
    `durable_nb.DurableLog` adds the history views as methods (durable_nb.views)."""
    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = True,
                 durability: Durability = "normal", notebook: str | None = None,
                 from_scratch: bool = False) -> None:
        # A PostgreSQL URL opens a log on PostgreSQL (log.pg_store): `path` is then this machine's folder for it.
        self._pg = _pg_backend(str(path), readonly) if is_postgres_url(path) else None
        self.path = self._pg.path if self._pg else Path(path).expanduser().resolve()
        # What the log was opened as, to compare with what the settings ask for (a URL may hold a password:
        # kept in memory for that, never shown; repr shows the password-free form).
        self.location = str(path) if self._pg else str(self.path)
        self.readonly = readonly
        # Records of earlier runs are not replayed (cells and activity calls run, and are recorded, again).
        self.from_scratch = from_scratch
        self.durability: Durability = durability
        self.notebook = notebook
        # PgConnection runs the same SQL as a sqlite3.Connection (the subset the storage layer uses).
        self.conn: sqlite3.Connection = (cast(sqlite3.Connection, self._pg.conn) if self._pg
                                         else connect(self.path, readonly=readonly, durability=durability))
        self._run_id: int | None = None
        # One connection, used from the kernel thread and from background flushes: one transaction at a time.
        self._lock = threading.RLock()
        self._deferred: list[tuple[str, tuple[Any, ...]]] = []
        self._flush_timer: threading.Timer | None = None
        # The record a replay is reading (found, then its outputs): recorded rows never change, so what the
        # replay asks of them again is answered from here, without a round trip to a server.
        self._found: Recorded | None = None
        self._found_outputs: list[StoredOutput] = []
        # On PostgreSQL the cell's previous execution comes with the lookup of its record (cells.find_with_previous).
        self._previous: tuple[ExecutionStart, dict[str, Any] | None] | None = None
        self.dropped_rows = 0  # deferred bookkeeping rows the log refused (see flush)
        # What else holds this log's records in memory (the activity recorder): flushed with it.
        self._flushers: list[Callable[[], None]] = []
        if not readonly:
            self.reap_crashed()
            if journal.journal_folder(self.path).is_dir():
                journal.recover(self.conn, self.path, set(self.dead_run_ids()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}{', readonly=True' if self.readonly else ''})"

    def __str__(self) -> str:
        """The log as shown to users: its path, or its PostgreSQL URL without any password."""
        return str(self._pg.target) if self._pg else str(self.path)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @cached_property
    def blobs(self) -> BlobStore:
        return self.blob_store(self.conn)

    def blob_store(self, conn: sqlite3.Connection) -> BlobStore:
        """The blobs as seen through `conn` (the log's own connection, or a recorder's)."""
        return self._pg.blob_store(conn) if self._pg else BlobStore(conn)

    def connect_writer(self) -> sqlite3.Connection:
        """A new writable connection to this log (the activity recorder writes through its own)."""
        return cast(sqlite3.Connection, self._pg.connect_writer()) if self._pg else connect(
            self.path, durability=self.durability)

    @contextmanager
    def transaction(self, *, synchronous: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE, retried while another process writes). Deferred rows
        are written in it too. `synchronous=False`: it writes a trace or bookkeeping, whose COMMIT on
        PostgreSQL need not wait for the server's disk (connect.write_transaction)."""
        with self._lock, write_transaction(self.conn, self.path, synchronous=synchronous) as conn:
            deferred, self._deferred = self._deferred, []
            try:
                for sql, params in deferred:
                    conn.execute(sql, params)
                yield conn
            except BaseException:
                self._deferred[:0] = deferred
                raise

    def defer(self, sql: str, params: tuple[Any, ...]) -> None:
        """Write a bookkeeping row with the next transaction, or within FLUSH_DELAY seconds: a replay then
        costs no commit of its own. A crash may lose such rows, never a recorded value."""
        with self._lock:
            self._deferred.append((sql, params))
            if self._flush_timer is None:
                self._flush_timer = threading.Timer(FLUSH_DELAY, self.flush)
                self._flush_timer.daemon = True
                self._flush_timer.start()

    def flush(self) -> None:
        """Write now what this process keeps for the log in memory or in its journal: replay bookkeeping rows
        and activity calls (both are written within a fraction of a second anyway; SQL readers want them now)."""
        with self._lock:
            self._flush_timer = None
            if self._deferred and not self.readonly:
                try:
                    with self.transaction(synchronous=self.durability == "full"):
                        pass
                except LogError:
                    # Bookkeeping rows the log refuses (read-only media, a full disk, a damaged log) are dropped,
                    # as a crash would drop them: kept, they would make every later record fail with them.
                    self.dropped_rows += len(self._deferred)
                    self._deferred.clear()
        for flush in list(self._flushers):
            with contextlib.suppress(LogError):  # reported by the flusher itself; its records wait in its journal
                flush()

    def on_flush(self, flush: Callable[[], None]) -> None:
        """Have `flush()` (and so close, and every view that reads the log) also write what `flush` holds."""
        self._flushers.append(flush)

    # -- the CellLog interface (durable_nb.cell_outputs): what the cell runtime asks of any backend

    def start_execution(self, s: ExecutionStart) -> int:
        """Commit the execution as `running` before user code starts, so a crash leaves a visible trace (of a
        kernel's crash: on PostgreSQL a trace is not worth the server's fsync, unless durability="full")."""
        run_id = self.run_id
        with self.transaction(synchronous=self.durability == "full") as conn:
            return cells.start(conn, run_id, s)

    def write_events(self, execution_id: int, events: list[tuple[str, Any]]) -> None:
        cells.write_events(self.conn, execution_id, events)

    def write_output(self, execution_id: int, out: StoredOutput) -> None:
        cells.write_output(self.conn, execution_id, out)

    def finish_execution(self, execution_id: int, *, state: str, duration: float, **facts: Any) -> None:
        cells.finish(self.conn, execution_id, state=state, duration=duration, **facts)

    def find_replayable(self, s: ExecutionStart) -> Recorded | None:
        only_run = self.run_id if self.from_scratch else None
        if self._pg:
            self._found, previous = cells.find_with_previous(self.conn, s, only_run=only_run)
            self._previous = (s, previous)
        else:  # where a statement costs µs, a replay does not ask for the previous execution
            self._found = cells.find_replayable(self.conn, s.key, only_run=only_run)
        self._found_outputs = []
        return self._found

    def _replaying(self, execution_id: int) -> Recorded | None:
        found = self._found
        return found if found is not None and found.id == execution_id else None

    def previous_execution(self, s: ExecutionStart) -> dict[str, Any] | None:
        if self._previous is not None and self._previous[0] is s:
            return self._previous[1]
        return cells.previous(self.conn, s)

    def stored_outputs(self, execution_id: int) -> list[StoredOutput]:
        outputs = cells.outputs(self.conn, execution_id)
        if self._replaying(execution_id):
            self._found_outputs = outputs
        return outputs

    def note_package(self, package: str, version: str) -> None:
        """Inside the caller's write transaction: this run used `package` at `version` (kept if already listed)."""
        if self._pg:
            return self._pg.note_package(self.conn, self.run_id, package, version)
        self.conn.execute("UPDATE run SET packages = json_set(packages, '$.' || ?, ?) WHERE id = ? AND "
                          "json_extract(packages, '$.' || ?) IS NULL", (package, version, self.run_id, package))

    def recorded_environment(self, execution_id: int) -> tuple[str, str | None] | None:
        """The Python version and the packages JSON of the run that recorded `execution_id`."""
        found = self._replaying(execution_id)
        if found is not None:
            return found.python, found.packages
        row = self.conn.execute("SELECT r.python, r.packages FROM execution e JOIN run r ON r.id = e.run_id "
                                "WHERE e.id = ?", (execution_id,)).fetchone()
        return None if row is None else (str(row[0]), row[1])

    def output_types(self, execution_id: int) -> list[tuple[str, str]]:
        """(codec, type) of each stored value of an execution."""
        if self._replaying(execution_id) and self._found_outputs:
            return [(str(o.codec), str(o.type)) for o in self._found_outputs if o.codec is not None]
        return [(str(c), str(t)) for c, t in self.conn.execute(
            "SELECT codec, type FROM output WHERE execution_id = ? AND codec IS NOT NULL", (execution_id,))]

    def output_names(self, execution_id: int) -> list[str]:
        """The names the execution lists as its outputs (written in the same transaction as the rows)."""
        found = self._replaying(execution_id)
        return found.listed if found is not None else cells.output_names(self.conn, execution_id)

    def execution_events(self, execution_id: int) -> list[tuple[str, Any]]:
        return queries.events(self.conn, execution_id)

    def record_replay(self, s: ExecutionStart, source: Recorded, duration: float) -> None:
        self.defer(*cells.replay_row(self.run_id, s, source, duration))

    def call_recorder(self, on_create: Callable[[], object]) -> Recorder:
        """The recorder of this log's activity calls in this process (durable_nb.calls)."""
        from .calls import recorder_for  # deferred for start-up speed: %load_ext loads no activity machinery

        return recorder_for(self, on_create)

    @property
    def run_id(self) -> int:
        """This process's run in the log, registered on first use."""
        if self._run_id is None:
            self._run_id = self._start_run()
        return self._run_id

    def _start_run(self) -> int:
        me = _process_identity()
        with self.transaction() as conn:
            (run_id,) = conn.execute(
                "INSERT INTO run (uuid, started_at, host, pid, pid_started_at, notebook, python, platform, "
                "packages) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (os.urandom(16).hex(), time.time(), me[0], me[1], me[2], self.notebook,
                 sys.version.split()[0], _platform(), json.dumps(package_versions())),
            ).fetchone()
            if self._pg:
                self._pg.register(conn, int(run_id))
        if self._pg:
            self._pg.started(int(run_id))
        return int(run_id)

    def end_run(self) -> None:
        if self._run_id is not None and not self.readonly:
            with self.transaction() as conn:
                conn.execute("UPDATE run SET ended_at = ? WHERE id = ?", (time.time(), self._run_id))
            self._run_id = None

    def close(self) -> None:
        try:
            if self._flush_timer is not None:
                self._flush_timer.cancel()
            self.flush()
            with contextlib.suppress(LogError):  # a log that cannot be written keeps its run open, as a crash
                self.end_run()
        finally:
            if self._pg:
                self._pg.close()
            else:
                if not self.readonly:
                    settle_checkpoints(self.path)
                self.conn.close()

    def dead_run_ids(self) -> list[int]:
        """Runs that ended or whose process is gone (another host's process cannot write this local file; on
        PostgreSQL another host's run is gone when its lease expired)."""
        me = _process_identity()
        if self._pg:
            return self._pg.dead_run_ids(self.conn, me[0], _alive)
        dead = []
        rows = self.conn.execute("SELECT id, host, pid, pid_started_at, ended_at FROM run").fetchall()
        for run_id, host, pid, pid_started, ended in rows:
            mine = host == me[0] and pid == me[1]  # this process: alive, whatever psutil would take to say so
            if ended is not None or host != me[0] or not (mine or _alive(pid, pid_started)):
                dead.append(int(run_id))
        return dead

    def reap_crashed(self) -> int:
        """Mark executions left `running` by dead processes as `crashed`; returns how many."""
        if not queries.running_runs(self.conn, "execution"):
            return 0
        dead = set(self.dead_run_ids())
        with self.transaction() as conn:
            return queries.mark_crashed(conn, "execution", dead)


def _pg_backend(url: str, readonly: bool) -> pg_store.PgBackend:
    from . import pg_store  # deferred for start-up speed: only PostgreSQL logs need it

    return pg_store.PgBackend(url, readonly=readonly)


def _process_identity() -> tuple[str, int, float | None]:
    pid = os.getpid()
    return keys.host(), pid, _start_time(pid)


@functools.cache
def _platform() -> str:
    """The run's platform, as `Linux-6.1.0-x86_64`: platform.platform() spawns `uname -p` (a subprocess, tens
    of ms on a script's first call) and scans the interpreter binary for its libc version."""
    if hasattr(os, "uname"):
        u = os.uname()
        return f"{u.sysname}-{u.release}-{u.machine}"
    import platform  # deferred for start-up speed: only where os.uname is missing (Windows)

    return platform.platform()


def _start_time(pid: int) -> float | None:
    """When the process started, as psutil computes it on Linux (boot time + start ticks); None if it is gone."""
    if _HAS_PROC:
        found = _proc_stat(pid)
        return found[1] if found else None
    import psutil  # deferred for start-up speed: only where /proc cannot answer

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


# Linux answers from /proc directly: importing psutil costs ~10 ms, which a script's first activity call would
# pay as soon as the log holds another process's run.
_HAS_PROC = os.path.isdir("/proc/self")


def _proc_stat(pid: int) -> tuple[bytes, float] | None:
    """(state letter, start time) of `pid` from /proc/PID/stat; None when there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        return fields[0], _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@functools.cache
def _boot_time() -> float:
    for line in Path("/proc/stat").read_bytes().splitlines():
        if line.startswith(b"btime "):
            return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def _alive(pid: int, started: float | None) -> bool:
    if _HAS_PROC:
        found = _proc_stat(pid)
        # A zombie was killed, not yet reaped by its parent: it will never write again.
        if found is None or found[0] == b"Z":
            return False
        now_started = found[1]
    else:
        import psutil  # deferred for start-up speed: only where /proc cannot answer

        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return False
            now_started = float(psutil.Process(pid).create_time())
        except psutil.Error:
            return False
    # A reused pid belongs to a process that started later than the one that wrote the run.
    return started is None or abs(now_started - started) < 1.0


def package_versions() -> dict[str, str]:
    """From the imported modules' `__version__` (reading installed metadata costs ~15 ms a package); metadata
    only for a module that has no `__version__`."""
    found = {}
    for name, module_name in KEY_PACKAGES.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        version = getattr(module, "__version__", None)
        if isinstance(version, str):
            found[name] = version
            continue
        from importlib import metadata  # deferred for start-up speed: rarely needed (see the docstring)

        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
