"""Overhead of `%%durable` on a trivial cell, against the same cell run plainly in the same shell and run.

Targets (issue 2): record ≤ 1 ms, replay ≤ 0.5 ms of overhead per cell. Each figure is the median over many
cells; the overhead is the durable median minus the plain median.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.harness import durable_shell, report

N = 400


def _times(ip, cells: list[str]) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for cell in cells:
        t0 = time.perf_counter()
        result = ip.run_cell(cell, store_history=True)
        out.append(time.perf_counter() - t0)
        assert result.success, result.error_in_exec
        ip.display_pub.outputs.clear()
    return out


def _overhead(ip, durable_cells: list[str], plain_cells: list[str]) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Plain and durable cells alternate, so both see the same namespace and log size; returns the medians
    of the durable cell's time and of its excess over the plain cell next to it."""
    durable, excess = [], []
    for d_cell, p_cell in zip(durable_cells, plain_cells, strict=True):
        (p_time,) = _times(ip, [p_cell])
        (d_time,) = _times(ip, [d_cell])
        durable.append(d_time)
        excess.append(d_time - p_time)
    return statistics.median(durable), statistics.median(excess)


def measure(log: Path | str) -> tuple[float, float, float, float, float]:
    """(plain cell, record total, record overhead, replay total, replay overhead) medians on the log at `log`
    (a path, or a PostgreSQL URL: benchmarks/bench_pg_log.py)."""
    ip = durable_shell(log)
    ip.run_cell("a = 1")
    _times(ip, ["%%durable\nwarm = a + 1"] * 5 + ["warm2 = a + 1"] * 5)
    plain = [f"x = a + {i}" for i in range(N)]
    record, record_excess = _overhead(ip, [f"%%durable\nx = a + {i}" for i in range(N)], plain)
    replay, replay_excess = _overhead(ip, ["%%durable\nx = a + 7"] * N, plain)
    base = statistics.median(_times(ip, plain))
    ip.run_cell("from durable_nb import session; session.close_log()")
    return base, record, record_excess, replay, replay_excess


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DURABLE_NB_SECRET_FILE"] = str(Path(tmp) / "secret")
        os.environ["DURABLE_NB_KEYS_DIR"] = str(Path(tmp) / "keys")
        base, record, record_excess, replay, replay_excess = measure(Path(tmp) / "bench.durable.db")
    report("plain trivial cell (baseline)", base)
    report("%%durable trivial cell, record: overhead", record_excess, limit=1e-3, limit_kind="abs")
    report("%%durable trivial cell, record: total", record, base, baseline_name="plain cell")
    report("%%durable trivial cell, replay: overhead", replay_excess, limit=0.5e-3, limit_kind="abs")
    report("%%durable trivial cell, replay: total", replay, base, baseline_name="plain cell")


if __name__ == "__main__":
    main()
