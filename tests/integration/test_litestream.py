"""Real Litestream against a real rclone S3 server on 127.0.0.1: replicate, restore, outages, kills, fleet."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from s3server import S3Server, wait_for

from durable_nb.cli import main as cli_main
from durable_nb.fleets import fleet
from durable_nb.log.connect import connect, write_transaction
from durable_nb.replicate import ReplicationError, Replicator, restore, restore_if_missing

pytestmark = pytest.mark.integration
FAST = {"sync_interval": "100ms"}


class Writer:
    """Records executions the way a kernel does: one run, one transaction per execution."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = connect(path)
        with write_transaction(self.conn, path):
            cur = self.conn.execute(
                "INSERT INTO run (uuid, started_at, host, pid, python, platform) "
                "VALUES (?, ?, 'h', ?, '3', 'x')",
                (uuid.uuid4().hex, time.time(), os.getpid()),
            )
        self.run_id = cur.lastrowid
        self.count = 0

    def execute(self) -> float:
        """Commit one recorded execution; returns the commit time."""
        self.count += 1
        with write_transaction(self.conn, self.path):
            self.conn.execute(
                "INSERT INTO execution (run_id, cell_name, key, code, code_hash, state, started_at, duration)"
                " VALUES (?, ?, ?, ?, 'h', 'recorded', ?, 0.1)",
                (self.run_id, f"cell{self.count}", f"k{self.count}", f"x = {self.count}", time.time()),
            )
        return time.time()


