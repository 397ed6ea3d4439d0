"""The CLI speaks sqlite-utils' conventions: each format parses back, a terminal gets a table and a pipe JSON,
`query` cannot change the log, every exit code is what docs/cli.md says, every --help example runs."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import pty
import select
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from cli_runs import run
from s3server import S3Server, wait_for
from shells import Shell, become, user_env
from test_history import fingerprint

import durable_nb
from durable_nb import session
from durable_nb.cli import EXAMPLES, build_parser, commands, main
from durable_nb.errors import DurableError

DOCS = Path(__file__).parents[1] / "docs" / "cli.md"
DURABLE_NB = str(Path(sys.executable).with_name("durable-nb"))


@pytest.fixture
def log(new_shell: Callable[[], Shell], tmp_path: Path) -> Path:
    """Two runs: build,v1 (a comma for CSV to quote) and double recorded, broken failed; then build,v1
    replayed."""
    sh = new_shell()
    sh.durable("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})\nprint('built')", "--name build,v1")
    sh.durable("doubled = df * 2", "--name double")
    with pytest.raises(KeyError):
        sh.durable("missing = {}['nope']", "--name broken")
    session.close_log()
    sh = new_shell()
    sh.durable("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})\nprint('built')", "--name build,v1")
    session.close_log()
    return tmp_path / "t.durable.db"


def test_each_format_parses_back_with_the_same_rows(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "history", str(log), "--json")
    rows = json.loads(out)  # one array, not JSON lines
    assert code == 0 and isinstance(rows, list) and len(rows) == 4
    assert out.startswith("[{") and out.rstrip().endswith("}]") and len(out.splitlines()) == 4  # a row per line
    assert [r["state"] for r in rows] == ["recorded", "recorded", "failed", "replayed"]
    assert rows[0]["cell_name"] == "build,v1" and rows[0]["started_at"].endswith("Z")
    assert pd.Timestamp(rows[0]["started_at"]) == durable_nb.history(log)["started_at"][0].floor("us")
    columns = list(rows[0])
    assert columns == list(durable_nb.history(log).columns)

    code, out, _ = run(capsys, "history", str(log), "--nl")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4 and [json.loads(line) for line in lines] == rows

    code, out, _ = run(capsys, "history", str(log), "--csv")
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and list(parsed[0]) == columns and len(parsed) == 4
    assert parsed[0]["cell_name"] == "build,v1" and parsed[0]["started_at"] == rows[0]["started_at"]
    assert parsed[0]["error_type"] == "" and parsed[2]["error_type"] == "KeyError"

    code, out, _ = run(capsys, "history", str(log), "--tsv")
    parsed_tsv = list(csv.DictReader(io.StringIO(out), dialect="excel-tab"))
    assert code == 0 and parsed_tsv == parsed and "\t" in out.splitlines()[0]

    code, out, _ = run(capsys, "history", str(log), "--csv", "--no-headers", "--last", "1")
    assert code == 0 and next(csv.reader(io.StringIO(out)))[0] == str(rows[-1]["execution_id"])
    code, out, _ = run(capsys, "runs", str(log), "--nl", "--arrays")
    assert code == 0 and [json.loads(line)[0] for line in out.splitlines()] == [1, 2]

    code, out, _ = run(capsys, "activities", str(log), "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = run(capsys, "activities", str(log), "--csv")
    assert code == 0 and out.startswith("call_id,run_id,execution_id,function") and len(out.splitlines()) == 1


def test_fmt_styles_the_table_and_bad_combinations_are_usage_errors(log: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "runs", str(log), "--fmt", "github")
    assert code == 0 and out.startswith("| run ") and out.splitlines()[1].startswith("|--")
    for argv, message in [(["--fmt", "nope"], "is not a table style"), (["--json", "--fmt", "grid"], "--json"),
                          (["--csv", "--arrays"], "--arrays"), (["--json", "--csv"], "not allowed with")]:
        with pytest.raises(SystemExit) as exit_:
            main(["runs", str(log), *argv])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and "usage: durable-nb runs" in err, err


def _on_a_terminal(argv: list[str], cwd: Path) -> str:
    """What `durable-nb ARGV` prints when its stdout is a real pseudo-terminal (as in an interactive shell)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([DURABLE_NB, *argv], stdout=follower, stderr=subprocess.PIPE, cwd=cwd, env=env)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        assert ready, "durable-nb printed nothing on the terminal within 60 s"
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_a_terminal_gets_a_table_and_a_pipe_gets_json(log: Path) -> None:
    shown = _on_a_terminal(["history", str(log)], log.parent)
    assert shown.splitlines()[0].split()[:4] == ["id", "run", "cell", "state"], shown
    assert "ago" in shown or "just now" in shown
    piped = subprocess.run([DURABLE_NB, "history", str(log)], capture_output=True, text=True, timeout=60,
                           check=True).stdout
    assert [r["execution_id"] for r in json.loads(piped)] == [1, 2, 3, 4]
    queried = _on_a_terminal(["query", str(log), "SELECT run_id, count(*) AS n FROM executions GROUP BY run_id"],
                             log.parent)
    assert queried.split() == ["run_id", "n", "--------", "---", "1", "3", "2", "1"], queried


