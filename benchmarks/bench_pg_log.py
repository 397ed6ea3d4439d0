"""A log on PostgreSQL beside one on SQLite, in the same run, on a real server started here (tests/pg_server.py,
PostgreSQL's default settings, 127.0.0.1).

- trivial `%%durable` cell: record and replay overhead on each backend (issue 16 targets on PostgreSQL: record
  ≤ 3 ms, replay ≤ 1 ms);
- activity call: record and replay per trivial call on each backend, and a `@DBOS.step` in a `@DBOS.workflow`
  with DBOS's system database on the same server (target: an activity recorded on PostgreSQL ≥ 50× cheaper);
- 1 GiB of random bytes recorded (one blob, in one transaction) and replayed (read into a preallocated buffer,
  verified), against the backend's floor: the same bytes as 8 MiB bytea chunks INSERTed and SELECTed with psycopg
  (targets: ≤ 1.3× the floor's time; peak extra memory ≤ 1.2× the floor's). Each 1 GiB figure is measured in its
  own process, so that each one's peak RSS is its own.
Medians of REPEAT runs (the cell figures: medians over many cells of one run each, see bench_cell).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import bench_activity, bench_cell
from benchmarks.harness import report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pg_server import PostgresServer  # (lives with the tests, which start the same server)

REPEAT = 3
GIB = 1 << 30
CHUNK = 8 << 20

_CHILD = """
import json, os, resource, sys, time
import numpy as np, psutil
kind, url = sys.argv[1], sys.argv[2]
# Random bytes made in place (no temporary copy to inflate the peak), new each run: nothing deduplicated.
data = np.random.default_rng().bit_generator.random_raw(1 << 27).view(np.uint8)
target = np.empty_like(data)
target[:] = 0  # touched: the buffer a replay fills is the caller's, not extra memory
before = psutil.Process().memory_info().rss
if kind == "raw":
    import psycopg
    from durable_nb.pg_url import parse
    conn = psycopg.connect(parse(url).conninfo, autocommit=True)
    conn.execute("CREATE TABLE IF NOT EXISTS raw_chunk (id int PRIMARY KEY, data bytea)")
    conn.execute("ALTER TABLE raw_chunk ALTER COLUMN data SET STORAGE EXTERNAL")
    conn.execute("TRUNCATE raw_chunk")
    view = memoryview(data)
    t0 = time.perf_counter()
    with conn.transaction(), conn.cursor() as cur:
        for i, start in enumerate(range(0, len(view), {chunk})):
            cur.execute("INSERT INTO raw_chunk VALUES (%s, %b)", (i, view[start:start + {chunk}]))
    write = time.perf_counter() - t0
    out = memoryview(target)
    t0 = time.perf_counter()
    with conn.cursor(binary=True) as cur:
        for i, start in enumerate(range(0, len(out), {chunk})):
            (chunk,) = cur.execute("SELECT data FROM raw_chunk WHERE id = %s", (i,)).fetchone()
            out[start:start + len(chunk)] = chunk
    read = time.perf_counter() - t0
    conn.execute("TRUNCATE raw_chunk")
else:
    from durable_nb import DurableLog
    with DurableLog(url, readonly=False) as log:
        t0 = time.perf_counter()
        with log.transaction():
            blob_id = log.blobs.sink().put(data)
        write = time.perf_counter() - t0
        t0 = time.perf_counter()
        log.blobs.source(blob_id).readinto(memoryview(target))
        read = time.perf_counter() - t0
        log.conn.execute("TRUNCATE chunk, blob CASCADE")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the check below, which allocates
