"""History as data: the pandas views, time travel, diff, timeline, magics, export and gc, on logs written by
real IPython shells (a crash is a real process killed mid-cell)."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from backends import columns, is_postgres, only, sql
from history_logs import synthetic_log
from shells import Shell, become, user_env

import durable_nb
from durable_nb import DurableLog, session, views
from durable_nb.errors import NewerLogError, NotALogError, NotRecordedError, UntrustedError
from durable_nb.log.maintenance import export, gc
from durable_nb.vocabulary import LOOKS

DOCS = Path(__file__).parents[1] / "docs" / "schema.md"
BOTH_BACKENDS = True


def fingerprint(path: Path) -> tuple[str, int]:
    """Content hash and mtime of a log and its WAL: what "nothing was written" means (on PostgreSQL: every row
    of its tables, and the database's count of committed writes to them)."""
    if is_postgres(path):
        rows = [sql(path, f"SELECT * FROM {table} ORDER BY 1") for table in ("run", "execution", "output", "event",
                                                                           "activity_call", "blob")]
        (writes,) = sql(path, "SELECT sum(n_tup_ins + n_tup_upd + n_tup_del) FROM pg_stat_user_tables")[0]
        return hashlib.sha256(repr(rows).encode()).hexdigest(), int(writes)
    digest = hashlib.sha256()
    for p in (path, path.with_name(path.name + "-wal")):
        if p.exists():
            digest.update(p.read_bytes())
    return digest.hexdigest(), path.stat().st_mtime_ns


def crash_in_cell(db: Path) -> None:
    """A real process starts a durable execution and dies without finishing it (os._exit)."""
    code = ("import os\nfrom durable_nb import DurableLog\nfrom durable_nb.log import cells\n"
            f"log = DurableLog({str(db)!r}, readonly=False)\n"
            "log.start_execution(cells.ExecutionStart('train', None, 1, 'k-crash', 'model = fit()', 'h', {}, {}, "
            "None))\n"
            "os._exit(9)\n")
    subprocess.run([sys.executable, "-c", code], check=False, timeout=60)


@pytest.fixture
def story(new_shell: Callable[[], Shell], log_location: Path) -> Path:
    """Two kernels on one log: recorded, re-run on a changed input, failed, crashed, then a replay."""
    sh = new_shell()
    sh.durable("import time\ntime.sleep(0.3)\nn = 3\nrows = list(range(n))\nprint('loaded', len(rows))", "--name load")
    sh.durable("total = sum(rows)\nsame = rows", "--name total")
    sh.run("rows = [10, 20]")
    sh.durable("total = sum(rows)\nsame = rows", "--name total")
    with pytest.raises(ZeroDivisionError):
        sh.durable("ratio = total / 0", "--name ratio")
    session.close_log()
    db = log_location
    crash_in_cell(db)
    sh2 = new_shell()
    sh2.durable("import time\ntime.sleep(0.3)\nn = 3\nrows = list(range(n))\nprint('loaded', len(rows))", "--name load")
    sh2.run("tmp = 1")
    sh2.durable("del tmp\nscratch = 5", "--name cleanup")
    session.close_log()
    return db


def test_history_has_every_state_with_utc_times_reasons_and_names(story: Path) -> None:
    h = views.history(story)
    assert list(h["state"]) == ["recorded", "recorded", "recorded", "failed", "crashed", "replayed", "recorded"]
    assert str(h["started_at"].dtype) == "datetime64[ns, UTC]" and str(h["finished_at"].dtype).endswith("UTC]")
    assert h["started_at"].is_monotonic_increasing
    by_id = h.set_index("execution_id")
    assert by_id.loc[3, "reason"] == "input rows changed"
    assert by_id.loc[1, "outputs"] == "n, rows, time" and by_id.loc[3, "inputs"] == "rows"
    assert by_id.loc[4, "error_type"] == "ZeroDivisionError" and "division" in by_id.loc[4, "error_message"]
    replay = by_id.loc[6]
    assert replay["replayed_from"] == 1 and replay["saved_seconds"] >= 0 and replay["outputs"] == "n, rows, time"
    assert by_id.loc[1, "bytes_stored"] > 0 and bool(by_id.loc[1, "replayable"])
    assert pd.isna(by_id.loc[5, "finished_at"]) and by_id.loc[5, "cell_name"] == "train"
    assert list(views.history(story, state="failed")["execution_id"]) == [4]
    assert list(views.history(story, cell="total")["execution_id"]) == [2, 3]
    assert list(views.history(story, last=2)["execution_id"]) == [6, 7]


def test_runs_activities_outputs(story: Path) -> None:
    r = views.runs(story)
    assert list(r["run_id"]) == [1, 2, 3]
    assert list(r["executions"]) == [4, 1, 2] and list(r["crashed"]) == [0, 1, 0] and list(r["replayed"]) == [0, 0, 1]
    assert str(r["started_at"].dtype) == "datetime64[ns, UTC]"
    assert views.activities(story).empty and "retries" in views.activities(story).columns
    out = views.outputs(3, story).set_index("name")
    assert out.loc["total", "codec"] == "json" and out.loc["same", "kind"] == "alias"
    assert out.loc["same", "target"] == "rows"
    replay = views.outputs(6, story)
    assert set(replay["name"]) == {"n", "rows", "time"} and set(replay["execution_id"]) == {1}
    with pytest.raises(NotRecordedError, match="execution 99 is not in"):
        views.outputs(99, story)


def test_documented_views_exist_and_match_the_pandas_columns(story: Path) -> None:
    documented: dict[str, list[str]] = {}
    view = None
    for line in DOCS.read_text().splitlines():
        heading = re.match(r"^### `(\w+)`", line)
        if heading:
            view = heading.group(1)
            documented[view] = []
        row = re.match(r"^\| `(\w+)` \|", line)
        if row and view:
            documented[view].append(row.group(1))
    for name, documented_columns in documented.items():
        assert columns(story, name) == documented_columns, name
    frames = {"executions": views.history(story), "runs": views.runs(story),
              "activities": views.activities(story), "outputs": views.outputs(1, story)}
    for name, frame in frames.items():
        assert list(frame.columns) == documented[name], name
    assert set(documented) == {"executions", "runs", "activities", "attempts", "outputs"}


def test_load_travels_in_time_without_touching_the_namespace(story: Path, new_shell: Callable[[], Shell]) -> None:
    assert views.load("total", log=story) == 30
    assert views.load("total", execution=2, log=story) == 3
    assert views.load("rows", run=1, log=story) == [0, 1, 2]
    at = views.history(story).set_index("execution_id").loc[2, "finished_at"]
    assert views.load("total", at=at.to_pydatetime(warn=False), log=story) == 3
    assert views.load("total", at=at.isoformat(), log=story) == 3
    assert views.load("same", execution=2, log=story) == [0, 1, 2], "an alias loads its target's value"
    with pytest.raises(NotRecordedError, match=r"variable tmp \(execution 7 .*was deleted"):
        views.load("tmp", log=story)
    with pytest.raises(NotRecordedError, match="variable ratio was never recorded"):
        views.load("ratio", log=story)
    with pytest.raises(NotRecordedError, match="run 9 is not in"):
        views.load("total", run=9, log=story)
    sh = new_shell()
    sh.run("total = 'mine'")
    assert durable_nb.load("total", execution=2) == 3 and sh.ns["total"] == "mine"


def test_untrusted_pickle_is_refused_and_never_unpickled(new_shell: Callable[[], Shell], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         log_location: Path) -> None:
    marker = tmp_path / "unpickled.txt"
    sh = new_shell()
    sh.run(f"class Box:\n    def __init__(self, v):\n        self.v = v\n    def __reduce__(self):\n"
           f"        import pathlib\n        return (pathlib.Path.touch, (pathlib.Path({str(marker)!r}),))\n")
    sh.durable("box = Box(1)", "--name box")
    session.close_log()
    marker.unlink(missing_ok=True)
    become(monkeypatch, tmp_path / "another-user-secret")
    db = log_location
    with pytest.raises(UntrustedError, match="durable-nb trust "):
        views.load("box", log=db)
    if not is_postgres(db):
        export(db, tmp_path / "copy.db")
    assert not marker.exists()


def test_diff_between_executions_and_runs(story: Path) -> None:
    d = views.diff(2, 3, log=story)
    frame = d.to_frame()
    assert {("input", "rows", "changed"), ("output", "total", "changed")} <= set(
        zip(frame["what"], frame["name"], frame["change"], strict=True))
    assert "code" not in set(frame["what"])
    code = views.diff(1, 2, log=story)
    assert "-n = 3" in code.code["total"] and "+total = sum(rows)" in code.code["total"]
    runs = views.diff(1, 3, by="run", log=story)
    text = str(runs)
    assert "cleanup: only in run 3" in text and "ratio: only in run 1" in text and "load: state recorded → replayed" \
        in text
    assert not views.diff(1, 1, log=story) and "no differences" in str(views.diff(1, 1, log=story))


def test_durable_log_object_has_the_same_methods(story: Path) -> None:
    before = fingerprint(story)
    with DurableLog(story, readonly=True) as log:
        pd.testing.assert_frame_equal(log.history(), views.history(story))
        assert log.load("total", execution=2) == 3
        assert bool(log.diff(2, 3))
        assert log.status().executions["recorded"] == 4
    assert fingerprint(story) == before


@only("sqlite", reason="files that are not logs, or of a newer schema: SQLite files (PostgreSQL: test_pg_store)")
def test_bad_logs_give_clear_errors_and_stay_untouched(tmp_path: Path, story: Path) -> None:
    with pytest.raises(NotALogError, match="does not exist"):
        views.history(tmp_path / "missing.durable.db")
    text = tmp_path / "notes.txt"
    text.write_text("not a database " * 100)
    before = fingerprint(text)
    with pytest.raises(NotALogError, match="not a SQLite file"):
        views.history(text)
    assert fingerprint(text) == before
    newer = tmp_path / "newer.durable.db"
    newer.write_bytes(story.read_bytes())
    with sqlite3.connect(newer) as conn:
        conn.execute("INSERT INTO schema_migration VALUES (99, 'future', 0)")
    conn.close()
    before = fingerprint(newer)
    with pytest.raises(NewerLogError, match="schema version 99"):
        views.runs(newer)
    assert fingerprint(newer) == before


def test_reading_a_log_writes_nothing(story: Path) -> None:
    before = fingerprint(story)
    for read in (views.history, views.runs, views.activities, views.status):
        read(story)
    views.load("total", log=story)
    views.diff(1, 3, by="run", log=story)
    views.timeline(story)
    assert fingerprint(story) == before


def test_magics_history_table_and_status_write_nothing(story: Path, new_shell: Callable[[], Shell],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    sh = new_shell()
    before = fingerprint(story)
    sh.run("%durable_history --last 3")
    html = sh.displays[-1]["text/html"]
    assert html.count("<tr>") == 4 and "replayed" in html and "cleanup" in html and "saved" in html
    sh.run("%durable_history --failed")
    html = sh.displays[-1]["text/html"]
    assert "ZeroDivisionError" in html and "crashed" in html and "recorded</span>" not in html
    sh.run("%durable_history --cell total")
    assert sh.displays[-1]["text/html"].count("<tr>") == 3
    capsys.readouterr()
    sh.run("%durable_status")
    out = capsys.readouterr().out
    assert str(story) in out and "schema:     version" in out
    assert "4 recorded · 1 replayed · 1 failed · 1 crashed" in out and "runs:       3" in out
    assert fingerprint(story) == before, "inspecting the log registered no run and wrote nothing"
    with pytest.raises(Exception, match="--last -1"):
        sh.run("%durable_history --last -1")


def test_timeline_small_log_png_has_lanes_states_and_savings(story: Path, tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    fig = views.timeline(story)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["load", "total", "ratio", "train", "cleanup"]
    (legend_box,) = fig.legends
    legend = [t.get_text() for t in legend_box.get_texts()]
    assert legend == ["recorded", "replayed", "failed", "crashed", "time saved by replay"]
    assert "7 executions in 3 runs" in ax.get_title(loc="left")
    assert any(t.get_text().startswith("saved ") for t in ax.texts)
    png = tmp_path / "timeline.png"
    fig.savefig(png, dpi=60)
    pixels = (mpimg.imread(png)[:, :, :3] * 255).round().astype(int)
    for color in (LOOKS[s].colour for s in ("recorded", "replayed", "failed", "crashed")):
        rgb = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
        assert ((abs(pixels - rgb).sum(axis=2)) < 12).sum() > 5, f"no {color} pixels in the timeline"


def test_timeline_reads_well_with_5000_executions(tmp_path: Path) -> None:
    db = synthetic_log(tmp_path / "big.durable.db", 5000, cells=60, runs=8)
    t0 = time.perf_counter()
    fig = views.timeline(db)
    fig.savefig(tmp_path / "big.png", dpi=60)
    elapsed = time.perf_counter() - t0
    ax = fig.axes[0]
    assert len(ax.collections) <= 6, "one collection per state, not one patch per bar"
    assert len(ax.get_yticklabels()) <= 40, "lane labels are thinned"
    assert not ax.texts, "no per-bar annotations at this scale"
    assert "5,000 executions in 8 runs" in ax.get_title(loc="left")
    assert elapsed < 20, f"the timeline took {elapsed:.1f} s"


def test_export_copies_what_is_needed_and_never_writes_the_source(story: Path, tmp_path: Path) -> None:
    before = fingerprint(story)
    full = export(story, tmp_path / "full.db")
    assert full.executions == 7 and full.target_bytes < full.source_bytes
    assert fingerprint(story) == before
    pd.testing.assert_frame_equal(views.history(full.target), views.history(story))
    latest = export(story, tmp_path / "small.db", latest_only=True)
    small = views.history(latest.target)
    assert list(small["execution_id"]) == [1, 2, 3, 7] and set(small["state"]) == {"recorded"}
    assert views.load("total", log=latest.target) == 30
    with sqlite3.connect(latest.target) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        orphans = conn.execute("SELECT count(*) FROM blob WHERE id NOT IN (SELECT blob_id FROM output_blob)")
        assert orphans.fetchone()[0] == 0
    conn.close()
    with pytest.raises(Exception, match="already exists"):
        export(story, tmp_path / "small.db")
    assert "saved" in latest.summary()
    assert export(story, tmp_path / "small.db", force=True).executions == 7


def test_gc_drops_superseded_executions_and_blobs_and_keeps_replays(new_shell: Callable[[], Shell],
                                                                   log_location: Path) -> None:
    import numpy as np

    sh = new_shell()
    for seed in range(4):
        sh.run(f"seed = {seed}")
        sh.durable("import numpy as np\narr = np.random.default_rng(seed).random(300_000)", "--name sample")
    sh.durable("keep = 1", "--name other")
    session.close_log()
    db = log_location
    result = gc(db, keep_last=1)
    assert result.executions == 3 and result.blobs == 3 and result.freed_bytes >= 3 * 2_000_000
    assert list(views.history(db)["execution_id"]) == [4, 5]
    if is_postgres(db):
        assert "autovacuum" in result.summary() and "password" not in result.summary()
        assert sql(db, "SELECT count(*) FROM chunk WHERE blob_id NOT IN (SELECT id FROM blob)") == [(0,)]
    else:
        assert "sqlite3" in result.summary() and "VACUUM" in result.summary()
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
    sh = new_shell()
    sh.run("seed = 3")
    sh.durable("import numpy as np\narr = np.random.default_rng(seed).random(300_000)", "--name sample")
    assert sh.last_status()["state"] == "replayed"
    assert np.array_equal(sh.ns["arr"], np.random.default_rng(3).random(300_000))
    session.close_log()
    assert gc(db, keep_last=1).executions == 0, "the replay and its source are both kept"


def test_history_equals_the_sql_view_row_for_row(story: Path, tmp_path: Path) -> None:
    """history() computes inputs/outputs in bulk rather than through the view's subqueries: same data."""
    big = synthetic_log(tmp_path / "big.durable.db", 12_000, cells=30, runs=4)
    for db in (story, big):
        fast = views.history(db)
        with DurableLog(db, readonly=True) as log:
            slow = views._frame(log, "executions", order="execution_id")
        pd.testing.assert_frame_equal(fast, slow, check_dtype=False)
    assert list(views.history(big, last=3)["outputs"]) == list(views.history(big)["outputs"].tail(3))


@pytest.mark.integration
def test_inspect_history_notebook_runs_on_a_real_kernel(tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    source = Path(__file__).parents[1] / "example_notebooks" / "inspect_history.ipynb"
    nb = nbformat.read(source, as_version=4)  # type: ignore[no-untyped-call]
    env = {**os.environ, **user_env(tmp_path / "secret")}
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    old = dict(os.environ)
    os.environ.update(env)
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    text = "\n".join(o.get("text", "") if o["output_type"] == "stream" else
                     str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "big had 19 rows at execution 2, 29 now" in text
    assert "input threshold changed" in text and "failed as expected" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the timeline is shown"
    assert any("durable-history" in o.get("data", {}).get("text/html", "") for o in outputs)
    assert "{'recorded': 3, 'replayed': 1, 'failed': 1" in text
    assert views.history(tmp_path / "inspect_history.durable.db")["state"].tolist() == [
        "recorded", "recorded", "recorded", "failed", "replayed"]


def test_public_history_names_stay_functions_after_other_imports() -> None:
    """A submodule named like a public function (durable_nb.history, durable_nb.activities...) would replace the
    function on the package as soon as it is imported."""
    import types

    import durable_nb

    for other in ("activity", "step", "open_log", "DurableLog"):
        getattr(durable_nb, other)
    for name in ("history", "runs", "activities", "outputs", "load", "diff", "timeline", "export"):
        value = getattr(durable_nb, name)
        assert callable(value) and not isinstance(value, types.ModuleType), f"durable_nb.{name} is a module"


def test_timeline_crash_ends_at_its_runs_last_sign_of_life_beside_its_rerun(tmp_path: Path) -> None:
    """A crashed execution is drawn up to the last thing its run recorded, not over the next run's re-run of
    the same cell; the legend sits outside the plot area."""
    from matplotlib.collections import PolyCollection

    db = tmp_path / "crash.durable.db"
    t0 = 1_780_000_000.0
    with DurableLog(db, readonly=False) as log, log.transaction() as conn:
        conn.executemany("INSERT INTO run (id, uuid, started_at, host, pid, python, platform) "
                         "VALUES (?, ?, ?, 'h', ?, '3.11', 'linux')", [(1, "a", t0, 1), (2, "b", t0 + 600, 2)])
        rows = [(1, 1, "load", "recorded", t0, t0 + 10, 10.0), (2, 1, "train", "crashed", t0 + 10, None, None),
                (3, 2, "train", "recorded", t0 + 600, t0 + 660, 60.0)]
        conn.executemany("INSERT INTO execution (id, run_id, cell_name, key, code, code_hash, state, started_at, "
                         "finished_at, duration) VALUES (?, ?, ?, 'k', 'c', 'h', ?, ?, ?, ?)", rows)
        # The crashed run's last sign of life: an activity call the cell finished 40 s in.
        conn.execute("INSERT INTO activity_call (uid, run_id, execution_id, function, key, occurrence, state, "
                     "started_at, finished_at, attempt_started_at) VALUES ('u', 1, 2, 'm.step', 'k', 0, "
                     "'recorded', ?, ?, ?)", (t0 + 20, t0 + 50, t0 + 20))
    fig = views.timeline(db)
    ax = fig.axes[0]
    bars = {c.get_label(): c for c in ax.collections if isinstance(c, PolyCollection)}
    (crashed,) = bars["crashed"].get_paths()
    left, right = crashed.vertices[:, 0].min(), crashed.vertices[:, 0].max()
    assert (left, right) == (10.0, 50.0), "from its start to the run's last recorded instant"
    reran = [p.vertices[:, 0].min() for p in bars["recorded"].get_paths()]
    assert 600.0 in reran and right < 600.0, "the re-run is beside the crash, not under it"
    assert ax.get_legend() is None and len(fig.legends) == 1
    fig.canvas.draw()
    outside = fig.legends[0].get_window_extent().y1 <= ax.get_window_extent().y0
    assert outside, "the legend is below the plot area, never over the bars"