def test_query_formats_and_params(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT execution_id, cell_name, state FROM executions WHERE state = :state ORDER BY execution_id"
    code, out, _ = run(capsys, "query", str(log), sql, "-p", "state", "recorded")
    assert code == 0 and json.loads(out) == [{"execution_id": 1, "cell_name": "build,v1", "state": "recorded"},
                                             {"execution_id": 2, "cell_name": "double", "state": "recorded"}]
    code, out, _ = run(capsys, "query", str(log), sql, "--param", "state", "failed", "--csv")
    assert list(csv.reader(io.StringIO(out))) == [["execution_id", "cell_name", "state"], ["3", "broken", "failed"]]
    code, out, _ = run(capsys, "query", str(log), "SELECT execution_id FROM executions WHERE execution_id > :n",
                       "-p", "n", "2", "--nl", "--arrays")
    assert code == 0 and out.splitlines() == ["[3]", "[4]"]  # text '2' compared with an INTEGER column
    code, out, _ = run(capsys, "query", str(log), "SELECT a.run_id, b.run_id, x'00ff' AS raw FROM runs a "
                       "JOIN runs b USING (run_id) WHERE a.run_id = 1")
    assert json.loads(out) == [{"run_id": 1, "run_id_2": 1, "raw": {"$base64": True, "encoded": "AP8="}}]
    code, out, _ = run(capsys, "query", str(log), "SELECT name FROM pragma_table_info('executions') LIMIT 2",
                       "--tsv", "--no-headers")
    assert code == 0 and out.split() == ["execution_id", "run_id"]

    frame = durable_nb.query(sql, {"state": "recorded"}, log=log)
    assert frame.to_dict("records") == json.loads(run(capsys, "query", str(log), sql, "-p", "state",
                                                      "recorded")[1])
    assert durable_nb.query("SELECT count(*) AS n FROM runs WHERE run_id > ?", [1], log=log)["n"].tolist() == [1]
    assert durable_nb.query("SELECT * FROM executions WHERE 0", log=log).columns[0] == "execution_id"


WRITES = [
    ("DELETE FROM execution", "DELETE"),
    ("UPDATE execution SET state = 'recorded'", "UPDATE"),
    ("INSERT INTO run (uuid, started_at, host, pid) VALUES ('x', 0, 'h', 1)", "INSERT"),
    ("INSERT INTO run (uuid, started_at, host, pid) VALUES ('x', 0, 'h', 1) RETURNING id", "INSERT"),
    ("CREATE TABLE mine (a)", "CREATE"),
    ("DROP VIEW executions", "DROP"),
    ("PRAGMA query_only = OFF", "PRAGMA"),
    ("PRAGMA user_version = 7", "PRAGMA"),
    ("PRAGMA journal_mode = DELETE", "PRAGMA"),
    ("VACUUM", "VACUUM"),
    ("REINDEX", "REINDEX"),
    ("ATTACH DATABASE 'other.db' AS other", "ATTACH"),
    ("UPDATE sqlite_master SET sql = ''", "UPDATE"),
    ("  -- a comment first\n  delete from execution", "DELETE"),
]


@pytest.mark.parametrize(("sql", "keyword"), WRITES)
def test_query_refuses_every_write_and_changes_nothing(log: Path, sql: str, keyword: str,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(log.parent)
    before = fingerprint(log)
    # A reader of a WAL database may create its -shm/-wal companions; no other file may appear.
    files = {p.name for p in log.parent.iterdir()} | {f"{log.name}-shm", f"{log.name}-wal"}
    code, out, err = run(capsys, "query", str(log), sql)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"durable-nb query: {keyword} refused: ") and "was not changed" in err, err
    assert fingerprint(log) == before
    assert {p.name for p in log.parent.iterdir()} <= files, "the query created a file"
    with pytest.raises(DurableError, match="refused"):
        durable_nb.query(sql, log=log)
    assert fingerprint(log) == before


def test_query_errors_are_one_clear_line(log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (a)")
    conn.commit()
    conn.close()
    text = tmp_path / "notes.txt"
    text.write_text("not a database at all\n" * 200)
    cases = [
        ([str(log), "SELEC 1"], 'near "SELEC": syntax error'),
        ([str(log), "SELECT * FROM nowhere"], "no such table: nowhere"),
        ([str(log), "SELECT nope FROM executions"], "no such column: nope"),
        ([str(log), "SELECT 1; SELECT 2"], "one SQL statement at a time"),
        ([str(log), "SELECT :who"], "--param NAME VALUE"),
        ([str(log), ""], "no rows to show"),
        ([str(tmp_path / "missing.db"), "SELECT 1"], "does not exist"),
        ([str(text), "SELECT 1"], "not a SQLite file"),
        ([str(other), "SELECT 1"], "not a durable_nb log"),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, "query", *argv)
        assert code == 1 and out == "", argv
        assert err.startswith("durable-nb query: ") and message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "missing.db").exists()


def _notebook(folder: Path, *sources: str, parameters: str | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells += [nbformat.v4.new_code_cell(source) for source in sources]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.ipynb"
    nbformat.write(nb, path)
    return path


def _cli(argv: list[str], cwd: Path, secret: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **user_env(secret)}
    return subprocess.run([DURABLE_NB, *argv], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


@pytest.mark.integration
def test_every_exit_code_of_the_docs(log: Path, tmp_path: Path, secret: Path) -> None:
    """0, 1, 2 on a log; 3 and 4 from `run` on real kernels: a failing cell, then a kernel that dies."""
    docs = DOCS.read_text()
    for code in ("0", "1", "2", "3", "4", "130", "141"):  # 130 and 141: test_ctrl_c_is_130_and_...
        assert f"| `{code}` |" in docs, f"exit code {code} is not in docs/cli.md's table"
    assert _cli(["runs", str(log)], tmp_path, secret).returncode == 0
    missing = _cli(["history", str(tmp_path / "nowhere.db")], tmp_path, secret)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "does not exist" in missing.stderr
    usage = _cli(["history"], tmp_path, secret)
    assert usage.returncode == 2 and "usage: durable-nb history" in usage.stderr
    assert _cli(["frobnicate"], tmp_path, secret).returncode == 2

    failing = _notebook(tmp_path / "fails", "x = 1", "raise ValueError('no luck')")
    done = _cli(["run", str(failing)], failing.parent, secret)
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("durable-nb run: cell 2") and "ValueError" in done.stderr

    dying = _notebook(tmp_path / "dies", "x = 1", "import os\nos._exit(9)")
    done = _cli(["run", str(dying)], dying.parent, secret)
    assert done.returncode == 4, done.stderr
    assert "the kernel died" in done.stderr and "Traceback" not in done.stderr


def test_help_shows_the_documented_example_of_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    docs = DOCS.read_text()
    leaves = {name for name, sub in commands(build_parser())
              if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)}
    assert set(EXAMPLES) == leaves, "a command has no example, or an example no command"
    for name, example in EXAMPLES.items():
        with pytest.raises(SystemExit):
            main([*name.split(), "--help"])
        shown = capsys.readouterr().out
        assert f"example:\n  {example}\n" in shown, name
        section = docs.split(f"### durable-nb {name}\n", 1)[1].split("\n### ", 1)[0]
        assert f"Example: `{example}`" in section, f"docs/cli.md shows another example for durable-nb {name}"
        argv = shlex.split(example)
        assert argv[0] == "durable-nb"
        build_parser().parse_args(argv[1:])  # every example at least parses


LOCAL = ["history", "runs", "activities", "query", "show", "load", "diff", "status", "verify", "key", "trust add",
         "trust user", "trust list", "trust remove", "trust log", "export", "copy", "gc"]  # gc last: it changes the log


def _analysis_log(new_shell: Callable[[], Shell], folder: Path) -> Path:
    """The log the examples name: two recorded cells, one of them calling an activity."""
    log = folder / "analysis.durable.db"
    sh = new_shell()
    sh.run(f"%config DurableMagics.db = {str(log)!r}")
    sh.durable("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})", "--name load")
    sh.run("import durable_nb\n\n@durable_nb.activity()\ndef twice(x):\n    return 2 * x")
    sh.durable("total = twice(int(df['a'].sum()))", "--name total")
    session.close_log()
    return log


def _alice_signs(new_shell: Callable[[], Shell], log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pickled value in `log` signed by Alice (alice@laptop), and her public key in alice.pub beside it."""
    with monkeypatch.context() as as_alice:
        become(as_alice, log.with_name("alice-secret"), user="alice")
        as_alice.setenv("DURABLE_NB_HOST", "laptop")
        sh = new_shell()
        sh.run(f"%config DurableMagics.db = {str(log)!r}")
        sh.durable("class Point:\n    pass\np = Point()", "--name point")
        session.close_log()
        shutil.copy(log.with_name("alice-secret-keys") / "signing_key.pub", log.with_name("alice.pub"))


def test_every_local_example_runs(new_shell: Callable[[], Shell], tmp_path: Path, secret: Path,
                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The examples of the commands that need only a log, run as written against a log of that name."""
    monkeypatch.chdir(tmp_path)
    _alice_signs(new_shell, _analysis_log(new_shell, tmp_path), monkeypatch)
    for name in LOCAL:
        code, out, err = run(capsys, *shlex.split(EXAMPLES[name])[1:])
        assert code == 0, (name, err)
        assert out.strip(), f"durable-nb {name}'s example printed nothing"
    assert pd.read_parquet(tmp_path / "df.parquet")["a"].tolist() == [1, 2]
    assert (tmp_path / "share.durable.db").exists() and (tmp_path / "copy.durable.db").exists()
    # The others run in test_the_run_example_runs and test_the_s3_examples_run.
    assert set(EXAMPLES) - set(LOCAL) == {"run", "replicate", "restore", "fleet ls", "fleet pull"}


@pytest.mark.integration
def test_the_run_example_runs(tmp_path: Path, secret: Path) -> None:
    nb = _notebook(tmp_path, "print('rows', rows)", parameters="rows = 3")
    done = _cli(shlex.split(EXAMPLES["run"])[1:], tmp_path, secret)
    assert done.returncode == 0, done.stderr
    executed = nbformat.read(tmp_path / "job.out.ipynb", as_version=4)
    assert any("rows 100" in o.get("text", "") for c in executed.cells for o in c.get("outputs", [])), nb


@pytest.mark.integration
def test_the_s3_examples_run(new_shell: Callable[[], Shell], s3: S3Server, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """replicate, restore, fleet ls and fleet pull as written, on a real S3 server (its port for 9000)."""
    monkeypatch.chdir(tmp_path)
    _analysis_log(new_shell, tmp_path)
    s3.make_bucket("team-logs")

    def argv(name: str) -> list[str]:
        return shlex.split(EXAMPLES[name].replace("http://127.0.0.1:9000", s3.endpoint))[1:]

    replicating = subprocess.Popen([DURABLE_NB, *argv("replicate")], cwd=tmp_path, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: s3.client().list_objects_v2(Bucket="team-logs", Prefix="alice/").get("KeyCount", 0) > 0,
                 60, "the replicate example to upload the log")
    finally:
        replicating.send_signal(signal.SIGINT)
        _, err = replicating.communicate(timeout=60)
    assert replicating.returncode == 0, err

    code, out, _ = run(capsys, *argv("restore"))
    assert code == 0 and "into restored.durable.db" in out
    code, out, _ = run(capsys, "query", "restored.durable.db", "SELECT cell_name FROM executions", "--nl")
    assert code == 0 and [json.loads(line)["cell_name"] for line in out.splitlines()] == ["load", "total"]
    code, out, _ = run(capsys, *argv("fleet ls"))
    assert code == 0 and out.startswith("| log ") and "| alice/analysis.durable.db |" in out, out
    code, out, _ = run(capsys, "fleet", "ls", "s3://team-logs/", "--endpoint", s3.endpoint, "--json")
    listed = json.loads(out)
    assert [r["name"] for r in listed] == ["alice/analysis.durable.db"] and listed[0]["updated"].endswith("Z")
    assert main(argv("fleet pull")) == 0
    assert (tmp_path / "team" / "alice" / "analysis.durable.db").exists()


ENDLESS = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n"


def test_ctrl_c_is_130_and_a_closed_pipe_is_141_without_a_traceback(log: Path) -> None:
    interrupted = subprocess.Popen([DURABLE_NB, "query", str(log), ENDLESS, "--nl"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
    assert interrupted.stdout is not None and json.loads(interrupted.stdout.readline()) == {"i": 1}
    interrupted.send_signal(signal.SIGINT)
    _, err = interrupted.communicate(timeout=60)
    assert interrupted.returncode == 130 and b"Traceback" not in err, err

    reader_leaves = subprocess.Popen([DURABLE_NB, "query", str(log), ENDLESS], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
    assert reader_leaves.stdout is not None and reader_leaves.stdout.readline().startswith(b'[{"i": 1},')
    reader_leaves.stdout.close()  # as `| head -1` does after its line
    assert reader_leaves.wait(timeout=60) == 141
    assert reader_leaves.stderr is not None and reader_leaves.stderr.read() == b""


def test_query_starts_without_pandas(log: Path) -> None:
    probe = ("import sys, contextlib, io\nfrom durable_nb.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
             f"    assert main(['query', {str(log)!r}, 'SELECT count(*) FROM executions', '--csv']) == 0\n"
             "assert out.getvalue().splitlines()[1] == '4', out.getvalue()\n"
             "print(','.join(m for m in ('pandas', 'numpy', 'pyarrow', 'sqlite_utils', 'IPython') "
             "if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "", f"durable-nb query imported {done.stdout.strip()}"


def test_query_of_the_current_log_sees_what_this_process_deferred(new_shell: Callable[[], Shell],
                                                                  tmp_path: Path) -> None:
    sh = new_shell()
    sh.durable("x = 41 + 1", "--name answer")
    sh.durable("x = 41 + 1", "--name answer")  # a replay: its row is deferred, not yet committed
    sh.run("import durable_nb\nstates = durable_nb.query('SELECT state FROM executions ORDER BY 1')['state']")
    assert sh.ns["states"].tolist() == ["recorded", "replayed"]
    with pytest.raises(DurableError, match="DELETE refused"):
        sh.run("durable_nb.query('DELETE FROM execution')")
    assert len(durable_nb.history(tmp_path / "t.durable.db")) == 2
