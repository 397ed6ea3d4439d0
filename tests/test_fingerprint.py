"""fingerprint(): deterministic, type-tagged, content-based; equal content built differently hashes equal."""

from __future__ import annotations

import collections
import copy
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import xxhash

from durable_nb.errors import DurableError, Unfingerprintable
from durable_nb.fingerprint import fingerprint, fingerprint_file, referenced_globals

REPO = Path(__file__).resolve().parents[1]


def define(source: str, **names: object) -> dict[str, Any]:
    """Run `source` as a notebook cell would: in a namespace whose __name__ is __main__."""
    namespace: dict[str, Any] = {"__name__": "__main__", **names}
    exec(compile(textwrap.dedent(source), "<cell>", "exec"), namespace)
    return namespace


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "i": np.arange(6, dtype=np.int64),
            "f": [0.5, 1.5, np.nan, 3.5, 4.5, 5.5],
            "s": ["a", "bb", None, "dddd", "", "ff"],
            "t": pd.date_range("2024-01-01", periods=6, freq="h", tz="Europe/Paris"),
            "c": pd.Categorical(["x", "y", "x", "z", "y", "x"]),
            "n": pd.array([1, None, 3, 4, None, 6], dtype="Int64"),
        }
    )


# ---------------------------------------------------------------------------------------------- scalars


def test_format_is_32_lowercase_hex() -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", fingerprint({"a": [1, 2.5, "x"]}))


def test_types_are_tagged() -> None:
    values = [1, 1.0, True, "1", b"1", [1], (1,), {1}, frozenset({1}), {1: None}, None, 1 + 0j, np.int64(1)]
    assert len({fingerprint(v) for v in values}) == len(values)
    assert fingerprint(0) != fingerprint(False) != fingerprint(0.0)


def test_big_ints_and_surrogates() -> None:
    assert fingerprint(2**200) != fingerprint(2**200 + 1)
    assert fingerprint("\ud800") != fingerprint("\ud801")


def test_homogeneous_fast_paths_distinguish_values() -> None:
    floats = [float(i) for i in range(100)]
    ints = list(range(100))
    strs = [str(i) for i in range(100)]
    assert len({fingerprint(floats), fingerprint(ints), fingerprint(strs)}) == 3
    assert fingerprint(["ab", "c"] * 10) != fingerprint(["a", "bc"] * 10)
    assert fingerprint([*ints, 2**70]) != fingerprint([*ints, 2**70 + 1])
    assert fingerprint(floats) == fingerprint([float(i) for i in range(100)])


# ---------------------------------------------------------------------------------------------- containers


def test_sets_ignore_construction_order() -> None:
    words = [f"w{i}" for i in range(200)]
    assert fingerprint(set(words)) == fingerprint(set(reversed(words)))
    mixed = [1, "a", (2, "b"), frozenset({3}), None, 2.5]
    assert fingerprint(set(mixed)) == fingerprint(set(reversed(mixed)))
    assert fingerprint({1, 2}) != fingerprint({1, 3})
    assert fingerprint({1, 2}) != fingerprint(frozenset({1, 2}))


def test_dicts_hash_keys_values_in_insertion_order() -> None:
    assert fingerprint({"a": 1, "b": 2}) == fingerprint(dict([("a", 1), ("b", 2)]))
    assert fingerprint({"a": 1, "b": 2}) != fingerprint({"a": 1, "b": 3})
    assert fingerprint({"a": 1, "b": 2}) != fingerprint({"b": 2, "a": 1})


def test_cycles_terminate_and_are_deterministic() -> None:
    def cycle() -> list[Any]:
        a: list[Any] = [1, {"k": None}]
        a[1]["k"] = a
        a.append(a)
        return a

    assert fingerprint(cycle()) == fingerprint(cycle())
    b = cycle()
    b[0] = 2
    assert fingerprint(b) != fingerprint(cycle())

    class Node:
        def __init__(self) -> None:
            self.next = self

    assert fingerprint(Node()) == fingerprint(Node())


