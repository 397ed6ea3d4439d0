"""Shared helpers for `make bench`: timing medians and one printed line per figure.

Every figure is printed with the baseline measured in the same run and the ratio between them, because these
machines are noisy and absolute numbers mean little across runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS: list[dict[str, object]] = []


def median_time(fn: Callable[[], object], *, repeat: int = 5, setup: Callable[[], object] | None = None) -> float:
    """Median wall time in seconds of `fn()` over `repeat` runs; `setup()` runs untimed before each."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def per_call(call: Callable[[int], object], n: int, batch: int) -> float:
    """Median over batches of seconds per `call(i)`, for i in range(n): another process's burst on these shared
    cores spoils a few batches rather than the whole loop."""
    times = []
    for start in range(0, n, batch):
        t0 = time.perf_counter()
        for i in range(start, min(start + batch, n)):
            call(i)
        times.append((time.perf_counter() - t0) / (min(start + batch, n) - start))
    return statistics.median(times)


def fmt_seconds(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def report(name: str, value: float, baseline: float | None = None, *, baseline_name: str = "",
           limit: float | None = None, unit: str = "s", limit_kind: str = "ratio") -> None:
    """Print one figure. `limit` is the target: a max ratio against the baseline (limit_kind='ratio') or a max
    absolute value in `unit` (limit_kind='abs')."""
    shown = fmt_seconds(value) if unit == "s" else f"{value:.3g} {unit}"
    line = f"{name:<58} {shown:>12}"
    ratio = None
    if baseline:
        ratio = value / baseline
        base_shown = fmt_seconds(baseline) if unit == "s" else f"{baseline:.3g} {unit}"
        line += f"   vs {baseline_name or 'baseline'} {base_shown} → {ratio:.2f}×"
    ok = None
    if limit is not None:
        measured = ratio if limit_kind == "ratio" else value
        if measured is not None:
            ok = measured <= limit
            line += f"   [target ≤ {limit:g}{'×' if limit_kind == 'ratio' else ' ' + unit}: {'ok' if ok else 'MISSED'}]"
    print(line, flush=True)
    RESULTS.append({"name": name, "value": value, "baseline": baseline, "ratio": ratio, "ok": ok})


def durable_shell(db: Path | str) -> Any:
    """A fresh IPython shell with durable_nb loaded on log `db` (displays collected, not printed)."""
    from IPython.core.displaypub import CapturingDisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    cfg = Config()
    cfg.HistoryManager.hist_file = ":memory:"
    InteractiveShell.clear_instance()
    ip = InteractiveShell.instance(config=cfg)
    ip.display_pub = CapturingDisplayPublisher()
    ip.run_cell("%load_ext durable_nb")
    ip.run_cell(f"%config DurableMagics.db = {str(db)!r}")
    return ip
