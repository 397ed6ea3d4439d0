"""Large buffers are fingerprinted as a tree of fixed-size leaves hashed in parallel: the result must not depend
on how the bytes reach the hasher (whole, strided, chunked), on the number of threads, or on the process."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch
import xxhash

from durable_nb import fingerprint as fp
from durable_nb.fingerprint import fingerprint

LEAF = fp._LEAF_BYTES
# Three leaves and a ragged tail: every branch of the tree (a leaf finished, whole leaves, a tail) is used.
N = (3 * LEAF + 12_345) // 8


@pytest.fixture(scope="module")
def big() -> np.ndarray:
    return np.random.default_rng(7).random(N)


@pytest.fixture
def pool_of(request: pytest.FixtureRequest) -> Iterator[None]:
    before = fp._pool
    fp._pool = ThreadPoolExecutor(request.param)
    yield
    fp._pool.shutdown()
    fp._pool = before


def test_a_buffer_below_one_leaf_is_plain_xxh3_of_the_stream() -> None:
    # Small values pay nothing for the tree: the stream is the one xxh3_128 state it always was.
    h = fp._Hasher(fp._Call(), fp._Memo())
    data = bytes(range(256)) * 1000
    h.put(data)
    assert h.digest_hex() == xxhash.xxh3_128(data).hexdigest()


def test_the_tree_does_not_depend_on_how_the_bytes_arrive(big: np.ndarray) -> None:
    whole = fingerprint(big)
    strided = np.empty((N, 2))
    strided[:, 1] = big
    assert fingerprint(strided[:, 1]) == whole  # copied block by block through the 4 MiB scratch buffer
    assert fingerprint(torch.from_numpy(big)) == fingerprint(torch.from_numpy(strided[:, 1]))
    arrow = pa.array(big)
    cuts = [0, 1, LEAF // 8 - 3, LEAF // 8 + 5, 2 * LEAF // 8, N - 1, N]  # chunks straddle every leaf boundary
    chunked = pa.chunked_array([arrow[a:b] for a, b in itertools.pairwise(cuts)])
    assert fingerprint(chunked) == fingerprint(pa.chunked_array([arrow]))


@pytest.mark.parametrize("where", [0, LEAF // 8 - 1, LEAF // 8, 2 * LEAF // 8 + 1, N - 1])
def test_one_changed_element_in_any_leaf_changes_the_fingerprint(big: np.ndarray, where: int) -> None:
    changed = big.copy()
    changed[where] += 1.0
    assert fingerprint(changed) != fingerprint(big)


@pytest.mark.parametrize("pool_of", [1, 3], indirect=True)
def test_the_number_of_threads_does_not_matter(big: np.ndarray, pool_of: None) -> None:
    assert fingerprint(big) == _in_fresh_process("np.random.default_rng(7).random(N)")


def _in_fresh_process(expr: str, seed: str = "0") -> str:
    code = textwrap.dedent(f"""
        import numpy as np, polars as pl
        from durable_nb.fingerprint import fingerprint
        N = {N}
        print(fingerprint({expr}))
    """)
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return out.stdout.strip()


def test_large_values_agree_across_processes_and_hash_seeds() -> None:
    frame = 'pl.DataFrame({"s": pl.Series(np.arange(N // 4) % 1000).cast(pl.String), "x": np.arange(N // 4)})'
    assert _in_fresh_process(frame, "1") == _in_fresh_process(frame, "2")
    n = N // 4
    assert fingerprint(pl.DataFrame({"s": pl.Series(np.arange(n) % 1000).cast(pl.String), "x": np.arange(n)})) == (
        _in_fresh_process(frame, "3"))


def test_long_strings_in_a_late_block_of_a_large_polars_column_are_seen() -> None:
    # Views are checked for strings longer than 12 bytes block by block on the pool; one in the last block
    # switches the column to lengths + bytes, so it must hash unlike the same column with a short string there.
    n = 2 * LEAF // 16 + 10
    short = pl.Series(["ab"] * n)
    long = short.clone().scatter(n - 1, "a string longer than twelve bytes")
    assert fingerprint(long) != fingerprint(short)
    assert fingerprint(long) == fingerprint(pl.concat([long[: n // 3], long[n // 3 :]], rechunk=False))


def _fingerprint_in_child(queue: multiprocessing.Queue[str]) -> None:
    queue.put(fingerprint(np.random.default_rng(7).random(N)))


def test_a_forked_child_fingerprints_large_values(big: np.ndarray) -> None:
    # The parent's pool has threads (used just above); a forked child has none and must make its own.
    want = fingerprint(big)
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = ctx.Queue()
    child = ctx.Process(target=_fingerprint_in_child, args=(queue,))
    child.start()
    got = queue.get(timeout=60)
    child.join(timeout=10)
    assert got == want and child.exitcode == 0


def test_leaves_still_hashing_when_put_returns_give_the_digest_of_one_whole_put() -> None:
    # put() does not wait for a buffer's leaves (the pool works on while the next column is read): buffers
    # dropped by their caller right after put(), more leaves in flight than the bound, must all count, in order.
    rng = np.random.default_rng(3)
    pieces = [rng.integers(0, 255, size, dtype=np.uint8) for size in (2 * LEAF + 5, 3 * LEAF - 7, LEAF, 5 * LEAF + 1)]
    h = fp._Hasher(fp._Call(), fp._Memo())
    for piece in pieces:
        h.put(piece.copy())  # a temporary: only the leaves' views keep it alive
        assert len(h._pending) <= max(fp._PENDING_LEAVES, 5)
    one = fp._Hasher(fp._Call(), fp._Memo())
    one.put(np.concatenate(pieces))
    assert h.digest_hex() == one.digest_hex()
    assert not h._pending
