"""The floors a PostgreSQL backend stands on, measured on a real server started here (tests/pg_server.py:
Debian's PostgreSQL, default settings, 127.0.0.1, its data in a temporary folder), with psycopg 3.

- one INSERT + COMMIT (each commit waits for its WAL fsync), against SQLite's (WAL, synchronous=FULL, the same
  guarantee), and with `synchronous_commit=off` (the commit returns before its fsync);
- per row, many rows in one transaction: psycopg's pipelined `executemany`, and COPY;
- 8 MiB bytea chunks written (INSERT, binary parameter, one COMMIT) and read back (binary cursor), against
  writing the same bytes to a file with one fsync and reading them back;
- a `@DBOS.step` in a `@DBOS.workflow` with DBOS's system database on the same server: the peer an activity
  call recorded on PostgreSQL must beat 50× (the floor below it is the pipelined row).
Each figure is a median (per-operation figures: median over batches of the median run; see REPEAT). The anchors
quoted by issue 16 for these machines are printed beside each figure's name.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.harness import per_call, report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pg_server import PostgresServer  # (lives with the tests, which start the same server)

REPEAT = 5
COMMITS = 1000  # single-row transactions per run
BATCH = 100
ROWS = 50_000  # rows per executemany / COPY run
CHUNK = 8 << 20
CHUNKS = 32  # 256 MiB per bytea run
DBOS_STEPS = 300


def _median_run(fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(REPEAT))


def commit_per_row(conn: Any) -> float:
    conn.execute("TRUNCATE t")
    return _median_run(lambda: per_call(lambda i: conn.execute("INSERT INTO t VALUES (%s, %s)", (i, "x")),
                                        COMMITS, BATCH))


def sqlite_commit_per_row(folder: Path) -> float:
    db = sqlite3.connect(folder / "floor.db", isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (id INTEGER, v TEXT)")
        return _median_run(lambda: per_call(lambda i: db.execute("INSERT INTO t VALUES (?, ?)", (i, "x")),
                                            COMMITS, BATCH))
    finally:
        db.close()


def _rows() -> list[tuple[int, str]]:
    return [(i, "x") for i in range(ROWS)]


def executemany_per_row(conn: Any) -> float:
    rows = _rows()

    def run() -> float:
        conn.execute("TRUNCATE t")
        t0 = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany("INSERT INTO t VALUES (%s, %s)", rows)  # psycopg pipelines these (libpq pipeline)
        return (time.perf_counter() - t0) / ROWS

    return _median_run(run)


def copy_per_row(conn: Any) -> float:
    rows = _rows()

    def run() -> float:
        conn.execute("TRUNCATE t")
        t0 = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur, cur.copy("COPY t (id, v) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return (time.perf_counter() - t0) / ROWS

    return _median_run(run)


def bytea(conn: Any, chunk: bytes) -> tuple[float, float]:
    """(write, read) MB/s of CHUNKS chunks of 8 MiB."""
    target = bytearray(CHUNK)
    writes, reads = [], []
    for _ in range(REPEAT):
        conn.execute("TRUNCATE chunk")
        t0 = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            for i in range(CHUNKS):
                cur.execute("INSERT INTO chunk VALUES (%s, %b)", (i, chunk))
        writes.append(CHUNKS * CHUNK / (time.perf_counter() - t0) / 1e6)
        t0 = time.perf_counter()
        with conn.cursor(binary=True) as cur:
            for i in range(CHUNKS):
                row = cur.execute("SELECT data FROM chunk WHERE id = %s", (i,)).fetchone()
                target[:] = row[0]  # into the caller's buffer, as a blob reader would
        reads.append(CHUNKS * CHUNK / (time.perf_counter() - t0) / 1e6)
    return statistics.median(writes), statistics.median(reads)


def plain_file(folder: Path, chunk: bytes) -> tuple[float, float]:
    """(write with one fsync, read) MB/s of the same bytes in a file beside the server's data."""
    path = folder / "floor.bin"
    target = bytearray(CHUNK)
    writes, reads = [], []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            for _ in range(CHUNKS):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        writes.append(CHUNKS * CHUNK / (time.perf_counter() - t0) / 1e6)
        t0 = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while f.readinto(target):
                pass
        reads.append(CHUNKS * CHUNK / (time.perf_counter() - t0) / 1e6)
        path.unlink()
    return statistics.median(writes), statistics.median(reads)


@contextmanager
def connection(server: PostgresServer, dbname: str, *settings: str) -> Iterator[Any]:
    conn = server.connect(dbname, autocommit=True)
    try:
        for setting in settings:
            conn.execute(setting)
        yield conn
    finally:
        conn.close()


def main() -> None:
    from benchmarks.bench_activity import dbos

    chunk = os.urandom(CHUNK)  # random: neither PostgreSQL's TOAST compression nor the disk gets an easy ride
    with tempfile.TemporaryDirectory(prefix="bench-postgres-") as tmp:
        server = PostgresServer().start()
        try:
            db = server.create_database("bench")
            with connection(server, db) as conn:
                conn.execute("CREATE TABLE t (id bigint, v text)")
                conn.execute("CREATE TABLE chunk (id int PRIMARY KEY, data bytea)")
                version = conn.execute("SHOW server_version").fetchone()[0]
                commit = commit_per_row(conn)
                many = executemany_per_row(conn)
                copied = copy_per_row(conn)
                write, read = bytea(conn, chunk)
            with connection(server, db, "SET synchronous_commit = off") as conn:
                commit_async = commit_per_row(conn)
            sqlite_commit = sqlite_commit_per_row(Path(tmp))
            file_write, file_read = plain_file(Path(tmp), chunk)
            step = dbos(server.url("dbos"))
        finally:
            server.close()
    print(f"PostgreSQL {version} (defaults) on 127.0.0.1; medians of {REPEAT} runs")
    report("SQLite INSERT + COMMIT (WAL, synchronous=FULL)", sqlite_commit)
    report("PostgreSQL INSERT + COMMIT (issue: ~570 µs)", commit, sqlite_commit, baseline_name="SQLite")
    report("  synchronous_commit=off (issue: ~200 µs)", commit_async, commit, baseline_name="fsync'd commit")
    report("  pipelined executemany, per row (issue: ~19 µs)", many, commit, baseline_name="one commit")
    report("  COPY, per row (DESIGN.md: ~4 µs)", copied, many, baseline_name="executemany")
    report("file write + fsync, 256 MiB (issue: ~800 MB/s)", file_write, unit="MB/s")
    report("bytea 8 MiB chunks write (issue: ~200 MB/s)", write, file_write, baseline_name="file",
           unit="MB/s")
    report("file read, 256 MiB (issue: ~1.6 GB/s)", file_read, unit="MB/s")
    report("bytea 8 MiB chunks read (issue: ~330 MB/s)", read, file_read, baseline_name="file", unit="MB/s")
    report("DBOS @step in a @workflow, same server (issue: ~3.8 ms)", step, commit, baseline_name="one commit")
    print(f"{'  → a pipelined row is':<58} {step / many:>10.0f}×   cheaper than a DBOS step: the room under "
          f"the 50× target for an activity recorded on PostgreSQL", flush=True)


if __name__ == "__main__":
    main()
