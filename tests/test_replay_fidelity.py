"""A replay puts back the state the first run left: memory shared between arrays, objects shared between
outputs and inputs, imports, settings; and what cannot come back faithfully is said, not changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.shells import Shell, user_env


def replayed_all(sh: Shell, cells: list[str]) -> list[str]:
    states = []
    for code in cells:
        sh.durable(code)
        states.append(sh.last_status()["state"])
    return states


def test_a_name_bound_only_in_an_untaken_branch_is_an_input(shell: Shell, capsys: object) -> None:
    shell.run("flag = False\ny = 5")
    cell = "if flag:\n    y = 1\nseen = y"
    shell.durable(cell)
    shell.run("y = 6")
    shell.durable(cell)
    assert shell.last_status()["state"] == "recorded"
    assert "input y changed" in shell.last_status()["reason"]
    assert shell.ns["seen"] == 6


def test_a_view_mutated_later_still_changes_its_base_after_replay(new_shell: Callable[[], Shell]) -> None:
    cells = ["import numpy as np\nx2 = np.zeros((3, 4))", "x2_sub = x2[:2, :2]", "x2_sub[0, 0] = 99",
             "first = float(x2[0, 0])"]
    assert replayed_all(new_shell(), cells) == ["recorded"] * 4
    sh = new_shell()
    assert replayed_all(sh, cells) == ["replayed"] * 4
    x2, sub = sh.ns["x2"], sh.ns["x2_sub"]
    assert x2[0, 0] == 99 and sh.ns["first"] == 99
    assert np.shares_memory(x2, sub) and sub.base is not None
    sub[1, 1] = -5  # later mutations propagate as they did in the first run
    assert x2[1, 1] == -5


def test_a_reshaped_view_and_its_base_are_stored_once(new_shell: Callable[[], Shell]) -> None:
    cells = ["import numpy as np\nx = np.arange(12.0).reshape(3, 4)", "flat = x.reshape(-1)\nflat[::5] = -1"]
    replayed_all(new_shell(), cells)
    sh = new_shell()
    assert replayed_all(sh, cells) == ["replayed", "replayed"]
    assert sh.ns["x"][0, 0] == -1 and np.shares_memory(sh.ns["x"], sh.ns["flat"])


def test_an_imported_class_is_stored_by_name_not_pickled(new_shell: Callable[[], Shell], tmp_path: Path) -> None:
    import sqlite3
    from collections import OrderedDict

    new_shell().durable("from collections import OrderedDict\nfrom json import dumps as to_json")
    with sqlite3.connect(tmp_path / "t.durable.db") as conn:
        rows = dict(conn.execute("SELECT name, kind || ' ' || coalesce(codec, '') || target FROM output"))
    assert rows == {"OrderedDict": "module collections:OrderedDict", "to_json": "module json:dumps"}
    sh = new_shell()
    sh.durable("from collections import OrderedDict\nfrom json import dumps as to_json")
    assert sh.last_status()["state"] == "replayed"
    assert sh.ns["OrderedDict"] is OrderedDict


def test_an_open_file_is_reported_by_name_never_turned_into_a_copy(shell: Shell, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("a\nb\n")
    shell.durable("fh = open('data.txt')\nfirst = fh.readline()")
    status = shell.last_status()
    assert status["state"] == "not-replayable"
    assert any("variable fh" in p and "live OS resource" in p and "--ignore fh" in p for p in status["problems"])
    shell.ns["fh"].close()


def test_objects_shared_between_pickled_outputs_and_inputs_stay_shared(new_shell: Callable[[], Shell]) -> None:
    cells = ["class Model:\n    def __init__(self):\n        self.weights = [0]",
             "model = Model()",
             "class Pipe:\n    def __init__(self, step):\n        self.steps = [step]\n"
             "pipe = Pipe(model)\nalso = [pipe]"]
    replayed_all(new_shell(), cells)
    sh = new_shell()
    assert replayed_all(sh, cells) == ["replayed"] * 3
    assert sh.ns["pipe"].steps[0] is sh.ns["model"], "an unchanged input comes back as the live object"
    assert sh.ns["also"][0] is sh.ns["pipe"], "outputs of one cell share their objects"
    assert isinstance(sh.ns["model"], sh.ns["Model"])


def test_dataclasses_and_annotations_behave_as_in_a_plain_cell(new_shell: Callable[[], Shell]) -> None:
    cells = ["from dataclasses import dataclass\n@dataclass\nclass Point:\n    x: float\n    y: float = 0.0",
             "p = Point(1.0)\nkinds = {k: v for k, v in Point.__annotations__.items()}"]
    replayed_all(new_shell(), cells)
    sh = new_shell()
    assert replayed_all(sh, cells) == ["replayed", "replayed"]
    assert repr(sh.ns["p"]) == "Point(x=1.0, y=0.0)"  # dataclasses' repr guard keeps its own globals
    assert sh.ns["kinds"] == {"x": float, "y": float}, "cells are not compiled with durable_nb's __future__ flags"


def test_print_options_set_by_a_replayed_cell_are_set_again(new_shell: Callable[[], Shell]) -> None:
    saved = np.get_printoptions()
    try:
        cell = "import numpy as np\nnp.set_printoptions(precision=2)"
        new_shell().durable(cell)
        np.set_printoptions(**saved)
        sh = new_shell()
        sh.durable(cell)
        assert sh.last_status()["state"] == "replayed"
        assert np.get_printoptions()["precision"] == 2
    finally:
        np.set_printoptions(**saved)



def test_random_generators_and_plot_style_continue_after_a_replay_as_after_a_run(
        new_shell: Callable[[], Shell]) -> None:
    """A seeded notebook's next new cell draws the same numbers and styles plots the same whether the cells
    before it ran or replayed (a tutorial's `np.random.seed(42)` / `plt.style.use("ggplot")` cell)."""
    import random

    import matplotlib as mpl

    cells = ["import numpy as np, random\nimport matplotlib.pyplot as plt\n"
             "np.random.seed(42)\nrandom.seed(7)\nplt.style.use('ggplot')",
             "noise = np.random.randn(5)\npick = random.choice(range(100))",
             # randn(5) left a normal cached: this draw takes it and moves nothing else of the generator
             "one = np.random.randn()"]
    probe = "(list(np.random.rand(3)), list(np.random.randn(2)), random.random(), plt.rcParams['axes.facecolor'], " \
            "plt.rcParams['axes.prop_cycle'].by_key()['color'][0])"
    saved_rc = dict(mpl.rcParams)
    try:
        first = new_shell()
        for cell in cells:
            first.durable(cell)
        expected = first.run(probe)
        np.random.seed(0)
        random.seed(0)
        mpl.rcdefaults()
        second = new_shell()
        assert replayed_all(second, cells) == ["replayed"] * 3
        assert second.run(probe) == expected
        assert expected[3] != mpl.rcParamsDefault["axes.facecolor"]  # the style did change something
    finally:
        mpl.rcParams.update(saved_rc)



def test_a_cell_that_imports_a_library_keeps_only_the_options_it_changed() -> None:
    """`%matplotlib notebook` or `import matplotlib.pyplot as plt; plt.style.use(...)` in a new process: before
    the cell matplotlib had no options, after it all 300 are there; only those that differ from a new process's
    are the cell's doing (all of them were stored, and an enum among them made the replay of the magic fail)."""
    import matplotlib as mpl
    import pandas as pd

    from durable_nb import settings

    fresh = {k: v for k, v in mpl.rcParamsOrig.items() if k != "backend"}
    with mpl.rc_context(fresh), pd.option_context("display.max_rows", 7):
        mpl.rcParams["lines.linewidth"] = 3.25
        after = settings.snapshot("plt.style.use('x'); pd.set_option('display.max_rows', 7)")
    kept = {k: v for k, v in settings.changed({}, after).items() if k.split(".")[0] in ("matplotlib", "pandas")}
    assert kept == {"matplotlib.lines.linewidth": 3.25, "pandas.display.max_rows": 7}

def test_cells_that_aggregate_a_kept_groupby_replay(new_shell: Callable[[], Shell]) -> None:
    """`grouped = df.groupby("day")` and later cells that aggregate it, as pandas tutorials do: the first
    aggregation fills the groupby's caches, which made it an output of every cell that used it and a changed
    input of the next one after a replay (they ran again)."""
    cells = ["import pandas as pd\ndf = pd.DataFrame({'day': ['mon', 'tue', 'mon'], 'tip': [1.0, 2.0, 4.0]})\n"
             "grouped = df.groupby('day')", "means = grouped.mean()", "tips = grouped['tip']",
             "spread = tips.agg(['min', 'max'])", "summary = grouped.describe()"]
    first = new_shell()
    assert replayed_all(first, cells) == ["recorded"] * 5
    second = new_shell()
    assert replayed_all(second, cells) == ["replayed"] * 5
    assert second.ns["spread"].equals(first.ns["spread"]) and second.ns["summary"].equals(first.ns["summary"])
    outputs = second.run("import durable_nb\ndurable_nb.history()['outputs'].head(5).tolist()")
    assert outputs[1] == "means" and outputs[4] == "summary", "aggregating leaves the groupby as it was"

def test_a_backend_chosen_in_a_cell_holds_after_its_replay(new_shell: Callable[[], Shell]) -> None:
    """`matplotlib.use(...)` in a cell decides how later figures show (with Agg a notebook shows none): after a
    replay the backend is the one the cell chose, and the figure the cell made is open under it, as after a run."""
    import matplotlib as mpl
    import matplotlib.pyplot as plt

    cells = ["import matplotlib\nimport matplotlib.pyplot as plt\nmatplotlib.use('svg')\n"
             "fig, ax = plt.subplots()\nax.plot([0, 2, 1]);"]
    probe = "[matplotlib.get_backend(), plt.get_fignums() == [fig.number], ax.get_lines()[0].get_ydata().tolist()]"
    saved = mpl.get_backend()
    try:
        first = new_shell()
        first.durable(cells[0])
        expected = first.run(probe)
        plt.close("all")
        mpl.use("pdf")
        second = new_shell()
        assert replayed_all(second, cells) == ["replayed"]
        assert second.run(probe) == expected == ["svg", True, [0, 2, 1]]
    finally:
        plt.close("all")
        mpl.use(saved)


def test_what_a_module_prints_on_import_shows_once_when_its_cell_replays(
        new_shell: Callable[[], Shell], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A replay imports the modules its cell imported; what they print then (tqdm's "IProgress not found"
    warning) is already in the recorded streams, so a replay showed it twice."""
    (tmp_path / "noisy_helper.py").write_text("import sys\nprint('loading noisy_helper')\n"
                                              "print('noisy_helper is noisy', file=sys.stderr)\nVALUE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cell = "import noisy_helper\nvalue = noisy_helper.VALUE * 2"
    new_shell().durable(cell)
    first = capsys.readouterr()
    monkeypatch.delitem(sys.modules, "noisy_helper")
    second = new_shell()
    assert replayed_all(second, [cell]) == ["replayed"] and second.ns["value"] == 6
    again = capsys.readouterr()
    assert first.out.count("loading noisy_helper") == again.out.count("loading noisy_helper") == 1
    assert first.err.count("noisy_helper is noisy") == again.err.count("noisy_helper is noisy") == 1

# One kind of value per line: bound by a recording cell, read by the next. In a new process the reader must
# replay, which it does only if the restored value leads to the same key as the original did.
KINDS = {
    "int": "1", "nested": "{'a': [1, (2, 3)], 'b': {4, 5}}", "function": "lambda_user",
    "closure": "make_closure(3)", "cls": "Shape", "instance": "Shape(2)", "dataclass": "Pt(1, 2)",
    "enum": "Color.RED", "namedtuple": "Pair(1, 'a')", "bytes": "b'xyz' * 3", "ndarray": "np.arange(6.0)",
    "view": "base_arr[1:4]", "strided": "base_arr[::2]", "structured": "np.zeros(3, dtype=[('a', 'i4'), ('b', 'f8')])",
    "masked": "np.ma.masked_array([1, 2, 3], mask=[0, 1, 0])", "frame": "pd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})",
    "series": "pd.Series([1.5, 2.5], name='s')", "categorical": "pd.Series(['a', 'b', 'a'], dtype='category')",
    "datetimes": "pd.date_range('2026-01-01', periods=3, tz='UTC')", "figure": "plt.subplots(1, 2)[0]",
    "axes": "plt.subplots(2, 2)[1]", "line": "plt.subplots()[1].plot([1, 2, 3])[0]",
    "estimator": "LogisticRegression(C=0.5)", "fitted": "LogisticRegression().fit(Xs, ys)",
    "pipeline": "make_pipeline(StandardScaler(), LogisticRegression()).fit(Xs, ys)",
    "search": "GridSearchCV(LogisticRegression(), {'C': [0.1, 1.0]}, cv=2).fit(Xs, ys)",
    "cached": "WithCache(3)", "mixed": "{'model': LogisticRegression(), 'arr': np.ones(2), 'shape': Shape(1)}",
    "decimal": "__import__('decimal').Decimal('1.10')", "datetime": "__import__('datetime').datetime(2026, 1, 2, 3)",
    "path": "__import__('pathlib').Path('a/b.csv')", "sets": "frozenset({'x', 'y'})",
}
SETUP = """
import numpy as np, pandas as pd, matplotlib
matplotlib.use('agg')
import matplotlib.pyplot as plt
from dataclasses import dataclass
from enum import Enum
from collections import namedtuple
from functools import cached_property
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.model_selection import GridSearchCV
Xs = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1], [0.1, 0.8], [0.8, 0.3]]); ys = np.array([0, 1] * 3)
base_arr = np.arange(10.0)
def lambda_user(v):
    return v + len(Xs)
