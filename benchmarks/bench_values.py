"""Big values through the log (connect + write_transaction + BlobStore + codecs) against plain files.

(a) a 1 GiB float64 ndarray, (b) a ~500 MB DataFrame (ints, floats, Arrow strings, datetimes). Baselines in
the same run: np.save + fsync / np.load, and Arrow IPC file + fsync / IPC read + to_pandas. Peers: a pickle
file (ipycache, %store) and joblib.Memory (record = first call, replay = cache hit).

Every measured run happens in a forked child, so that each starts from the same allocator state and its memory
can be measured: peak extra memory = the child's RSS high-water mark (VmHWM, reset through
/proc/self/clear_refs before the run) minus its RSS when the run starts. For a replay that includes the value
being rebuilt (1× its size), for a record only what recording adds on top of the live value.

`record_*` / `replay_*` are small and swappable (e.g. to route them through the full %%durable cell path).
"""

from __future__ import annotations

import functools
import os
import pickle
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import durable_shell, fmt_seconds, report

REPEAT = 7
ARRAY_BYTES = 1 << 30
FRAME_ROWS = 9_000_000

Value = Any
Recorder = Callable[[Value, Path], object]
Replayer = Callable[[Path], object]


# --- durable_nb ---------------------------------------------------------------------------------------------

CELL = "%%durable\nv = bench_value()"


def _cell_shell(path: Path, value: Value) -> Any:
    """The value reaches the cell through a builtin, so it is the cell's output and not an input. A trivial
    durable cell runs first, untimed: the one-time cost of a kernel's first durable cell (importing the cell
    machinery, opening the log: bench_cell's business) is not charged to the value."""
    import builtins

    os.environ["DURABLE_NB_SECRET_FILE"] = str(path.parent / "secret")
    os.environ["DURABLE_NB_KEYS_DIR"] = str(path.parent / "keys")
    builtins.bench_value = lambda: value  # type: ignore[attr-defined]
    ip = durable_shell(path / "log.durable.db")
    assert ip.run_cell("%%durable\nwarm_up = 1").success
    return ip


def record_durable(value: Value, path: Path) -> float:
    """The full %%durable path (key, run, record); returns the seconds of the cell alone."""
    ip = _cell_shell(path, value)
    start = time.perf_counter()
    result = ip.run_cell(CELL)
    seconds = time.perf_counter() - start
    assert result.success and "recorded" in str(ip.display_pub.outputs[-1]["data"]), result.error_in_exec
    # Untimed: the kernel restart that precedes a replay shuts the kernel down cleanly, closing its log.
    from durable_nb import session

    session.close_log()
    return seconds


def replay_durable(path: Path) -> float:
    ip = _cell_shell(path, None)
    start = time.perf_counter()
    result = ip.run_cell(CELL)
    seconds = time.perf_counter() - start
    assert result.success and ip.user_ns["v"] is not None, "the cell ran instead of replaying"
    return seconds


# --- baselines and peers ------------------------------------------------------------------------------------

def _fsync_write(file: Path, write: Callable[[Any], None]) -> None:
    with open(file, "wb") as out:
        write(out)
        out.flush()
        os.fsync(out.fileno())


def record_npy(value: Value, path: Path) -> None:
    import numpy as np

    _fsync_write(path / "a.npy", lambda out: np.save(out, value))


def replay_npy(path: Path) -> Value:
    import numpy as np

    return np.load(path / "a.npy")


def record_arrow(value: Value, path: Path) -> None:
    import pyarrow as pa

    def write(out: Any) -> None:
        table = pa.Table.from_pandas(value)
        with pa.ipc.new_stream(out, table.schema) as stream:
            stream.write_table(table)

    _fsync_write(path / "a.arrows", write)


def replay_arrow(path: Path) -> Value:
    import pyarrow as pa

    with pa.OSFile(str(path / "a.arrows")) as source:
        return pa.ipc.open_stream(source).read_all().to_pandas()


def record_pickle(value: Value, path: Path) -> None:
    _fsync_write(path / "a.pkl", lambda out: pickle.dump(value, out, protocol=5))


def replay_pickle(path: Path) -> Value:
    with open(path / "a.pkl", "rb") as source:
        return pickle.load(source)


_JOBLIB_VALUE: Value = None


def _produce() -> Value:
    return _JOBLIB_VALUE


def record_joblib(value: Value, path: Path) -> None:
    import joblib

    global _JOBLIB_VALUE
    _JOBLIB_VALUE = value
    joblib.Memory(path / "joblib", verbose=0).cache(_produce)()


def replay_joblib(path: Path) -> Value:
    import joblib

    return joblib.Memory(path / "joblib", verbose=0).cache(_produce)()


# --- measurement --------------------------------------------------------------------------------------------

