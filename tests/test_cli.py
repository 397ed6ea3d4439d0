"""`durable-nb`: every verb on a log written by a real IPython shell, bad input, start-up cost, documentation."""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_runs import run
from shells import Shell
from test_history import fingerprint

from durable_nb import session
from durable_nb.cli import build_parser, commands

DOCS = Path(__file__).parents[1] / "docs" / "cli.md"


@pytest.fixture
def log(new_shell: Callable[[], Shell], tmp_path: Path) -> Path:
    sh = new_shell()
    sh.durable("import numpy as np\nimport pandas as pd\narr = np.arange(6.0)\n"
               "df = pd.DataFrame({'a': [1, 2]})\nconfig = {'lr': 0.1}\nprint('built')", "--name build")
    sh.run("arr = arr * 2")
    sh.durable("doubled = arr * 2", "--name double")
    with pytest.raises(KeyError):
        sh.durable("missing = config['nope']", "--name broken")
    session.close_log()
    sh = new_shell()
    sh.durable("import numpy as np\nimport pandas as pd\narr = np.arange(6.0)\n"
               "df = pd.DataFrame({'a': [1, 2]})\nconfig = {'lr': 0.1}\nprint('built')", "--name build")
    session.close_log()
    return tmp_path / "t.durable.db"


def test_history_table_json_csv(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "history", str(log), "--table")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["id", "run", "cell", "state"]
    assert "replayed" in out and "KeyError: 'nope'" in out and ("ago" in out or "just now" in out) and "saved" in out
    code, out, _ = run(capsys, "history", str(log), "--json", "--state", "failed")
    rows = json.loads(out)
    assert code == 0 and [r["cell_name"] for r in rows] == ["broken"] and rows[0]["error_type"] == "KeyError"
    assert rows[0]["started_at"].endswith("Z")
    code, out, _ = run(capsys, "history", str(log), "--csv", "--last", "2")
    assert code == 0 and out.splitlines()[0].startswith("execution_id,run_id,cell_name")
    assert len(out.strip().splitlines()) == 3
    code, out, _ = run(capsys, "history", str(log), "--cell", "double", "--table")
    assert code == 0 and len(out.strip().splitlines()) == 3


def test_runs_activities_status(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "runs", str(log), "--table")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["run", "started", "lasted"] and len(out.splitlines()) == 4
    code, out, _ = run(capsys, "runs", str(log), "--json")
    assert [r["executions"] for r in json.loads(out)] == [3, 1]
    code, out, _ = run(capsys, "activities", str(log), "--table")
    assert code == 0 and "no activity calls" in out
    code, out, _ = run(capsys, "status", str(log))
    assert code == 0 and "2 recorded · 1 replayed · 1 failed" in out and "schema:     version" in out
    code, out, _ = run(capsys, "status", str(log), "--json")
    assert json.loads(out)["executions"] == {"failed": 1, "recorded": 2, "replayed": 1}


def test_show_prints_code_inputs_outputs_and_recorded_text(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "show", str(log), "4")
    assert code == 0
    assert "execution 4 · build · replayed" in out and "replayed from execution 1" in out
    assert "│ arr = np.arange(6.0)" in out and "[stdout] built" in out
    assert "df" in out and "arrow" in out and "npy" in out
    code, out, _ = run(capsys, "show", str(log), "3")
    assert "error: KeyError" in out and "traceback:" in out and "inputs: config (" in out


def test_load_writes_each_format(log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "load", str(log), "df", "-o", str(tmp_path / "df.parquet"))[0] == 0
    assert pd.read_parquet(tmp_path / "df.parquet")["a"].tolist() == [1, 2]
    assert run(capsys, "load", str(log), "doubled", "-o", str(tmp_path / "d.npy"))[0] == 0
    assert np.load(tmp_path / "d.npy").tolist() == [0.0, 4.0, 8.0, 12.0, 16.0, 20.0]
    assert run(capsys, "load", str(log), "config", "-o", str(tmp_path / "c.json"))[0] == 0
    assert json.loads((tmp_path / "c.json").read_text()) == {"lr": 0.1}
    assert run(capsys, "load", str(log), "arr", "--execution", "1", "-o", str(tmp_path / "a.pkl"))[0] == 0
    assert pd.read_pickle(tmp_path / "a.pkl").tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    code, _, err = run(capsys, "load", str(log), "config", "-o", str(tmp_path / "c.npy"))
    assert code == 1 and "variable config is a dict" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "load", str(log), "df", "-o", str(tmp_path / "df.xlsx"))
    assert code == 1 and ".parquet, .npy, .json, .pkl" in err