def test_set_element_cycle_back_to_the_container() -> None:
    class Holder:
        def __init__(self) -> None:
            self.members = {self, "x"}

        __hash__ = object.__hash__

    assert fingerprint(Holder()) == fingerprint(Holder())


def test_in_place_mutation_changes_the_fingerprint() -> None:
    lst = [1, 2, 3]
    before = fingerprint(lst)
    lst.append(4)
    assert fingerprint(lst) != before

    nested = {"rows": [[1, 2], [3, 4]]}
    before = fingerprint(nested)
    nested["rows"][1][0] = 30
    assert fingerprint(nested) != before

    arr = np.zeros(1000)
    before = fingerprint(arr)
    arr[0] = 5
    assert fingerprint(arr) != before

    df = frame()
    before = fingerprint(df)
    df.loc[0, "i"] = 100
    assert fingerprint(df) != before

    ns = collections.Counter("abc")
    before = fingerprint(ns)
    ns["a"] += 1
    assert fingerprint(ns) != before


# ---------------------------------------------------------------------------------------------- numpy


def test_strided_views_hash_like_their_contiguous_copy() -> None:
    base = np.random.default_rng(1).random((2000, 1200))  # 19 MB: the strided path spans several blocks
    view = base[:, ::3]
    assert not view.flags.c_contiguous
    assert fingerprint(view) == fingerprint(np.ascontiguousarray(view))
    assert fingerprint(np.asfortranarray(base)) == fingerprint(base)
    wide = np.random.default_rng(2).random((2, 700_000))[:, ::2]  # a row larger than the scratch buffer
    assert fingerprint(wide) == fingerprint(wide.copy())


def test_arrays_dtype_shape_and_objects() -> None:
    a = np.arange(12, dtype=np.int64)
    assert fingerprint(a) != fingerprint(a.astype(np.int32))
    assert fingerprint(a) != fingerprint(a.reshape(3, 4))
    dates = np.array(["2024-01-01", "NaT"], dtype="datetime64[ns]")
    assert fingerprint(dates) == fingerprint(dates.copy())
    assert fingerprint(dates) != fingerprint(dates.astype("datetime64[s]"))
    objs = np.array([{"a": 1}, "x", None], dtype=object)
    assert fingerprint(objs) == fingerprint(copy.deepcopy(objs))
    objs[0]["a"] = 2
    assert fingerprint(objs) != fingerprint(np.array([{"a": 1}, "x", None], dtype=object))
    assert fingerprint(np.float64(1.0)) != fingerprint(1.0)


# ---------------------------------------------------------------------------------------------- pandas


def test_equal_frames_built_differently_hash_equal() -> None:
    df = frame()
    by_concat = pd.concat([df.iloc[:2], df.iloc[2:5], df.iloc[5:]])
    by_columns = pd.DataFrame(index=df.index)
    for name in df.columns:
        by_columns[name] = df[name].copy()
    assert fingerprint(df) == fingerprint(by_concat) == fingerprint(by_columns) == fingerprint(df.copy())


def test_block_layout_and_memory_order_do_not_matter() -> None:
    values = np.random.default_rng(3).random((500, 4))
    c_order = pd.DataFrame(values, columns=list("abcd"))
    f_order = pd.DataFrame(np.asfortranarray(values), columns=list("abcd"))
    split = pd.concat([c_order[["a", "b"]], c_order[["c", "d"]]], axis=1)
    assert fingerprint(c_order) == fingerprint(f_order) == fingerprint(split)


