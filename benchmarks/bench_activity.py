"""Activities: cost to record and to replay one trivial call, against a bare call and against DBOS steps.

Figures (medians): record per call in the default durability (target ≤ 50 µs), replay per call (≤ 10 µs),
record with durability="full", and the same loop as `@DBOS.step`s inside a `@DBOS.workflow` on SQLite, run
here in the same process: durable_nb must be at least 50× faster. DESIGN.md's reference for a minimal step
log on these machines is ~30 µs to record and ~5 µs to replay.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import per_call, report

CALLS = 5000
BATCH = 250  # calls per timed batch: the figure is the median batch, so another process's burst on these
             # shared cores spoils a few batches rather than the whole loop
DBOS_STEPS = 300
REPEAT = 3


def inc(i: int) -> int:
    return i + 1


class Point:
    """A result only pickle stores: recording it signs it (Ed25519), replaying it verifies the signature."""

    def __init__(self, x: int) -> None:
        self.x = x


def point(i: int) -> Point:
    return Point(i)


def _per_call(call: Callable[[int], Any], n: int = CALLS) -> float:
    return per_call(call, n, BATCH)


def bare() -> float:
    return statistics.median(_per_call(inc) for _ in range(REPEAT))


def durable(folder: Path, durability: str, location: Callable[[int], Path | str] | None = None,
            fn: Callable[[int], Any] = inc) -> tuple[float, float]:
    """(record, replay) seconds per call of `fn`, each the median over REPEAT fresh logs (`location(n)`: where
    the n-th is; default a file in `folder`)."""
    import durable_nb.calls as act
    from durable_nb import session
    from durable_nb.log.calls import flush

    step = act.activity(fn)
    records, replays = [], []
    for n in range(REPEAT):
        where = location(n) if location else folder / f"{durability}-{fn.__name__}-{n}.db"
        session.open_log(where, durability=durability)  # type: ignore[arg-type]
        act.reset_scope()
        step(-1)  # first use: imports, recorder, flusher thread
        records.append(_per_call(step))
        flush()
        act.reset_scope()
        step(-1)
        replays.append(_per_call(step))
        session.close_log()
    return statistics.median(records), statistics.median(replays)


def dbos(system_database_url: str) -> float:
    """Seconds per `@DBOS.step` inside one `@DBOS.workflow`, DBOS's system database at `system_database_url`
    (a SQLite file here; the PostgreSQL benchmark passes its server's URL)."""
    import logging

    from dbos import DBOS

    DBOS(config={"name": "bench-activity", "system_database_url": system_database_url,
                 "log_level": "WARNING", "console_log_level": "WARNING"})

    @DBOS.step()
    def dbos_step(i: int) -> int:
        return i + 1

    @DBOS.workflow()
    def workflow(n: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            dbos_step(i)
        return (time.perf_counter() - t0) / n

    DBOS.launch()
    try:
        return statistics.median(workflow(DBOS_STEPS) for _ in range(REPEAT))
    finally:
        DBOS.destroy()
        logging.getLogger("dbos").handlers.clear()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["DURABLE_NB_KEYS_DIR"] = str(folder / "keys")  # the signing key of the pickled results
        base = bare()
        record, replay = durable(folder, "normal")
        full_record, _ = durable(folder, "full")
        signed_record, signed_replay = durable(folder, "normal", fn=point)
        peer = dbos(f"sqlite:///{folder}/dbos.sqlite")
    report("bare function call (baseline)", base)
    report("activity record per trivial call (normal)", record, base, baseline_name="bare call",
           limit=50e-6, limit_kind="abs")
    report("activity replay per call", replay, base, baseline_name="bare call", limit=10e-6, limit_kind="abs")
    report("activity record per call, durability=full", full_record, record, baseline_name="normal")
    report("activity record per call, pickled (signed) result", signed_record, record, baseline_name="trivial")
    report("activity replay per call, pickled (verified) result", signed_replay, replay, baseline_name="trivial")
    report("DBOS @step in a @workflow (SQLite), per step", peer)
    report("activity record vs DBOS step (time ratio)", record, peer, baseline_name="DBOS",
           limit=1 / 50)
    print(f"{'  → durable_nb is':<58} {peer / record:>10.0f}×   faster than DBOS per recorded step "
          f"(DESIGN.md minimal step log: ~30 µs record / ~5 µs replay)", flush=True)


if __name__ == "__main__":
    main()