def test_diff(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "diff", str(log), "1", "2")
    assert code == 0 and "code changed" in out and "+doubled = arr * 2" in out
    code, out, _ = run(capsys, "diff", str(log), "1", "2", "--runs")
    assert code == 0 and "double: only in run 1" in out and "build: state recorded → replayed" in out


def test_export_and_gc(log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = fingerprint(log)
    code, out, _ = run(capsys, "export", str(log), "-o", str(tmp_path / "share.db"), "--latest-only")
    assert code == 0 and "exported 2 executions" in out and "saved" in out
    assert fingerprint(log) == before
    code, _, err = run(capsys, "export", str(log), "-o", str(tmp_path / "share.db"))
    assert code == 1 and "--force" in err
    assert run(capsys, "export", str(log), "-o", str(tmp_path / "share.db"), "--force")[0] == 0
    code, out, _ = run(capsys, "gc", str(log), "--keep-last", "1")
    assert code == 0 and "dropped 0 superseded executions" in out and "VACUUM" in out
    code, _, err = run(capsys, "gc", str(log), "--keep-last", "0")
    assert code == 1 and "at least 1" in err


def test_bad_input_is_one_line_exit_1_and_nothing_written(log: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00not sqlite" * 500)
    newer = tmp_path / "newer.db"
    newer.write_bytes(log.read_bytes())
    with sqlite3.connect(newer) as conn:
        conn.execute("INSERT INTO schema_migration VALUES (99, 'future', 0)")
    conn.close()
    cases = [
        (["history", str(tmp_path / "missing.db")], "does not exist"),
        (["runs", str(garbage)], "not a SQLite file"),
        (["status", str(newer)], "newer than this durable_nb"),
        (["show", str(log), "42"], "execution 42 is not in"),
        (["load", str(log), "ghost", "-o", str(tmp_path / "g.json")], "variable ghost was never recorded"),
        (["load", str(log), "df", "--run", "7", "-o", str(tmp_path / "g.json")], "run 7 is not in"),
        (["diff", str(log), "1", "99"], "execution 99 is not in"),
        (["load", str(log), "df", "--at", "yesterday", "-o", str(tmp_path / "g.json")], "not an ISO 8601 time"),
    ]
    watched = [log, garbage, newer]
    before = [fingerprint(p) for p in watched]
    for argv, message in cases:
        code, _out, err = run(capsys, *argv)
        assert code == 1, argv
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"durable-nb {argv[0]}: ")
    assert [fingerprint(p) for p in watched] == before
    assert not (tmp_path / "missing.db").exists() and not (tmp_path / "g.json").exists()


def test_help_starts_without_pandas() -> None:
    probe = ("import sys, contextlib, io\nfrom durable_nb.cli import main\n"
             "for argv in (['--help'], ['history', '--help'], ['export', '--help']):\n"
             "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
             "        main(argv)\n"
             "heavy = [m for m in ('pandas', 'pyarrow', 'numpy', 'matplotlib', 'boto3') if m in sys.modules]\n"
             "print(','.join(heavy))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "", f"--help imported {done.stdout.strip()}"


def test_every_command_and_option_is_documented() -> None:
    docs = DOCS.read_text()
    found = commands(build_parser())
    assert len(found) >= 9
    for name, sub in found:
        if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
            continue  # a group (fleet): its commands are checked one by one
        section = docs.split(f"### durable-nb {name}\n", 1)
        assert len(section) == 2, f"`durable-nb {name}` has no section in docs/cli.md"
        body = section[1].split("\n### ", 1)[0]
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", body), \
                        f"option {option} of `durable-nb {name}` is not documented in docs/cli.md"