def test_arrow_chunking_and_slicing_do_not_matter() -> None:
    words = pd.Series(["alpha", None, "gamma", "δέλτα", "", "zeta"] * 50, dtype="str")
    chunked = pd.concat([words.iloc[:7], words.iloc[7:100], words.iloc[100:]])
    assert chunked.array.__arrow_array__().num_chunks > 1
    assert fingerprint(chunked) == fingerprint(words)
    sliced = words.iloc[3:]
    rebuilt = pd.Series(list(words.iloc[3:]), index=sliced.index, dtype="str")
    assert fingerprint(sliced) == fingerprint(rebuilt)
    ints = pd.Series(pd.array([1, None, 3] * 10, dtype="int64[pyarrow]"))
    assert fingerprint(pd.concat([ints.iloc[:4], ints.iloc[4:]])) == fingerprint(ints)


def test_one_changed_cell_dtype_or_name_changes_the_frame() -> None:
    def cell(row: int, column: str, value: object) -> pd.DataFrame:
        d = frame()
        d.loc[row, column] = value
        return d

    variants = [
        cell(3, "s", "DDDD"),
        cell(2, "f", 2.5),
        cell(1, "n", 7),
        frame().astype({"i": "int32"}),
        frame().assign(t=lambda d: d["t"].dt.tz_convert("UTC")),
        frame().astype({"s": object}),
        frame().rename(columns={"i": "j"}),
        frame().set_axis(frame().index + 1),
    ]
    fingerprints = {fingerprint(d) for d in variants}
    assert fingerprint(frame()) not in fingerprints
    assert len(fingerprints) == len(variants)


def test_series_index_categorical_multiindex() -> None:
    s = pd.Series([1.0, 2.0], name="x")
    assert fingerprint(s) != fingerprint(s.rename("y"))
    assert fingerprint(pd.RangeIndex(0, 0)) == fingerprint(pd.RangeIndex(5, 5))
    assert fingerprint(pd.RangeIndex(0, 10)) != fingerprint(pd.RangeIndex(0, 10, 2))
    cat = pd.Categorical(["a", "b"])
    assert fingerprint(cat) != fingerprint(pd.Categorical(["a", "b"], ordered=True))
    assert fingerprint(cat) != fingerprint(pd.Categorical(["a", "b"], categories=["b", "a"]))
    mi = pd.MultiIndex.from_product([["a", "b"], [1, 2]], names=["k", "n"])
    trimmed = pd.MultiIndex.from_product([["a", "b", "c"], [1, 2]], names=["k", "n"])[:4]
    assert fingerprint(mi) == fingerprint(trimmed)
    assert fingerprint(mi) != fingerprint(mi.set_names(["k", "m"]))
    obj = pd.Series(["a", None, "c"], dtype=object)
    assert fingerprint(obj) == fingerprint(obj.copy())
    assert fingerprint(obj) != fingerprint(pd.Series(["a", None, "d"], dtype=object))


def test_arrow_tables() -> None:
    table = pa.table({"a": [1, 2, None], "b": ["x", None, "z"]})
    rechunked = pa.concat_tables([table.slice(0, 1), table.slice(1)])
    assert fingerprint(table) == fingerprint(rechunked)
    assert fingerprint(table) != fingerprint(table.rename_columns(["a", "c"]))


# ---------------------------------------------------------------------------------------------- code


def test_function_edits_change_the_fingerprint_comments_do_not() -> None:
    f1 = define("def f(x):\n    return x + 1\n")["f"]
    f2 = define("# set-up\n\ndef f(x):\n    # add one\n    return x + 1  # done\n")["f"]
    f3 = define("def f(x):\n    return x + 2\n")["f"]
    f4 = define("def f(x=1):\n    return x + 1\n")["f"]
    assert f1.__code__ != f2.__code__  # only the line table differs
    assert fingerprint(f1) == fingerprint(f2)
    assert len({fingerprint(f1), fingerprint(f3), fingerprint(f4)}) == 3