assert all((target[i:i + (64 << 20)] == data[i:i + (64 << 20)]).all() for i in range(0, len(data), 64 << 20))
print(json.dumps({{"write": write, "read": read, "extra": max(peak - before, 0)}}))
"""


def one_gib(kind: str, url: str) -> dict[str, float]:
    code = _CHILD.format(chunk=CHUNK)
    out = subprocess.run([sys.executable, "-c", code, kind, url], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def interleaved(url: str) -> dict[str, dict[str, float]]:
    """Medians of REPEAT runs of the floor and of the log, taken in turns: a burst of another process on
    these shared cores and disk then slows both, not only the one whose runs it fell on."""
    runs: dict[str, list[dict[str, float]]] = {"raw": [], "log": []}
    for _ in range(REPEAT):
        for kind, found in runs.items():
            found.append(one_gib(kind, url))
    return {kind: medians(found) for kind, found in runs.items()}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-pg-log-") as tmp:
        folder = Path(tmp)
        os.environ["DURABLE_NB_SECRET_FILE"] = str(folder / "secret")
        os.environ["DURABLE_NB_KEYS_DIR"] = str(folder / "keys")
        os.environ["XDG_STATE_HOME"] = str(folder / "state")
        server = PostgresServer().start()
        try:
            server.create_database("bench")
            version = server.connect("bench").execute("SHOW server_version").fetchone()[0]

            def url(schema: str) -> str:
                return server.url("bench", query=f"schema={schema}")

            cells: dict[str, Any] = {"SQLite": bench_cell.measure(folder / "cells.durable.db"),
                                     "PostgreSQL": bench_cell.measure(url("cells"))}
            acts = {"SQLite": bench_activity.durable(folder, "normal"),
                    "PostgreSQL": bench_activity.durable(folder, "normal", lambda n: url(f"acts{n}"))}
            signed = {"SQLite": bench_activity.durable(folder, "normal", fn=bench_activity.point),
                      "PostgreSQL": bench_activity.durable(folder, "normal", lambda n: url(f"signed{n}"),
                                                           fn=bench_activity.point)}
            big = interleaved(url("big"))
            server.create_database("dbos")
            step = bench_activity.dbos(server.url("dbos"))
        finally:
            server.close()
    print(f"PostgreSQL {version} (defaults) on 127.0.0.1, beside SQLite; medians of {REPEAT} runs")
    for backend, (base, record, record_excess, replay, replay_excess) in cells.items():
        pg = backend == "PostgreSQL"
        report(f"{backend}: %%durable trivial cell, record overhead", record_excess,
               limit=3e-3 if pg else 1e-3, limit_kind="abs")
        report(f"{backend}: %%durable trivial cell, record total", record, base, baseline_name="plain cell")
        report(f"{backend}: %%durable trivial cell, replay overhead", replay_excess,
               limit=1e-3 if pg else 0.5e-3, limit_kind="abs")
        report(f"{backend}: %%durable trivial cell, replay total", replay, base, baseline_name="plain cell")
    for backend, (record, replay) in acts.items():
        report(f"{backend}: activity record per trivial call", record)
        report(f"{backend}: activity replay per call", replay)
        report(f"{backend}: activity record per call, pickled (signed)", signed[backend][0], record,
               baseline_name="trivial")
        report(f"{backend}: activity replay per call, pickled (verified)", signed[backend][1], replay,
               baseline_name="trivial")
    report("DBOS @step in a @workflow, same PostgreSQL server", step)
    report("PostgreSQL activity record vs DBOS step (time ratio)", acts["PostgreSQL"][0], step,
           baseline_name="DBOS", limit=1 / 50)
    report("PostgreSQL pickled (signed) activity record vs DBOS step", signed["PostgreSQL"][0], step,
           baseline_name="DBOS", limit=1 / 50)
    print(f"{'  → durable_nb on PostgreSQL is':<58} {step / acts['PostgreSQL'][0]:>10.0f}×   cheaper than a "
          "DBOS step", flush=True)
    raw, log = big["raw"], big["log"]
    report("raw bytea 8 MiB chunks, 1 GiB write (floor)", raw["write"])
    report("log 1 GiB record (one blob)", log["write"], raw["write"], baseline_name="raw bytea", limit=1.3)
    report("raw bytea 8 MiB chunks, 1 GiB read (floor)", raw["read"])
    report("log 1 GiB replay (readinto, verified)", log["read"], raw["read"], baseline_name="raw bytea",
           limit=1.3)
    report("raw bytea: peak extra memory", raw["extra"] / 1e6, unit="MB")
    report("log: peak extra memory", log["extra"] / 1e6, raw["extra"] / 1e6, baseline_name="raw bytea",
           unit="MB", limit=1.2)


if __name__ == "__main__":
    main()
