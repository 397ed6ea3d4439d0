"""The read-only log endpoint behind the "Durable log" panel: path rules, data, and a real Jupyter server."""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest
from jupyterproc import running_jupyter
from pg_server import PostgresServer

from durable_nb import DurableLog
from durable_nb.log.current import log_path_for
from durable_nb.server import LogRequestError, read_log, resolve_under_root

SECRET_CODE = "token = 'do-not-leak'"


def write_log(location: Path | str, cells: list[tuple[str, str | None, str]], notebook: str = "nb.ipynb") -> None:
    """A log (a file or a postgresql:// URL) with one more run, of `notebook`, and one execution per (cell_id,
    cell_name, state), written through the schema."""
    now = time.time()
    with DurableLog(location, readonly=False) as log, log.transaction() as conn:
        (run_id,) = conn.execute("INSERT INTO run (uuid, started_at, host, pid, notebook, python, platform) "
                                 "VALUES (?, ?, 'testhost', 1, ?, '3.11', 'linux') RETURNING id",
                                 (uuid.uuid4().hex, now - 60, notebook)).fetchone()
        for n, (cell_id, name, state) in enumerate(cells):
            conn.execute(
                "INSERT INTO execution (run_id, cell_name, cell_id, execution_count, key, code, code_hash, "
                "state, started_at, duration, saved_seconds, reason) "
                "VALUES (?, ?, ?, ?, 'k', ?, 'h', ?, ?, 2.5, ?, ?)",
                (run_id, name, cell_id, n + 1, SECRET_CODE, state, now - 50 + n,
                 2.5 if state == "replayed" else None, "input df changed" if state == "recorded" and n else None))


def test_default_log_path_sits_next_to_the_notebook() -> None:
    assert log_path_for("dir/nb.ipynb") == Path("dir/nb.durable.db")
    assert log_path_for("nb.ipynb") == Path("nb.durable.db")
    assert log_path_for("dir/script.py") == Path("dir/script.py.durable.db")


def test_paths_outside_the_root_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside.durable.db").write_bytes(b"")
    (root / "link.durable.db").symlink_to(tmp_path / "outside.durable.db")
    assert resolve_under_root(root, "sub/a.durable.db") == (root / "sub/a.durable.db").resolve()
    for bad in ["../outside.durable.db", str(tmp_path / "outside.durable.db"), "link.durable.db"]:
        with pytest.raises(LogRequestError) as info:
            resolve_under_root(root, bad)
        assert info.value.status == 403
        assert "outside the Jupyter server root" in str(info.value)


def test_hidden_paths_follow_the_contents_manager_rule(tmp_path: Path) -> None:
    with pytest.raises(LogRequestError, match="hidden path"):
        resolve_under_root(tmp_path, ".secret/nb.durable.db")
    assert resolve_under_root(tmp_path, ".secret/nb.durable.db", allow_hidden=True).name == "nb.durable.db"


def test_missing_log_is_reported_not_created(tmp_path: Path) -> None:
    data = read_log(tmp_path, "dir/nb.ipynb", None)
    assert data == {"log": "dir/nb.durable.db", "exists": False, "runs": [], "executions": []}
    assert not (tmp_path / "dir").exists()


def test_reads_runs_and_executions_without_code(tmp_path: Path) -> None:
    write_log(tmp_path / "nb.durable.db", [("c1", "prep", "recorded"), ("c2", None, "replayed")])
    before = (tmp_path / "nb.durable.db").stat().st_mtime_ns
    data = read_log(tmp_path, "nb.ipynb", None)
    assert data["exists"] is True
    assert [r["executions"] for r in data["runs"]] == [2]
    rows = data["executions"]
    assert [(e["cell_id"], e["cell_name"], e["state"]) for e in rows] == [
        ("c1", "prep", "recorded"), ("c2", None, "replayed")]
    assert rows[1]["saved_seconds"] == 2.5
    assert all("code" not in e for e in rows)
    assert SECRET_CODE not in repr(data)
    assert (tmp_path / "nb.durable.db").stat().st_mtime_ns == before


def test_explicit_log_path_wins(tmp_path: Path) -> None:
    write_log(tmp_path / "logs" / "shared.durable.db", [("c9", "train", "failed")])
    data = read_log(tmp_path, "nb.ipynb", str(tmp_path / "logs" / "shared.durable.db"))
    assert data["log"] == "logs/shared.durable.db"
    assert [e["state"] for e in data["executions"]] == ["failed"]


def test_a_database_that_is_not_a_log_is_refused_untouched(tmp_path: Path) -> None:
    other = tmp_path / "nb.durable.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    before = other.read_bytes()
    with pytest.raises(LogRequestError) as info:
        read_log(tmp_path, "nb.ipynb", None)
    assert info.value.status == 422
    assert "not a durable_nb log" in str(info.value)
    assert other.read_bytes() == before


