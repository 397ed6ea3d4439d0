"""What a log on PostgreSQL adds to `LogStore`: its connections, its blob store, the lease of its runs, and the
local folder that holds what this machine keeps for it (the activity journal).

`LogStore(url)` with a `postgresql://` URL opens one (the only place that tells the backends apart); everything
else of LogStore (runs, transactions, deferred rows, the CellLog interface, the activity recorder) runs the same
SQL on both.

Runs of other hosts are declared dead by their lease, never by a pid that means nothing here: every writing run
renews `run_heartbeat.beat_at` every LEASE/3 seconds from its own connection (so a cell's long transaction never
delays it), in the server's clock (so the hosts' clocks do not matter); a run whose beat is older than its lease
is dead, and its `running` executions and calls become `crashed` when the next writer opens the log.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

from ..pg_url import PostgresTarget, parse
from . import background
from .pg_blobs import PgBlobStore
from .pg_connect import PgConnection

# Seconds a run stays alive without a heartbeat; DURABLE_NB_LEASE_SECONDS overrides it (tests use a short one).
LEASE_SECONDS = 30.0
HEARTBEAT = "heartbeat"
# What a run's liveness looks like to every host: in the server's clock.
_NOW = "extract(epoch FROM clock_timestamp())"


def lease_seconds() -> float:
    return float(os.environ.get("DURABLE_NB_LEASE_SECONDS") or LEASE_SECONDS)


def local_folder(target: PostgresTarget) -> Path:
    """Where this machine keeps what belongs to the log at `target` (its activity journal): one folder per
    database and schema, named by a digest of the password-free URL."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "durable_nb" / "postgres" / xxhash.xxh3_64_hexdigest(target.display.encode()) / "log"


class PgBackend:
    """The PostgreSQL side of one open LogStore."""

    def __init__(self, url: str, *, readonly: bool) -> None:
        self.target = parse(url)
        self.path = local_folder(self.target)
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = PgConnection(self.target, readonly=readonly, migrate_schema=not readonly)
        self.conn.log_path = self.path
        self._heartbeat: _Heartbeat | None = None

    def connect_writer(self) -> PgConnection:
        conn = PgConnection(self.target, readonly=False)
        conn.log_path = self.path
        return conn

    @staticmethod
    def blob_store(conn: Any) -> PgBlobStore:
        return PgBlobStore(conn)

    @staticmethod
    def note_package(conn: Any, run_id: int, package: str, version: str) -> None:
        conn.execute("UPDATE run SET packages = (packages::jsonb || jsonb_build_object(?::text, ?::text))::text "
                     "WHERE id = ? AND (packages::jsonb -> ?::text) IS NULL", (package, version, run_id, package))

    def register(self, conn: Any, run_id: int) -> None:
        """Inside the transaction that inserts the run: its first beat, so it is alive from its first commit."""
        conn.execute(f"INSERT INTO run_heartbeat (run_id, beat_at, lease) VALUES (?, {_NOW}, ?)",
                     (run_id, lease_seconds()))

    def started(self, run_id: int) -> None:
        self._heartbeat = _Heartbeat(self, run_id)
        self._heartbeat.start()

    def dead_run_ids(self, conn: Any, host: str, alive: Callable[[int, float | None], bool]) -> list[int]:
        """Runs that ended, runs of this host whose process is gone (`alive(pid, started)`), and runs of other
        hosts whose lease expired (or that never had one: copied from another log)."""
        rows = conn.execute(
            f"SELECT r.id, r.host, r.pid, r.pid_started_at, r.ended_at, h.beat_at + h.lease < {_NOW} "
            "FROM run r LEFT JOIN run_heartbeat h ON h.run_id = r.id").fetchall()
        dead = []
        for run_id, run_host, pid, pid_started, ended, expired in rows:
            gone = not alive(pid, pid_started) if run_host == host else expired is not False
            if ended is not None or gone:
                dead.append(int(run_id))
        return dead

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        self.conn.close()


class _Heartbeat(threading.Thread):
    def __init__(self, backend: PgBackend, run_id: int) -> None:
        super().__init__(name="durable_nb heartbeat", daemon=True)
        self.backend = backend
        self.run_id = run_id
        self.interval = lease_seconds() / 3
        self._stop_event = threading.Event()
        self._conn: PgConnection | None = None

    def run(self) -> None:
        path = self.backend.path
        while not self._stop_event.wait(self.interval):
            try:
                if self._conn is None:
                    self._conn = self.backend.connect_writer()
                self._conn.execute(f"UPDATE run_heartbeat SET beat_at = {_NOW} WHERE run_id = ?", (self.run_id,))
            except Exception as exc:  # the server is away: the next beat tries again, on a new connection
                background.failed(path, HEARTBEAT, f"this run's lease on {self.backend.target} could not be "
                                  f"renewed ({exc}); other hosts will see it as crashed if that lasts "
                                  f"{lease_seconds():.0f} s")
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                self._conn = None
            else:
                background.succeeded(path, HEARTBEAT)
        if self._conn is not None:
            self._conn.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
