"""The durable cell's semantics, one test per line of DESIGN.md section 3 that runs in one process.

Each "new_shell()" is a fresh namespace on the same log, standing in for a kernel restart; tests that need a
real restart, SIGKILL or two processes live in tests/integration/.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from backends import is_postgres, sql
from IPython.core.error import UsageError
from shells import Shell, become

from durable_nb import session

BOTH_BACKENDS = True

COUNT = "__import__('pathlib').Path('runs.log').open('a').write('{}\\n')\n"


def runs(tag: str) -> int:
    p = Path("runs.log")
    return p.read_text().split().count(tag) if p.exists() else 0


def body(tag: str, code: str) -> str:
    """A cell body that leaves a mark in runs.log every time its code really runs."""
    return COUNT.format(tag) + code


def test_first_run_records_then_a_new_kernel_replays(new_shell: Callable[[], Shell]) -> None:
    sh = new_shell()
    sh.durable(body("c", "x = 21 * 2\nprint('hello', x)"))
    assert sh.ns["x"] == 42
    assert sh.last_status()["state"] == "recorded"
    sh2 = new_shell()
    sh2.durable(body("c", "x = 21 * 2\nprint('hello', x)"))
    assert sh2.ns["x"] == 42
    assert runs("c") == 1
    status = sh2.last_status()
    assert status["state"] == "replayed"
    assert re.match(r"replayed in .+ · saved .+ of .+ · recorded ", status["message"]), status["message"]


def test_upstream_value_changes_reruns(new_shell: Callable[[], Shell]) -> None:
    sh = new_shell()
    sh.run("a = 1")
    sh.durable(body("c", "b = a + 1"))
    sh2 = new_shell()
    sh2.run("a = 2")
    sh2.durable(body("c", "b = a + 1"))
    assert sh2.ns["b"] == 3 and runs("c") == 2
    assert sh2.last_status()["reason"] == "input a changed"


@pytest.mark.parametrize("mutation", ["arr[0] = 5", "lst.append(9)", "df.loc[0, 'v'] = 7.5"])
def test_upstream_mutated_in_place_reruns(shell: Shell, mutation: str) -> None:
    shell.run("import numpy as np, pandas as pd\narr = np.zeros(3)\nlst = [1]\ndf = pd.DataFrame({'v': [1.0]})")
    cell = body("c", "total = float(arr.sum()) + sum(lst) + float(df.v.sum())")
    shell.durable(cell)
    shell.durable(cell)
    assert runs("c") == 1
    shell.run(mutation)
    shell.durable(cell)
    assert runs("c") == 2
    assert "changed" in shell.last_status()["reason"]


def test_cell_mutating_its_input_replays_the_mutation(new_shell: Callable[[], Shell]) -> None:
    sh = new_shell()
    sh.run("lst = [1, 2]\nalias = lst")
    sh.durable(body("c", "lst.append(3)"))
    sh2 = new_shell()
    sh2.run("lst = [1, 2]\nalias = lst")
    sh2.durable(body("c", "lst.append(3)"))
    assert runs("c") == 1
    assert sh2.ns["lst"] == [1, 2, 3]
    assert sh2.ns["alias"] is sh2.ns["lst"]


def test_a_frame_and_a_series_changed_in_place_are_restored_into_their_aliases(
        new_shell: Callable[[], Shell]) -> None:
    """`view = df` in one cell, `df["c"] = ...` in the next: after a replay `view` has column c and is still df,
    as after a run (pandas' inplace=True path takes the decoded frame's data)."""
    setup = ("import pandas as pd\ndf = pd.DataFrame({'x': [1, 2]})\nview = df\n"
             "s = pd.Series([1.0, 2.0], name='s')\nt = s")
    cell = body("c", "df['c'] = df['x'] * 10\ns[0] = 5.0")
    for sh in (new_shell(), new_shell()):
        sh.run(setup)
        sh.durable(cell)
    assert runs("c") == 1 and sh.last_status()["state"] == "replayed"
    assert sh.ns["view"] is sh.ns["df"] and list(sh.ns["view"].columns) == ["x", "c"]
    assert sh.ns["view"]["c"].tolist() == [10, 20]
    assert sh.ns["t"] is sh.ns["s"] and sh.ns["t"].tolist() == [5.0, 2.0] and sh.ns["t"].name == "s"


def test_cell_that_raises_is_failed_and_never_replayed(new_shell: Callable[[], Shell]) -> None:
    sh = new_shell()
    with pytest.raises(ZeroDivisionError):
        sh.durable(body("c", "partial = 1\n1 / 0"))
    assert sh.last_status()["state"] == "failed"
    sh2 = new_shell()
    with pytest.raises(ZeroDivisionError):
        sh2.durable(body("c", "partial = 1\n1 / 0"))
    assert runs("c") == 2
    assert "previous run failed" in sh2.last_status()["reason"]


def test_unpicklable_variable_is_named_others_kept_not_replayed(new_shell: Callable[[], Shell]) -> None:
    cell = body("c", "import threading\nlock = threading.Lock()\nkept = [1, 2]")
    sh = new_shell()
    sh.durable(cell)
    status = sh.last_status()
    assert status["state"] == "not-replayable"
    assert "variable lock" in status["problems"][0] and "--ignore lock" in status["problems"][0]
    sh2 = new_shell()
    sh2.durable(cell)
    assert runs("c") == 2, "a cell with a hole in it must not replay"
    sh2.durable(cell, "--ignore lock")
    sh3 = new_shell()
    sh3.durable(cell, "--ignore lock")
    assert runs("c") == 3
    assert sh3.ns["kept"] == [1, 2] and "lock" not in sh3.ns


def test_equal_frames_built_differently_replay(new_shell: Callable[[], Shell]) -> None:
    cell = body("c", "s = df.a.sum()")
    sh = new_shell()
    sh.run("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3], 'b': ['x', 'y', 'z']})")
    sh.durable(cell)
    sh2 = new_shell()
    sh2.run("import pandas as pd\ndf = pd.concat([pd.DataFrame({'a': [1], 'b': ['x']}),"
            " pd.DataFrame({'a': [2, 3], 'b': ['y', 'z']})], ignore_index=True)")
    sh2.durable(cell)
    assert runs("c") == 1 and sh2.ns["s"] == 6


def test_helper_function_edited_elsewhere_reruns(shell: Shell) -> None:
    shell.run("def scale(v):\n    return v * 2\ndef helper(v):\n    return scale(v) + 1")
    cell = body("c", "y = helper(10)")
    shell.durable(cell)
    shell.durable(cell)
    assert runs("c") == 1
    shell.run("def scale(v):\n    return v * 3")
    shell.durable(cell)
    assert runs("c") == 2 and shell.ns["y"] == 31
    assert "input scale changed" in shell.last_status()["reason"]


def test_comment_and_whitespace_edits_still_replay(new_shell: Callable[[], Shell]) -> None:
    sh = new_shell()
    sh.durable(body("c", "x = [1, 2]"))
    sh2 = new_shell()
    sh2.run("unrelated = 'a cell inserted above'")
    sh2.durable(body("c", "# a comment\nx  =  [1,2]   # another\n\n"))
    assert runs("c") == 1 and sh2.ns["x"] == [1, 2]


def test_aliases_and_deletions_survive_replay(new_shell: Callable[[], Shell]) -> None:
    cell = body("c", "a = {'k': [1]}\nb = a\ntmp = 5\ndel tmp")
    sh = new_shell()
    sh.run("tmp = 1")
    sh.durable(cell)
    sh2 = new_shell()
    sh2.run("tmp = 1")
    sh2.durable(cell)
    assert runs("c") == 1
    assert sh2.ns["b"] is sh2.ns["a"]
    assert "tmp" not in sh2.ns


def test_functions_and_classes_work_after_replay(new_shell: Callable[[], Shell]) -> None:
    cell = body("c", "class Point:\n    def norm(self):\n        return abs(self.x) + OFFSET\n"
                     "def make(x):\n    p = Point()\n    p.x = x\n    return p\np = make(-3)")
    sh = new_shell()
    sh.run("OFFSET = 0")
    sh.durable(cell)
    sh2 = new_shell()
    sh2.run("OFFSET = 0")
    sh2.durable(cell)
    assert runs("c") == 1
    assert sh2.run("isinstance(p, Point) and isinstance(make(2), Point)") is True
    sh2.run("OFFSET = 100")
    assert sh2.run("make(2).norm()") == 102, "replayed functions must read the live namespace"


def test_outputs_replay_in_order_and_result_sets_out(new_shell: Callable[[], Shell]) -> None:
    cell = body("c", "import sys\nfrom IPython.display import display, HTML, clear_output\n"
                     "print('one')\nclear_output(wait=True)\nprint('err', file=sys.stderr)\n"
                     "display(HTML('<b>t</b>'))\nh = display('first', display_id='d1')\nh.update('second')\n"
                     "print('two')\n6 * 7")
    sh = new_shell()
    assert sh.durable(cell) == 42
    recorded = [d for d in sh.displays if "application/vnd.durable-nb.status+json" not in d]
    sh2 = new_shell()
    assert sh2.durable(cell) == 42
    assert runs("c") == 1
    replayed = [d for d in sh2.displays if "application/vnd.durable-nb.status+json" not in d]
    assert replayed == recorded and len(replayed) == 3
    assert sh2.ns["_"] == 42 and 42 in sh2.ns["Out"].values()


def test_stdout_replays(new_shell: Callable[[], Shell], capsys: pytest.CaptureFixture[str]) -> None:
    cell = body("c", "print('line 1')\nprint('line 2')")
    new_shell().durable(cell)
    assert capsys.readouterr().out.count("line 1") == 1
    new_shell().durable(cell)
    out = capsys.readouterr().out
    assert "line 1\nline 2" in out and runs("c") == 1


def test_deps_file_edit_reruns(shell: Shell, tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a\n1\n")
    cell = body("c", "text = open('data.csv').read()")
    shell.durable(cell, "--deps-file data.csv")
    shell.durable(cell, "--deps-file data.csv")
    assert runs("c") == 1
    (tmp_path / "data.csv").write_text("a\n2\n")
    shell.durable(cell, "--deps-file data.csv")
    assert runs("c") == 2 and shell.last_status()["reason"] == "file data.csv changed"


def test_force_reruns_and_says_so(shell: Shell) -> None:
    shell.durable(body("c", "x = 1"))
    shell.durable(body("c", "x = 1"), "--force")
    assert runs("c") == 2 and shell.last_status()["reason"] == "--force"


def test_wrong_option_is_a_usage_error(shell: Shell) -> None:
    with pytest.raises(UsageError, match="unrecognized arguments"):
        shell.durable("x = 1", "--nope")


def test_help_documents_every_option(shell: Shell) -> None:
    doc = shell.ip.find_cell_magic("durable").__doc__
    for option in ("--name", "--force", "--deps", "--ignore", "--deps-file", "--db"):
        assert option in doc


def test_foreign_pickles_are_not_loaded(new_shell: Callable[[], Shell], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cell = body("c", "class Thing:\n    pass\nthing = Thing()\nn = 3")
    new_shell().durable(cell)
    become(monkeypatch, tmp_path / "colleague-secret")
    sh = new_shell()
    sh.durable(cell)
    assert runs("c") == 2, "a value pickled under another user's secret must not be unpickled"
    assert "not trusted" in sh.last_status()["reason"] or "untrusted" in sh.last_status()["reason"]


def test_tampered_blob_is_a_miss(new_shell: Callable[[], Shell], log_location: Path | str) -> None:
    cell = body("c", "import numpy as np\narr = np.arange(1000)")
    new_shell().durable(cell)
    zeros = "decode(repeat('00', length(data)), 'hex')" if is_postgres(log_location) else "zeroblob(length(data))"
    sql(log_location, f"UPDATE chunk SET data = {zeros}")
    sh = new_shell()
    sh.durable(cell)
    assert runs("c") == 2 and sh.ns["arr"][5] == 5
    assert "could not be loaded" in sh.last_status()["reason"]


def test_default_log_follows_the_notebook_then_the_environment(tmp_path: Path, secret: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from durable_nb.log import current

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DURABLE_NB_DB", raising=False)
    assert current.configured_path() == Path("durable.db")
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "analysis.ipynb"))
    assert current.configured_path() == tmp_path / "analysis.durable.db"
    monkeypatch.setenv("DURABLE_NB_DB", str(tmp_path / "chosen.db"))
    assert current.configured_path() == tmp_path / "chosen.db"


def test_config_db_setting_moves_the_log(shell: Shell, tmp_path: Path) -> None:
    shell.run(f"%config DurableMagics.db = {str(tmp_path / 'elsewhere.durable.db')!r}")
    shell.durable("z = 3")
    assert (tmp_path / "elsewhere.durable.db").exists()
    assert shell.last_status()["log"] == str(tmp_path / "elsewhere.durable.db")


def test_activities_before_any_durable_cell_use_the_configured_log(shell: Shell, tmp_path: Path) -> None:
    """One answer to "which log": an activity called before any %%durable cell goes to DurableMagics.db, and so
    do the history views, not to the default durable.db."""
    chosen = tmp_path / "chosen.durable.db"
    shell.run(f"%config DurableMagics.db = {str(chosen)!r}")
    shell.run("import durable_nb\n@durable_nb.activity\ndef double(x):\n    return 2 * x\nresult = double(21)\n"
              "calls = durable_nb.activities()")
    assert shell.ns["result"] == 42
    assert len(shell.ns["calls"]) == 1 and shell.ns["calls"]["function"].str.endswith("double").all()
    shell.durable("z = 3")
    assert shell.last_status()["log"] == str(chosen)
    assert not (tmp_path / "durable.db").exists()


def test_ipython_syntax_inside_a_durable_cell(new_shell: Callable[[], Shell]) -> None:
    cell = body("c", "lines = !echo hello\nn = len(lines)\n%time doubled = n * 2")
    sh = new_shell()
    sh.durable(cell)
    assert sh.ns["doubled"] == 2
    sh2 = new_shell()
    sh2.durable(cell)
    assert runs("c") == 1 and sh2.ns["doubled"] == 2 and list(sh2.ns["lines"]) == ["hello"]


def test_an_indented_cell_body_runs(shell: Shell) -> None:
    shell.durable("\n    first = 1\n    second = first + 1")
    assert shell.ns["second"] == 2


@pytest.mark.parametrize("quoted", ['"load the data"', "'load the data'"])
def test_a_quoted_name_is_the_words_without_their_quotes(shell: Shell, quoted: str) -> None:
    shell.durable("x = 1", f"--name {quoted}")
    names = session.current_log().history()["cell_name"].tolist()
    assert names == ["load the data"]