def test_editing_a_referenced_helper_changes_the_caller() -> None:
    ns = define("def helper(x):\n    return x * 2\n\ndef main(xs):\n    return [helper(x) for x in xs]\n")
    before = fingerprint(ns["main"])
    exec("def helper(x):\n    return x * 3\n", ns)
    assert fingerprint(ns["main"]) != before
    exec("def helper(x):\n    return x * 2\n", ns)
    assert fingerprint(ns["main"]) == before
    ns["unused_global"] = object()
    assert fingerprint(ns["main"]) == before


def test_globals_closures_and_mutual_recursion() -> None:
    ns = define(
        """
        import math
        LIMIT = 10
        def even(n):
            return n == 0 or odd(n - 1)
        def odd(n):
            return n != 0 and even(n - 1)
        def make(k):
            return lambda x: x * k + LIMIT
        """
    )
    before = fingerprint(ns["even"])
    assert fingerprint(ns["even"]) == before
    exec("def odd(n):\n    return n != 0 and not even(n - 1)\n", ns)
    assert fingerprint(ns["even"]) != before
    times2, times3 = ns["make"](2), ns["make"](3)
    assert fingerprint(times2) != fingerprint(times3)
    before = fingerprint(times2)
    ns["LIMIT"] = 11
    assert fingerprint(times2) != before


def test_referenced_globals_reach_nested_code() -> None:
    ns = define(
        """
        def f(xs):
            local = 1
            inner = lambda: helper_a(local)
            def nested():
                return helper_b
            return [helper_c(x) for x in xs], {k: math.pi for k in xs}, len(xs)
        """
    )
    assert referenced_globals(ns["f"]) == {"helper_a", "helper_b", "helper_c", "math", "len"}


def test_methods_builtins_and_installed_functions() -> None:
    class Counter:
        def __init__(self, n: int) -> None:
            self.n = n

        def get(self) -> int:
            return self.n

    assert fingerprint(Counter(1).get) != fingerprint(Counter(2).get)
    assert fingerprint(Counter(1).get) == fingerprint(Counter(1).get)
    assert fingerprint(len) != fingerprint(abs)
    assert fingerprint(math.sqrt) == fingerprint(math.sqrt)
    assert fingerprint([1].append) != fingerprint([2].append)
    assert fingerprint(np.mean) != fingerprint(np.median)


def test_classes_by_content_in_main_by_version_when_installed() -> None:
    src = """
        class Point:
            scale = 1
            def norm(self):
                return (self.x ** 2 + self.y ** 2) ** 0.5 * self.scale
            def __init__(self, x, y):
                self.x, self.y = x, y
        """
    a, b = define(src), define(src)
    assert fingerprint(a["Point"]) == fingerprint(b["Point"])
    assert fingerprint(a["Point"](1, 2)) == fingerprint(b["Point"](1, 2))
    assert fingerprint(a["Point"](1, 2)) != fingerprint(a["Point"](1, 3))
    edited = define(src.replace("** 0.5", "** 0.25"))
    assert fingerprint(edited["Point"]) != fingerprint(a["Point"])
    assert fingerprint(edited["Point"](1, 2)) != fingerprint(a["Point"](1, 2))
    assert fingerprint(pd.DataFrame) == fingerprint(pd.DataFrame)
    assert fingerprint(pd.DataFrame) != fingerprint(pd.Series)
    assert fingerprint(collections.OrderedDict) != fingerprint(dict)


def test_dataclasses_enums_and_slots() -> None:
    ns = define(
        """
        import dataclasses, enum
        @dataclasses.dataclass
        class Config:
            name: str
            tags: list = dataclasses.field(default_factory=list)
        class Color(enum.Enum):
            RED = 1
            BLUE = 2
        class Slotted:
            __slots__ = ("a", "b")
            def __init__(self, a, b):
                self.a, self.b = a, b
        """
    )
    assert fingerprint(ns["Config"]("x")) != fingerprint(ns["Config"]("y"))
    assert fingerprint(ns["Color"].RED) != fingerprint(ns["Color"].BLUE)
    assert fingerprint(ns["Slotted"](1, 2)) != fingerprint(ns["Slotted"](1, 3))


