"""Values of the ecosystem through the log: a ~500 MB polars DataFrame (ints, floats, strings, datetimes) and a
1 GiB torch tensor.

Fingerprints against raw xxh3 of the same buffers (the Arrow buffers polars exports, the tensor's memory);
record and replay through the full %%durable path against each library's own fastest file path with fsync:
polars `write_ipc` / `read_ipc` (polars 2 reads into memory: it has no memory_map option any more)
and `torch.save` / `torch.load`. Runs are forked, interleaved and measured as in bench_values.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.bench_values import _fsync_write, _interleaved, record_durable, replay_durable
from benchmarks.harness import fmt_seconds, report

FRAME_ROWS = 10_000_000
TENSOR_BYTES = 1 << 30
GIB = float(1 << 30)
RUNS = 9


def record_polars(value: Any, path: Path) -> None:
    _fsync_write(path / "a.arrow", lambda out: value.write_ipc(out, compression="uncompressed"))


def replay_polars(path: Path) -> Any:
    import polars as pl

    return pl.read_ipc(path / "a.arrow")


def record_torch(value: Any, path: Path) -> None:
    import torch

    _fsync_write(path / "a.pt", lambda out: torch.save(value, out))


def replay_torch(path: Path) -> Any:
    import torch

    return torch.load(path / "a.pt")


def _frame() -> tuple[Any, int]:
    import numpy as np
    import polars as pl

    n = FRAME_ROWS
    rng = np.random.default_rng(0)
    df = pl.DataFrame({
        "id": np.arange(n, dtype=np.int64), "count": rng.integers(0, 1000, n), "x": rng.random(n),
        "y": rng.standard_normal(n), "name": "user-" + pl.Series(np.arange(n) % 500_000).cast(pl.String),
        "at": np.datetime64("2024-01-01", "ns") + rng.integers(0, 10**15, n).astype("timedelta64[ns]"),
    })
    # Its memory: the buffers polars holds (estimated_size() counts string bytes, not the 16-byte views).
    table = df.to_arrow(compat_level=pl.CompatLevel.newest())
    return df, sum(b.size for column in table.columns for chunk in column.chunks for b in chunk.buffers() if b)


def _frame_size() -> int:
    """The frame's size, measured in another process (this one must not start polars' threads yet)."""
    code = "from benchmarks.bench_types import _frame; print(_frame()[1])"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def _raw_xxh3(buffers: list[Any]) -> None:
    import xxhash

    h = xxhash.xxh3_128()
    for buffer in buffers:
        h.update(buffer)
    h.digest()


def _huge_page_share(buffers: list[Any]) -> float:
    """The share of these buffers' memory the kernel backs with 2 MiB pages. numpy asks for them (madvise) on
    large allocations, torch's allocator does not unless THP_MEM_ALLOC_ENABLE=1: with 4 KiB pages one thread
    hashes a GiB ~1.5× slower here (TLB misses), which is what the raw baseline of a fresh tensor pays."""
    import numpy as np

    spans = [(a, a + n) for a, n in ((np.frombuffer(b, np.uint8).ctypes.data, memoryview(b).nbytes) for b in buffers)]
    total = sum(end - start for start, end in spans)
    huge, mapping = 0, (0, 0)
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split()[0]
            if "-" in first and not first.endswith(":"):
                lo, hi = (int(x, 16) for x in first.split("-"))
                mapping = (lo, hi)
            elif first == "AnonHugePages:" and int(line.split()[1]):
                lo, hi = mapping
                huge += sum(max(0, min(hi, end) - max(lo, start)) for start, end in spans)
    return huge / total if total else 0.0


def _fingerprint(label: str, value: Any, buffers: list[Any], size: int) -> None:
    from durable_nb.fingerprint import fingerprint

    fingerprint(value)  # warm: both then read memory that is mapped, touched and cached alike
    _raw_xxh3(buffers)
    ours, raw = [], []
    for _ in range(RUNS):  # interleaved, so a slow spell of the machine hits both
        t0 = time.perf_counter()
        fingerprint(value)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _raw_xxh3(buffers)
        raw.append(time.perf_counter() - t0)
    seconds, raw_seconds = statistics.median(ours), statistics.median(raw)
    report(f"fingerprint {label}", seconds, raw_seconds, baseline_name="1-thread raw xxh3 of its buffers")
    report(f"fingerprint {label}: ms per GiB", seconds * 1e3 * GIB / size, unit="ms/GiB", limit=60,
           limit_kind="abs")
    report(f"1-thread raw xxh3 of {label}: ms per GiB", raw_seconds * 1e3 * GIB / size, unit="ms/GiB")
    print(f"    median of {RUNS} warm interleaved runs; {_huge_page_share(buffers):.0%} of its buffers in 2 MiB pages",
          flush=True)


def _compare(label: str, value: Any, size: int, baseline: tuple[Any, Any, str], root: Path,
             make: Callable[[], Any] | None = None) -> None:
    figures = _interleaved({"durable_nb": (record_durable, replay_durable), baseline[2]: baseline[:2]}, value, root,
                           make)
    base_rec, base_rec_mem, base_rep, base_rep_mem = figures[baseline[2]]
    rec_s, rec_mem, rep_s, rep_mem = figures["durable_nb"]
    report(f"{label}: record", rec_s, base_rec, baseline_name=baseline[2], limit=3)
    report(f"{label}: replay", rep_s, base_rep, baseline_name=baseline[2], limit=1.5)
    report(f"{label}: record peak extra RSS / value size", rec_mem / size, unit="×", limit=1.2, limit_kind="abs")
    report(f"{label}: replay peak extra RSS / value size", rep_mem / size, unit="×", limit=1.2, limit_kind="abs")
    print(f"    {baseline[2]}: record {fmt_seconds(base_rec)} ({base_rec_mem / size:.2f}× mem), replay "
          f"{fmt_seconds(base_rep)} ({base_rep_mem / size:.2f}× mem)", flush=True)


def main() -> None:
    import polars as pl
    import torch

    import durable_nb.codecs
    import durable_nb.fingerprint_libs
    import durable_nb.log.blobs  # noqa: F401

    with tempfile.TemporaryDirectory(prefix="bench_types_", dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        # polars' thread pool does not survive a fork: this process leaves polars untouched until the forked
        # runs are done, and each record builds the frame in its own child.
        size = _frame_size()
        _compare("~500 MB polars DataFrame", None, size, (record_polars, replay_polars, "write_ipc+fsync / read_ipc"),
                 root, make=lambda: _frame()[0])
        tensor = torch.randn(TENSOR_BYTES // 4)
        _fingerprint("1 GiB torch tensor", tensor, [tensor.numpy()], TENSOR_BYTES)
        _compare("1 GiB torch float32 tensor", tensor, TENSOR_BYTES,
                 (record_torch, replay_torch, "torch.save+fsync / torch.load"), root)
        del tensor
        df, size = _frame()
        print(f"    polars DataFrame: {df.height:,} rows, {size / 2**20:.0f} MiB ({', '.join(map(str, df.dtypes))})",
              flush=True)
        table = df.to_arrow(compat_level=pl.CompatLevel.newest())
        buffers = [b for column in table.columns for chunk in column.chunks for b in chunk.buffers() if b is not None]
        _fingerprint("~500 MB polars DataFrame", df, buffers, size)


if __name__ == "__main__":
    main()