def executions(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return int(conn.execute("SELECT count(*) FROM execution").fetchone()[0])
    finally:
        conn.close()


def restored_count(url: str, s3: S3Server, out: Path) -> int:
    """Executions in a fresh restore; -1 while the replica holds no backup yet or S3 is unreachable."""
    try:
        restore(url, out, endpoint=s3.endpoint, force=True)
    except ReplicationError:
        return -1
    return executions(out)


def test_replicate_then_restore_elsewhere(s3: S3Server, tmp_path: Path) -> None:
    log = tmp_path / "a" / "nb.durable.db"
    writer = Writer(log)
    url = "s3://test/replicate/nb.durable.db"
    rep = Replicator(log, url, endpoint=s3.endpoint, **FAST).start()
    try:
        config = next(Path(rep._config_dir or "").iterdir())
        assert config.stat().st_mode & 0o777 == 0o600
        assert s3.secret_key not in config.read_text() and s3.access_key not in config.read_text()
        commits = [writer.execute() for _ in range(20)]
        wait_for(lambda: (rep.status()["last_sync"] or 0) > commits[-1], 10, "a sync after the last commit")
        status = rep.status()
        assert status["running"] and status["pid"] and status["error"] is None
        assert 0 <= status["lag_seconds"] < 5, "the replica trails by about the monitor and sync intervals"
        synced_before = sum(1 for c in commits if c < status["last_sync"])
        out = tmp_path / "elsewhere" / "nb.durable.db"
        assert restore(url, out, endpoint=s3.endpoint)
        assert executions(out) >= synced_before == 20
        with pytest.raises(ReplicationError, match=r"already exists.*--force"):
            restore(url, out, endpoint=s3.endpoint)
        fresh = tmp_path / "fresh-machine" / "nb.durable.db"
        assert restore_if_missing(fresh, url, endpoint=s3.endpoint) and executions(fresh) >= 20
        assert not restore_if_missing(fresh, url, endpoint=s3.endpoint)
    finally:
        rep.stop()
    assert not rep.status()["running"] and rep.pid is None


def test_sigkilled_litestream_is_restarted_and_converges(s3: S3Server, tmp_path: Path) -> None:
    log = tmp_path / "nb.durable.db"
    writer = Writer(log)
    url = "s3://test/killed/nb.durable.db"
    rep = Replicator(log, url, endpoint=s3.endpoint, **FAST).start()
    try:
        wait_for(lambda: rep.pid is not None, 5, "litestream to start")
        first = rep.pid
        writer.execute()
        assert first is not None
        os.kill(first, signal.SIGKILL)
        for _ in range(10):
            writer.execute()
        wait_for(lambda: rep.pid not in (None, first), 10, "the supervisor to restart litestream")
        assert rep.status()["restarts"] == 1
        out = tmp_path / "restored.db"
        wait_for(lambda: restored_count(url, s3, out) == 11, 15, "the replica to hold all 11 executions")
    finally:
        rep.stop()


def test_s3_outage_never_blocks_writes_and_catches_up(s3: S3Server, tmp_path: Path) -> None:
    log = tmp_path / "nb.durable.db"
    writer = Writer(log)
    url = "s3://test/outage/nb.durable.db"
    rep = Replicator(log, url, endpoint=s3.endpoint, **FAST).start()
    try:
        writer.execute()
        wait_for(lambda: rep.status()["last_sync"] is not None, 10, "a first sync")
        s3.stop()
        slowest = 0.0
        for _ in range(10):
            t0 = time.perf_counter()
            writer.execute()
            slowest = max(slowest, time.perf_counter() - t0)
            time.sleep(0.2)
        assert slowest < 0.5, f"a write took {slowest:.2f} s while S3 was down"
        down = rep.status(probe=True)
        assert down["error"] and "cannot reach the S3 endpoint" in down["error"]
        assert down["lag_seconds"] is not None and down["lag_seconds"] > 1
        s3.start()
        out = tmp_path / "restored.db"
        wait_for(lambda: restored_count(url, s3, out) == 11, 60, "replication to catch up after the outage")
    finally:
        rep.stop()


def test_point_in_time_restore(s3: S3Server, tmp_path: Path) -> None:
    log = tmp_path / "nb.durable.db"
    writer = Writer(log)
    url = "s3://test/pitr/nb.durable.db"
    rep = Replicator(log, url, endpoint=s3.endpoint, **FAST).start()
    try:
        for _ in range(3):
            first = writer.execute()
        wait_for(lambda: (rep.status()["last_sync"] or 0) > first, 10, "the first rows to sync")
        time.sleep(1.0)
        middle = dt.datetime.now(dt.UTC)
        time.sleep(1.0)
        for _ in range(4):
            last = writer.execute()
        wait_for(lambda: (rep.status()["last_sync"] or 0) > last, 10, "the later rows to sync")
    finally:
        rep.stop()
    then, now = tmp_path / "then.db", tmp_path / "now.db"
    assert (
        cli_main(
            ["restore", url, "-o", str(then), "--endpoint", s3.endpoint, "--timestamp", middle.isoformat()]
        )
        == 0
    )
    assert executions(then) == 3
    assert restore(url, now, endpoint=s3.endpoint)
    assert executions(now) == 7


def test_fleet_ls_pull_history(s3: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = {"alice/train.durable.db": 2, "bob/train.durable.db": 3, "bob/eval.durable.db": 1}
    for name, count in names.items():
        log = tmp_path / "src" / name
        writer = Writer(log)
        for _ in range(count):
            last = writer.execute()
        rep = Replicator(log, f"s3://test/fleet/{name}", endpoint=s3.endpoint, **FAST).start()
        wait_for(lambda r=rep, t=last: (r.status()["last_sync"] or 0) > t, 10, f"{name} to sync")  # type: ignore[misc]
        rep.stop()
    observed = fleet("s3://test/fleet", endpoint=s3.endpoint)
    logs = observed.ls()
    assert [i.name for i in logs] == sorted(names)
    assert all(i.stored_bytes > 0 and i.url.startswith("s3://test/fleet/") for i in logs)
    assert all(abs((dt.datetime.now(dt.UTC) - i.updated).total_seconds()) < 120 for i in logs)
    pulled = observed.pull(tmp_path / "pulled", match=r"bob/*", progress=False)
    assert sorted(p.relative_to(tmp_path / "pulled").as_posix() for p in pulled) == [
        "bob/eval.durable.db",
        "bob/train.durable.db",
    ]
    history = observed.history()
    assert history.groupby("log").size().to_dict() == {"bob/eval.durable.db": 1, "bob/train.durable.db": 3}
    assert {"execution_id", "cell_name", "state"} <= set(history.columns)
    assert cli_main(["fleet", "ls", "s3://test/fleet", "--endpoint", s3.endpoint]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in names)
    assert (
        cli_main(
            [
                "fleet",
                "pull",
                "s3://test/fleet",
                "--match",
                "alice/*",
                "-o",
                str(tmp_path / "cli"),
                "--endpoint",
                s3.endpoint,
            ]
        )
        == 0
    )
    assert executions(tmp_path / "cli" / "alice" / "train.durable.db") == 2


OWNER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from durable_nb.replicate import Replicator
    rep = Replicator({log!r}, {url!r}, endpoint={endpoint!r}, sync_interval="100ms").start()
    while rep.status()["last_sync"] is None:
        time.sleep(0.05)
    print(rep.pid, flush=True)
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_sigkilled_owner_leaves_no_orphan(s3: S3Server, tmp_path: Path) -> None:
    log = tmp_path / "nb.durable.db"
    writer = Writer(log)
    writer.execute()
    url = "s3://test/orphan/nb.durable.db"
    script = OWNER.format(
        tests=str(Path(__file__).parent.parent), log=str(log), url=url, endpoint=s3.endpoint
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        litestream_pid = int(owner.stdout.readline())
        assert _alive(litestream_pid)
        for _ in range(5):
            writer.execute()
        time.sleep(1.0)  # 10 sync intervals: these rows are shipped; only the last interval is ever at risk
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        wait_for(lambda: not _alive(litestream_pid), 10, "litestream to exit after its owner was SIGKILLed")
    finally:
        owner.kill()
        owner.wait()
    out = tmp_path / "restored.db"
    assert restore(url, out, endpoint=s3.endpoint)
    assert executions(out) == 6


def test_clear_errors(s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "nb.durable.db"
    Writer(log).execute()
    out = tmp_path / "out.db"
    with pytest.raises(ReplicationError, match=r"bucket 'missing' does not exist.*Create it first"):
        restore("s3://missing/x", out, endpoint=s3.endpoint)
    rep = Replicator(log, "s3://missing/x", endpoint=s3.endpoint).start()
    try:
        wait_for(lambda: rep.status()["error"] is not None, 10, "the missing bucket to be reported")
        assert "bucket 'missing' does not exist" in rep.status()["error"]
    finally:
        rep.stop()
    with pytest.raises(ReplicationError, match=r"cannot reach the S3 endpoint http://127.0.0.1:9"):
        restore("s3://test/x", out, endpoint="http://127.0.0.1:9")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong" * 8)
    with pytest.raises(ReplicationError, match=r"rejected the credentials.*AWS_ACCESS_KEY_ID"):
        restore("s3://test/x", out, endpoint=s3.endpoint)
    assert cli_main(["restore", "s3://test/x", "-o", str(out), "--endpoint", s3.endpoint]) == 1
    assert not out.exists()