def test_modules_by_name_and_version() -> None:
    assert fingerprint(np) == fingerprint(np)
    assert fingerprint(np) != fingerprint(pd)
    assert fingerprint(os) != fingerprint(os.path)


# ---------------------------------------------------------------------------------------------- failures


def test_generator_is_unfingerprintable_with_a_clear_message() -> None:
    gen = (i for i in range(3))
    with pytest.raises(Unfingerprintable, match=r"type generator: its position is hidden state") as info:
        fingerprint(gen)
    assert isinstance(info.value, DurableError)
    assert next(gen) == 0  # fingerprinting did not consume it


def test_unfingerprintable_says_where_it_was_reached() -> None:
    ns = define("class Worker:\n    def __init__(self, lock):\n        self.lock = lock\n")
    expected = r"_thread\.lock.*reached through the state of a __main__\.Worker"
    with pytest.raises(Unfingerprintable, match=expected):
        fingerprint({"w": ns["Worker"](threading.Lock())})


def test_too_deep_nesting_is_unfingerprintable() -> None:
    deep: list[Any] = []
    for _ in range(sys.getrecursionlimit()):
        deep = [deep]
    with pytest.raises(Unfingerprintable, match="nested too deeply"):
        fingerprint(deep)


# ------------------------------------------------------------------------------------- files, processes


def test_fingerprint_file_is_the_content_hash(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    content = os.urandom(3 << 20) + b"tail"
    path.write_bytes(content)
    assert fingerprint_file(path) == xxhash.xxh3_128(content).hexdigest()
    path.write_bytes(content[:-1] + b"T")
    assert fingerprint_file(str(path)) != xxhash.xxh3_128(content).hexdigest()


DETERMINISM_SCRIPT = """
import json, sys
import pandas as pd
from durable_nb.fingerprint import fingerprint
ns = {"__name__": "__main__"}
exec("def helper(x):\\n    return {x, 'k'}\\ndef f(y):\\n    return helper(y)\\n", ns)
values = {
    "set_of_strings": {f"name-{i}" for i in range(500)},
    "mixed_set": {1, "a", (2, "b"), frozenset({"p", "q"}), None},
    "dict": {"z": {"x", "y"}, "a": [1.5, None, {"k": (1, 2)}]},
    "frame": pd.DataFrame({"s": ["x", "y", None], "i": [1, 2, 3], "c": pd.Categorical(["u", "v", "u"])}),
    "function": ns["f"],
}
print(json.dumps({k: fingerprint(v) for k, v in values.items()}))
"""


def test_deterministic_across_processes_and_hash_seeds(tmp_path: Path) -> None:
    script = tmp_path / "fp.py"
    script.write_text(DETERMINISM_SCRIPT)
    results = []
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, str(script)], env=env, cwd=REPO, capture_output=True, text=True,
                             check=True)
        results.append(json.loads(out.stdout))
    assert results[0] == results[1]
    assert len(set(results[0].values())) == len(results[0])


def test_plain_data_does_not_import_numpy_or_pandas() -> None:
    code = (
        "import sys\nfrom durable_nb.fingerprint import fingerprint\n"
        "fingerprint({'a': [1, 2.0, 'x', {3}], 'f': lambda: 1, 'm': sys})\n"
        "print(sorted(m for m in ('numpy', 'pandas', 'pyarrow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_which_object_holds_an_equal_immutable_value_does_not_matter() -> None:
    import datetime as dt
    from decimal import Decimal

    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    price = Decimal("1.10")
    shared = [(when, when), (price, price)]
    apart = [(when, when.replace()), (price, Decimal("1.10"))]
    assert shared[0][0] is shared[0][1] and apart[0][0] is not apart[0][1]
    assert fingerprint(shared) == fingerprint(apart)