def make_closure(k):
    return lambda v: v * k
class Shape:
    def __init__(self, n=1):
        self.n = n
    def _repr_html_(self):
        return f'<b>{self.n}</b>'
@dataclass
class Pt:
    x: int
    y: int
class Color(Enum):
    RED = 1
Pair = namedtuple('Pair', 'a b')
class WithCache:
    def __init__(self, n):
        self.n = n
    @cached_property
    def square(self):
        return self.n ** 2
"""
DRIVER = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config
cfg = Config(); cfg.HistoryManager.hist_file = ':memory:'
ip = InteractiveShell.instance(config=cfg)
ip.run_cell('%load_ext durable_nb')
ip.run_cell('%config DurableMagics.db = ' + repr(sys.argv[1]))
kinds = json.loads(sys.argv[2])
states = {}
def state():
    return ip.user_ns['__durable_state__']()
ip.user_ns['__durable_state__'] = lambda: None
ip.run_cell('%%durable\\n' + sys.argv[3])
for name, expr in kinds.items():
    r1 = ip.run_cell(f'%%durable\\nv_{name} = {expr}\\nif isinstance(v_{name}, WithCache): v_{name}.square')
    r2 = ip.run_cell(f'%%durable\\nseen_{name} = type(v_{name}).__name__')
    states[name] = [r1.success, r2.success]
from durable_nb import session
log = session.current_if_open()
log.flush()
rows = log.conn.execute("SELECT state FROM execution ORDER BY id").fetchall()
print(json.dumps({'states': states, 'log': [r[0] for r in rows]}))
"""


