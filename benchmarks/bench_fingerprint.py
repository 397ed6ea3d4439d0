"""fingerprint() of a 1 GiB float64 ndarray and of a ~500 MB mixed DataFrame, against raw xxh3_128 over the
same buffers (the memory-speed floor), and the peers: hash_pandas_object and pickle-then-hash (joblib's)."""

from __future__ import annotations

import gc
import pickle
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from benchmarks.harness import median_time, report
from durable_nb.fingerprint import fingerprint

GIB = 1 << 30
TARGET_MS_PER_GIB = 0.060


def _raw_hash(buffers: list[Any]) -> str:
    h = xxhash.xxh3_128()
    for buf in buffers:
        h.update(buf)
    return h.hexdigest()


def _pickle_hash(value: object) -> str:
    return xxhash.xxh3_128(pickle.dumps(value, protocol=5)).hexdigest()


def _report_set(what: str, nbytes: int, value: object, buffers: list[Any]) -> float:
    gib = nbytes / GIB
    fp = median_time(lambda: fingerprint(value))
    raw = median_time(lambda: _raw_hash(buffers))
    report(f"fingerprint {what}", fp, raw, baseline_name="raw xxh3_128")
    report(f"fingerprint {what}, per GiB", fp / gib, raw / gib, baseline_name="raw xxh3_128",
           limit=TARGET_MS_PER_GIB, limit_kind="abs")
    peer = median_time(lambda: _pickle_hash(value), repeat=3)
    report(f"peer: pickle + xxh3_128 of {what}", peer, fp, baseline_name="fingerprint")
    return fp


def _ndarray() -> None:
    arr = np.random.default_rng(0).random(GIB // 8)
    _report_set("1 GiB float64 ndarray", arr.nbytes, arr, [arr])


def _mixed_frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    words = pa.array([f"word-{i}-{'x' * (i % 13)}" for i in range(1000)], pa.large_string())
    return pd.DataFrame(
        {
            "id": np.arange(rows, dtype=np.int64),
            "count": rng.integers(0, 1 << 40, rows),
            "price": rng.random(rows),
            "weight": rng.random(rows),
            "label": pd.array(pc.take(words, pa.array(rng.integers(0, len(words), rows))), dtype="str"),
            "at": pd.date_range("2020-01-01", periods=rows, freq="s", tz="UTC"),
        }
    )


def _frame_buffers(df: pd.DataFrame) -> list[Any]:
    """The column buffers fingerprint() reads: numpy data, datetime int64s, Arrow offsets and bytes."""
    buffers: list[Any] = []
    for name in df.columns:
        values = df[name].array
        if isinstance(values, pd.arrays.ArrowExtensionArray):
            for chunk in values.__arrow_array__().chunks:
                buffers.extend(b for b in chunk.buffers() if b is not None)
        elif isinstance(values, pd.arrays.DatetimeArray):
            buffers.append(values.asi8)
        else:
            buffers.append(values.to_numpy())
    return buffers


def _dataframe() -> None:
    df = _mixed_frame(8_000_000)
    nbytes = int(df.memory_usage(deep=False).sum())
    dtypes = ", ".join(map(str, df.dtypes))
    print(f"mixed DataFrame: {df.shape[0]:,} rows, {nbytes / 1e6:.0f} MB, dtypes {dtypes}")
    fp = _report_set("~500 MB mixed DataFrame", nbytes, df, _frame_buffers(df))
    peer = median_time(lambda: pd.util.hash_pandas_object(df).sum(), repeat=3)
    report("peer: pd.util.hash_pandas_object(df).sum()", peer, fp, baseline_name="fingerprint")


def main() -> None:
    _ndarray()
    gc.collect()
    _dataframe()