def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _in_child(fn: Callable[[], object], setup: Callable[[], object] | None = None) -> tuple[float, int]:
    """Run fn in a forked child; return its wall time and peak extra RSS. `setup()` runs first in the child,
    unmeasured (e.g. building a polars value there: polars' thread pool does not survive a fork)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report "seconds extra_bytes" or an error, never return into the parent's code
        os.close(read_end)
        try:
            if setup is not None:
                setup()
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            before = _rss("VmRSS")
            start = time.perf_counter()
            own = fn()  # a float is the runner's own timing of the part that counts
            elapsed = own if isinstance(own, float) else time.perf_counter() - start
            message = f"{elapsed} {_rss('VmHWM') - before}"
        except BaseException as exc:
            message = f"error {type(exc).__name__}: {exc}"
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        message = pipe.read()
    os.waitpid(pid, 0)
    if message.startswith("error"):
        raise RuntimeError(f"benchmark child failed: {message}")
    seconds, extra = message.split()
    return float(seconds), int(extra)


def _fresh(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _interleaved(contenders: dict[str, tuple[Recorder, Replayer]], value: Value,
                 root: Path, make: Callable[[], Value] | None = None) -> dict[str, tuple[float, int, float, int]]:
    """Median time and max peak extra memory over REPEAT forked runs of each contender, taken in turns (record
    by record, then replay by replay) so that a slow spell of this shared machine hits every contender alike.
    Each phase starts with one uncounted warm-up turn (its first runs pay for the page cache and fragmented
    memory the previous phase left, seconds on this machine), and each turn starts with the next contender.
    Each record starts from an empty folder; the replays read what the last record left. With `make`, each
    record's child builds the value itself before it is measured (and `value` is unused)."""
    names = list(contenders)
    runs: dict[str, list[list[tuple[float, int]]]] = {name: [[], []] for name in names}
    for phase in (0, 1):
        for turn in range(-1, REPEAT):
            for name in names[turn % len(names):] + names[:turn % len(names)]:
                record, replay = contenders[name]
                folder = root / name.replace(" ", "_")
                if phase == 0:
                    _fresh(folder)
                    made: list[Value] = [value]
                    run = _in_child(lambda: record(made[0], folder),  # noqa: B023  (called at once)
                                    None if make is None else lambda: made.__setitem__(0, make()))  # noqa: B023
                else:
                    run = _in_child(functools.partial(replay, folder))
                if turn >= 0:
                    runs[name][phase].append(run)
    return {name: (statistics.median(t for t, _ in rec), max(m for _, m in rec),
                   statistics.median(t for t, _ in rep), max(m for _, m in rep))
            for name, (rec, rep) in runs.items()}


def _compare(label: str, value: Value, size: int, baseline: tuple[Recorder, Replayer, str],
             root: Path) -> None:
    contenders: dict[str, tuple[Recorder, Replayer]] = {
        "durable_nb": (record_durable, replay_durable),
        baseline[2]: baseline[:2],
        "pickle file": (record_pickle, replay_pickle),
        "joblib.Memory": (record_joblib, replay_joblib),
    }
    figures = _interleaved(contenders, value, root)
    base_rec, _, base_rep, _ = figures[baseline[2]]
    rec_s, rec_mem, rep_s, rep_mem = figures["durable_nb"]
    report(f"{label}: record", rec_s, base_rec, baseline_name=baseline[2], limit=3)
    report(f"{label}: replay", rep_s, base_rep, baseline_name=baseline[2], limit=1.5)
    report(f"{label}: record peak extra RSS / value size", rec_mem / size, unit="×", limit=1.2,
           limit_kind="abs")
    report(f"{label}: replay peak extra RSS / value size", rep_mem / size, unit="×", limit=1.2,
           limit_kind="abs")
    for name, (p_rec, p_rec_mem, p_rep, p_rep_mem) in figures.items():
        print(f"    {name:<22} record {fmt_seconds(p_rec):>9} ({p_rec_mem / size:4.2f}× mem)   "
              f"replay {fmt_seconds(p_rep):>9} ({p_rep_mem / size:4.2f}× mem)", flush=True)
    # The WAL counts: the checkpoint that folds it into the .db runs in the background, after the cell.
    stored = sum(p.stat().st_size for p in (root / "durable_nb").glob("log.durable.db*"))
    print(f"    log file {stored / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB value", flush=True)
    for name in contenders:
        shutil.rmtree(root / name.replace(" ", "_"), ignore_errors=True)


def _frame() -> tuple[Any, int]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = FRAME_ROWS
    rng = np.random.default_rng(0)
    ids = np.arange(n, dtype=np.int64)
    names = pc.binary_join_element_wise(pa.scalar("user-", pa.large_string()),
                                        pc.cast(pa.array(ids % 500_000), pa.large_string()),
                                        pa.scalar("", pa.large_string()))
    offsets = rng.integers(0, 10**15, n).astype("timedelta64[ns]")
    table = pa.table({
        "id": ids,
        "count": rng.integers(0, 1000, n),
        "x": rng.random(n),
        "y": rng.standard_normal(n),
        "name": names,
        "at": pa.array(np.datetime64("2024-01-01", "ns") + offsets),
    })
    df = table.to_pandas()
    return df, int(df.memory_usage(deep=False, index=True).sum())


def main() -> None:
    import joblib  # noqa: F401  (imported here so that no child pays an import inside its timing)
    import numpy as np

    import durable_nb.codecs
    import durable_nb.log.blobs  # noqa: F401

    with tempfile.TemporaryDirectory(prefix="bench_values_", dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        arr = np.random.default_rng(0).random(ARRAY_BYTES // 8)
        _compare("1 GiB float64 ndarray", arr, arr.nbytes,
                 (record_npy, replay_npy, "np.save+fsync / np.load"), root)
        del arr
        df, size = _frame()
        print(f"    DataFrame: {len(df):,} rows, {size / 2**20:.0f} MiB ({', '.join(map(str, df.dtypes))})",
              flush=True)
        _compare("~500 MB mixed DataFrame", df, size,
                 (record_arrow, replay_arrow, "Arrow IPC+fsync / read+to_pandas"), root)


if __name__ == "__main__":
    main()