def run_process(db: Path, secret: Path, seed: str) -> dict[str, object]:
    env = {**os.environ, **user_env(secret), "PYTHONHASHSEED": seed, "MPLBACKEND": "agg"}
    done = subprocess.run([sys.executable, "-c", DRIVER, str(db), json.dumps(KINDS), textwrap.dedent(SETUP)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=db.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_every_kind_of_value_leads_to_the_same_keys_in_a_new_process(tmp_path: Path) -> None:
    assert len(KINDS) >= 30
    db, secret = tmp_path / "kinds.durable.db", tmp_path / "secret"
    first = run_process(db, secret, "1")
    assert all(ok == [True, True] for ok in first["states"].values()), first["states"]  # type: ignore[union-attr]
    second = run_process(db, secret, "2")
    recorded = len(first["log"])  # type: ignore[arg-type]
    replay_states = second["log"][recorded:]  # type: ignore[index]
    names = ["setup"] + [f"{k} {role}" for k in KINDS for role in ("value", "reader")]
    not_replayed = [n for n, s in zip(names, replay_states, strict=True) if s != "replayed"]
    assert not not_replayed, f"ran again in a new process instead of replaying: {not_replayed}"


def test_a_container_holding_another_variable_keeps_holding_it(new_shell: Callable[[], Shell]) -> None:
    cells = ["a = [1]", "d = {'a': a, 'n': 2}\npair = (a, 3)", "a.append(2)", "seen = list(d['a'])"]
    replayed_all(new_shell(), cells)
    sh = new_shell()
    assert replayed_all(sh, cells) == ["replayed"] * 4
    assert sh.ns["d"]["a"] is sh.ns["a"] and sh.ns["pair"][0] is sh.ns["a"]
    assert sh.ns["seen"] == [1, 2]


def test_an_activity_defined_in_a_replayed_cell_keys_and_reads_the_live_namespace(
        new_shell: Callable[[], Shell]) -> None:
    cells = ["import durable_nb\nscale = 10\n@durable_nb.activity\ndef times(x):\n    return x * scale",
             "r = times(3)"]
    replayed_all(new_shell(), cells)
    sh = new_shell()
    assert replayed_all(sh, cells) == ["replayed", "replayed"]
    sh.run("scale = 100")
    assert sh.ns["times"].__wrapped__.__globals__ is sh.ns, "the wrapped function reads the notebook's globals"


def test_a_decorated_notebook_function_reads_the_live_namespace_after_replay(new_shell: Callable[[], Shell]) -> None:
    cells = ["import functools\nSCALE = 2\ndef logged(fn):\n    @functools.wraps(fn)\n    def inner(x):\n"
             "        return fn(x)\n    return inner\n@logged\ndef scaled(x):\n    return x * SCALE"]
    replayed_all(new_shell(), cells)
    sh = new_shell()
    assert replayed_all(sh, cells) == ["replayed"]
    sh.run("SCALE = 4")
    assert sh.run("scaled(1)") == 4


def test_a_value_whose_pickle_round_trip_drops_state_still_replays_its_readers(
        new_shell: Callable[[], Shell]) -> None:
    # Like scikit-learn's Bunch (load_digits()): __setstate__ leaves out part of what __dict__ held.
    cells = ["class Lossy:\n    def __init__(self):\n        self.data, self.cache = [1, 2], {}\n"
             "    def __setstate__(self, state):\n        self.data = state['data']",
             "obj = Lossy()", "n = len(obj.data)"]
    replayed_all(new_shell(), cells)
    sh = new_shell()
    assert replayed_all(sh, cells) == ["replayed"] * 3
    sh.run("obj.data.append(3)")  # a real change is still a change
    sh.durable("n = len(obj.data)")
    assert sh.last_status()["state"] == "recorded" and sh.ns["n"] == 3


def test_load_reads_views_imports_and_pickled_outputs_back(shell: Shell, tmp_path: Path) -> None:
    import durable_nb

    shell.durable("import numpy as np\nfrom collections import OrderedDict\nbase = np.arange(6.0)\nsub = base[1:3]\n"
                  "class Box:\n    pass\nbox = Box()\nboxes = [box, 2]")
    log = tmp_path / "t.durable.db"
    assert durable_nb.load("sub", log=log).tolist() == [1.0, 2.0]
    assert durable_nb.load("OrderedDict", log=log).__name__ == "OrderedDict"
    assert type(durable_nb.load("boxes", log=log)[0]).__name__ == "Box"