def test_a_newer_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nb.durable.db"
    write_log(path, [])
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migration VALUES (999, 'future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(LogRequestError) as info:
        read_log(tmp_path, "nb.ipynb", None)
    assert info.value.status == 409


def test_missing_parameters_are_a_clear_400(tmp_path: Path) -> None:
    with pytest.raises(LogRequestError, match=r"\?notebook=PATH") as info:
        read_log(tmp_path, "", None)
    assert info.value.status == 400


@pytest.mark.integration
def test_endpoint_in_a_real_jupyter_server(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    write_log(root / "dir" / "nb.durable.db", [("c1", "prep", "replayed")])
    write_log(tmp_path / "outside.durable.db", [("c2", "x", "recorded")])
    with running_jupyter("server", root, tmp_path / "logs") as jupyter:
        query = "/durable-nb/api/log?" + urllib.parse.urlencode({"notebook": "dir/nb.ipynb"})
        status, _ = jupyter.get(query, auth=False)
        assert status == 403, "the endpoint must sit behind Jupyter's own authentication"
        status, data = jupyter.get(query)
        assert status == 200
        assert data["log"] == os.path.join("dir", "nb.durable.db")
        assert [e["cell_id"] for e in data["executions"]] == ["c1"]  # type: ignore[union-attr]
        # While a kernel has the log open, its -wal and -shm files stay on disk (Litestream reads them) but out
        # of the file browser.
        for suffix in ("-wal", "-shm"):
            (root / "dir" / f"nb.durable.db{suffix}").write_bytes(b"")
        status, listing = jupyter.get("/api/contents/dir")
        assert status == 200
        assert sorted(c["name"] for c in listing["content"]) == ["nb.durable.db"]  # type: ignore[index]
        outside = "/durable-nb/api/log?" + urllib.parse.urlencode(
            {"notebook": "dir/nb.ipynb", "log": str(tmp_path / "outside.durable.db")})
        status, data = jupyter.get(outside)
        assert status == 403
        assert "outside the Jupyter server root" in str(data["message"])


@pytest.mark.integration
def test_the_panel_reads_a_postgres_log_as_it_reads_a_file(tmp_path: Path, postgres: PostgresServer,
                                                          pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server runs with DURABLE_NB_DB=postgresql://... (its kernels record there): the panel's endpoint
    answers the same cell states as for the notebook's SQLite file, only this notebook's runs, no password."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # what this machine keeps for a team log
    cells = [("c1", "prep", "recorded"), ("c2", None, "replayed"), ("c3", "fit", "failed")]
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    write_log(root / "dir" / "nb.durable.db", cells, notebook="dir/nb.ipynb")
    # Trusted over 127.0.0.1, the superuser's password is never checked: it is here to be kept out of answers.
    team = postgres.url(pg_database, password="pw-do-not-show", query="schema=team")
    write_log(team, [("c9", "theirs", "recorded")], notebook="other.ipynb")  # a teammate's notebook, same schema
    write_log(team, cells, notebook="dir/nb.ipynb")
    monkeypatch.setenv("DURABLE_NB_DB", team)
    with running_jupyter("server", root, tmp_path / "logs") as jupyter:
        status, from_pg = jupyter.get("/durable-nb/api/log?" + urllib.parse.urlencode({"notebook": "dir/nb.ipynb"}))
        assert status == 200, from_pg
        status, from_file = jupyter.get("/durable-nb/api/log?" + urllib.parse.urlencode(
            {"notebook": "dir/nb.ipynb", "log": "dir/nb.durable.db"}))
        assert status == 200, from_file
        status, refused = jupyter.get("/durable-nb/api/log?" + urllib.parse.urlencode(
            {"notebook": "dir/nb.ipynb", "log": postgres.url(pg_database, query="schema=elsewhere")}))
        assert status == 403 and "DURABLE_NB_DB" in str(refused["message"])
        status, other = jupyter.get("/durable-nb/api/log?" + urllib.parse.urlencode({"notebook": "other.ipynb"}))
        assert status == 200 and [e["cell_id"] for e in other["executions"]] == ["c9"]

    def states(data: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(e["cell_id"], e["cell_name"], e["state"], e["saved_seconds"]) for e in data["executions"]]

    assert from_pg["exists"] is True and states(from_pg) == states(from_file) and len(states(from_pg)) == 3
    assert [r["executions"] for r in from_pg["runs"]] == [r["executions"] for r in from_file["runs"]] == [3]
    assert set(from_pg["executions"][0]) == set(from_file["executions"][0])
    assert from_pg["log"].endswith("?schema=team") and "pw-do-not-show" not in repr(from_pg)
    assert SECRET_CODE not in repr(from_pg)
