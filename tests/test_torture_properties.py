"""Torture (issue 17), property tests: fingerprints are deterministic across processes and hash seeds and equal
for equal values; the codecs' round trips are exact on generated values; the cell analysis never misses a name a
generated cell binds."""

from __future__ import annotations

import json
import keyword
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torture import size

from durable_nb import DurableLog
from durable_nb.analysis import analyze
from durable_nb.codecs import decode_value, encode_value
from durable_nb.fingerprint import fingerprint

EXAMPLES = size(60, 400)
plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20)
python = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.binary(max_size=20) | st.decimals(allow_nan=False, allow_infinity=False) | st.dates(),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner) | st.frozensets(st.integers(), max_size=4)
    | st.dictionaries(st.integers() | st.text(max_size=5), inner, max_size=4),
    max_leaves=15)
arrays = hnp.arrays(st.sampled_from([np.float64, np.int32, np.uint8, np.bool_, np.complex64]),
                    hnp.array_shapes(max_dims=3, max_side=6))
frames = st.integers(0, 30).flatmap(lambda n: st.builds(
    lambda a, b, c: pd.DataFrame({"a": a, "b": b, "c": c}),
    st.lists(st.floats(allow_nan=False), min_size=n, max_size=n),
    st.lists(st.integers(-2**40, 2**40), min_size=n, max_size=n),
    st.lists(st.text(max_size=6), min_size=n, max_size=n)))


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and \
            a.tobytes() == b.tobytes()
    if isinstance(a, pd.DataFrame):
        return isinstance(b, pd.DataFrame) and a.equals(b) and list(a.dtypes) == list(b.dtypes)
    return type(a) is type(b) and a == b


def test_codec_round_trips_are_exact(tmp_path: Path) -> None:
    log = DurableLog(tmp_path / "p.durable.db", readonly=False)

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(plain, python, arrays, frames))
    def round_trip(value: Any) -> None:
        with log.transaction():
            sink = log.blobs.sink()
            enc = encode_value(value, sink)
            ids = list(sink.blob_ids)
        back = decode_value(enc.codec, enc.version, enc.meta, [log.blobs.source(b) for b in ids],
                            allow_pickle=True)
        assert same(value, back), (enc.codec, value, back)

    try:
        round_trip()
    finally:
        log.close()


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.one_of(plain, arrays, frames))
def test_equal_values_fingerprint_equal(value: Any) -> None:
    import copy
    import pickle

    assert fingerprint(value) == fingerprint(copy.deepcopy(value)) == fingerprint(pickle.loads(pickle.dumps(value)))


def test_fingerprints_deterministic_across_processes_and_hash_seeds() -> None:
    values = [{"a": [1, 2.5, "x"], "b": None}, list(range(50)), "text", {"k": {"n": {"m": [True]}}}]
    script = ("import json, sys, numpy as np, pandas as pd\nfrom durable_nb.fingerprint import fingerprint\n"
              "vals = json.loads(sys.argv[1])\nvals.append(np.arange(1000.0).reshape(10, 100))\n"
              "vals.append(pd.DataFrame({'a': range(100), 'b': [str(i) for i in range(100)]}))\n"
              "vals.append({frozenset({1, 2}), ('t', 1)})\nprint(json.dumps([fingerprint(v) for v in vals]))")
    seen = set()
    for seed in ("0", "1", "12345", "random"):
        out = subprocess.run([sys.executable, "-c", script, json.dumps(values)], capture_output=True, text=True,
                             env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}, check=True)
        seen.add(out.stdout)
    assert len(seen) == 1, seen


names = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True).filter(lambda n: not keyword.iskeyword(n))


@st.composite
def cells(draw: st.DrawFn) -> tuple[str, set[str]]:
    lines, bound = [], set()
    for _ in range(draw(st.integers(1, 6))):
        n, m = draw(names), draw(names)
        form = draw(st.integers(0, 7))
        lines.append([f"{n} = 1", f"{n}, {m} = 1, 2", f"for {n} in range(2):\n    pass", f"import os as {n}",
                      f"def {n}():\n    return 1", f"class {n}:\n    pass", f"with open('x') as {n}:\n    pass",
                      f"{n} += 1" if draw(st.booleans()) else f"({n} := 3)"][form])
        bound.add(n)
        if form == 1:
            bound.add(m)
        if form == 6:
            lines[-1] = "if False:\n    " + lines[-1].replace("\n", "\n    ")
    return "\n".join(lines), bound


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(cells())
def test_analysis_never_misses_a_bound_name(cell: tuple[str, set[str]]) -> None:
    code, bound = cell
    found = set(analyze(code).binds)
    assert bound <= found, (code, bound - found)
