"""Async cells and activities: record and replay cost of one trivial `async def` activity call (targets as for
sync calls: ≤ 50 µs / ≤ 10 µs), against a bare awaited call; and the overhead of `%%durable` on a trivial cell
with one `await asyncio.sleep(0)`, against the same cell run plainly (IPython's asyncio runner, as in terminal
IPython), alternating in the same shell and run. Medians."""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks.bench_cell import _overhead, _times
from benchmarks.harness import durable_shell, report

CALLS = 5000
BATCH = 250
REPEAT = 3
CELLS = 300


async def inc(i: int) -> int:
    return i + 1


async def _per_call(call: Callable[[int], Awaitable[Any]], n: int = CALLS) -> float:
    """Median over batches of seconds per `await call(i)`, on one running loop."""
    times = []
    for start in range(0, n, BATCH):
        t0 = time.perf_counter()
        for i in range(start, start + BATCH):
            await call(i)
        times.append((time.perf_counter() - t0) / BATCH)
    return statistics.median(times)


async def activities(folder: Path) -> tuple[float, float, float]:
    """(bare, record, replay) seconds per call; record and replay the medians over REPEAT fresh logs."""
    import durable_nb.calls as act
    from durable_nb import session
    from durable_nb.log.calls import flush

    step = act.activity(inc)
    bare = statistics.median([await _per_call(inc) for _ in range(REPEAT)])
    records, replays = [], []
    for n in range(REPEAT):
        session.open_log(folder / f"async-{n}.db")
        act.reset_scope()
        await step(-1)  # first use: imports, recorder, flusher thread
        records.append(await _per_call(step))
        flush()
        act.reset_scope()
        await step(-1)
        replays.append(await _per_call(step))
        session.close_log()
    return bare, statistics.median(records), statistics.median(replays)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["DURABLE_NB_SECRET_FILE"] = str(folder / "secret")
        os.environ["DURABLE_NB_KEYS_DIR"] = str(folder / "keys")
        bare, record, replay = asyncio.run(activities(folder))
        ip = durable_shell(folder / "cells.durable.db")
        ip.run_cell("import asyncio\na = 1")
        _times(ip, ["%%durable\nawait asyncio.sleep(0)\nwarm = a + 1"] * 5 + ["await asyncio.sleep(0)\nw = a"] * 5)
        plain = [f"await asyncio.sleep(0)\nx = a + {i}" for i in range(CELLS)]
        cell_record, record_excess = _overhead(ip, [f"%%durable\n{c}" for c in plain], plain)
        cell_replay, replay_excess = _overhead(ip, [f"%%durable\n{plain[7]}"] * CELLS, plain)
        base = statistics.median(_times(ip, plain))
    report("bare awaited async call (baseline)", bare)
    report("async activity record per trivial call", record, bare, baseline_name="bare call",
           limit=50e-6, limit_kind="abs")
    report("async activity replay per call", replay, bare, baseline_name="bare call", limit=10e-6, limit_kind="abs")
    report("plain cell with one await asyncio.sleep(0) (baseline)", base)
    report("%%durable await cell, record: overhead", record_excess, limit=1e-3, limit_kind="abs")
    report("%%durable await cell, record: total", cell_record, base, baseline_name="plain cell")
    report("%%durable await cell, replay: overhead", replay_excess, limit=0.5e-3, limit_kind="abs")
    report("%%durable await cell, replay: total", cell_replay, base, baseline_name="plain cell")


if __name__ == "__main__":
    main()
