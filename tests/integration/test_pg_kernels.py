"""Real kernels on one log on a real PostgreSQL: two "hosts" share it (DURABLE_NB_HOST, each with its own state
folder and secret), a SIGKILLed kernel's execution becomes crashed once its lease expires, a server restart in
mid-session loses nothing, and 8 kernels record at once without an error or a lost record.

`make torture` (DURABLE_NB_TORTURE=long) runs the concurrency test at full size: 8 kernels × 200 cells, each
cell calling an activity."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from backends import sql
from pg_server import PostgresServer, running_server
from test_activity_kernel import Kernel

pytestmark = pytest.mark.integration

LEASE = 3.0
DURABLE_NB = str(Path(sys.executable).with_name("durable-nb"))
LONG = os.environ.get("DURABLE_NB_TORTURE") == "long"


@pytest.fixture
def url(postgres: PostgresServer, pg_database: str) -> str:
    return postgres.url(pg_database, query="schema=team")


@pytest.fixture
def kernels() -> Iterator[list[Kernel]]:
    made: list[Kernel] = []
    yield made
    for k in made:
        k.close()


def host_env(tmp_path: Path, host: str, url: str) -> dict[str, str]:
    """A kernel as if on machine `host`: its name, its own local state (journals) and its user's secret and
    signing key."""
    folder = tmp_path / host
    folder.mkdir(exist_ok=True)
    return {"DURABLE_NB_DB": url, "DURABLE_NB_HOST": host, "XDG_STATE_HOME": str(folder / "state"),
            "DURABLE_NB_SECRET_FILE": str(folder / "secret"), "DURABLE_NB_KEYS_DIR": str(folder / "keys"),
            "DURABLE_NB_LEASE_SECONDS": str(LEASE), "PYTHONHASHSEED": "0"}


def start(kernels: list[Kernel], tmp_path: Path, env: dict[str, str]) -> Kernel:
    kernel = Kernel(tmp_path, env)
    kernels.append(kernel)
    kernel.run("%load_ext durable_nb")
    return kernel


def states(url: str) -> list[tuple[str, str]]:
    return [(str(name), str(state)) for name, state in sql(
        url, "SELECT cell_name, state FROM execution ORDER BY id")]


CELL = ("%%durable --name load\nimport numpy as np\nopen('runs.txt', 'a').write('load\\n')\n"
        "data = np.arange(100_000) * 3\n")
PICKLED = ("%%durable --name point\nopen('runs.txt', 'a').write('point\\n')\nclass Point:\n"
           "    def __reduce__(self):\n        return (open, ('unpickled.txt', 'w'))\np = Point()\n")


def test_two_hosts_share_one_log_safe_values_replay_foreign_pickles_run(tmp_path: Path, url: str,
                                                                         kernels: list[Kernel]) -> None:
    alice_env = host_env(tmp_path, "host-a", url)
    alice = start(kernels, tmp_path / "host-a", alice_env)
    alice.run(CELL)
    alice.run(PICKLED)
    bob_env = host_env(tmp_path, "host-b", url)
    bob = start(kernels, tmp_path / "host-b", bob_env)
    bob.run(CELL)
    assert bob.run("print(int(data.sum()))").strip() == str(sum(range(100_000)) * 3)
    bob.run(PICKLED)
    assert (tmp_path / "host-a" / "runs.txt").read_text().split() == ["load", "point"]
    assert (tmp_path / "host-b" / "runs.txt").read_text().split() == ["point"], \
        "bob replays alice's array and runs the cell whose value is a pickle he does not trust"
    assert not (tmp_path / "host-b" / "unpickled.txt").exists(), "a foreign pickle was never loaded"
    assert states(url) == [("load", "recorded"), ("point", "recorded"), ("load", "replayed"),
                           ("point", "recorded")]
    hosts = sql(url, "SELECT host FROM run ORDER BY id")
    assert hosts == [("host-a",), ("host-b",)]


def test_a_foreign_pickle_replays_once_its_signer_is_trusted(tmp_path: Path, url: str,
                                                              kernels: list[Kernel]) -> None:
    alice = start(kernels, tmp_path / "host-a", host_env(tmp_path, "host-a", url))
    alice.run(PICKLED)
    later = PICKLED.replace("--name point", "--name later").replace("p = Point()", "q = Point()")
    alice.run(later)
    bob_env = host_env(tmp_path, "host-b", url)
    bob = start(kernels, tmp_path / "host-b", bob_env)
    bob.run(PICKLED)
    assert not (tmp_path / "host-b" / "unpickled.txt").exists(), "a foreign pickle was never loaded"
    assert (tmp_path / "host-b" / "runs.txt").read_text().split() == ["point"]
    reason = sql(url, "SELECT reason FROM execution ORDER BY id DESC LIMIT 1")[0][0]
    assert "a key you do not trust" in reason and "@host-a" in reason, reason

    (name,) = [n for (n,) in sql(url, "SELECT name FROM signer") if n.endswith("@host-a")]
    review = subprocess.run([DURABLE_NB, "trust", "user", name, url], capture_output=True, text=True,
                            env={**os.environ, **bob_env}, timeout=120)
    assert review.returncode == 0, review.stderr
    assert f"{name} signed 4 pickled values" in review.stdout and "(cell later) variable q (Point)" in review.stdout
    bob.run(later)
    assert (tmp_path / "host-b" / "unpickled.txt").exists(), "once trusted, alice's pickle is loaded"
    assert (tmp_path / "host-b" / "runs.txt").read_text().split() == ["point"], "and her cell is not run"
    bob.run("from durable_nb import session\nsession.close_log()")  # a replay's row is written at the next commit
    assert states(url)[-1] == ("later", "replayed")


def test_sigkill_mid_cell_is_crashed_once_the_lease_expires(tmp_path: Path, url: str, kernels: list[Kernel],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from durable_nb import DurableLog

    victim = start(kernels, tmp_path, host_env(tmp_path, "host-a", url))
    victim.run("%%durable --name warm\nx = 1")
    victim.start("%%durable --name slow\nimport time\nbig = bytearray(50_000_000)\ntime.sleep(60)")
    deadline = time.monotonic() + 60
    while ("slow", "running") not in states(url):
        assert time.monotonic() < deadline, "the slow cell never started"
        time.sleep(0.05)
    victim.kill()
    victim.close()
    kernels.remove(victim)
    killed_at = time.monotonic()
    # This test process plays a kernel of another host, which cannot ask host-a whether the pid lives.
    monkeypatch.setenv("DURABLE_NB_HOST", "host-b")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "host-b-state"))
    with DurableLog(url, readonly=False):
        pass
    if time.monotonic() - killed_at < LEASE * 0.8:
        assert states(url)[-1] == ("slow", "running"), "within its lease a run is alive, wherever it runs"
    time.sleep(max(0.0, LEASE + 0.5 - (time.monotonic() - killed_at)))
    with DurableLog(url, readonly=False):
        pass
    assert states(url) == [("warm", "recorded"), ("slow", "crashed")]
    assert sql(url, "SELECT count(*) FROM output o JOIN execution e ON e.id = o.execution_id "
                    "WHERE e.cell_name = 'slow'") == [(0,)], "no half record"


def test_server_restart_mid_session_the_next_cell_records(tmp_path: Path, kernels: list[Kernel]) -> None:
    for server in running_server():
        server.create_database("team")
        url = server.url("team", query="schema=team")
        kernel = start(kernels, tmp_path, host_env(tmp_path, "host-a", url))
        kernel.run("%%durable --name one\nimport numpy as np\na = np.arange(1000)")
        kernel.run("import durable_nb\n@durable_nb.activity\ndef twice(x):\n    return 2 * x\n"
                   "before = [twice(i) for i in range(50)]")
        server.restart(mode="immediate")
        kernel.run("%%durable --name two\nb = a * 2")
        kernel.run("after = [twice(i) for i in range(50, 100)]\nfrom durable_nb.log.calls import flush\nflush()")
        assert kernel.run("print(int(b.sum()), sum(before) + sum(after))").split() == [
            str(2 * sum(range(1000))), str(2 * sum(range(100)))], "the user's variables stay in the kernel"
        assert states(url) == [("one", "recorded"), ("two", "recorded")]
        assert sql(url, "SELECT count(*) FROM activity_call WHERE state = 'recorded'") == [(100,)]


def test_torture_eight_kernels_record_at_once_without_error_or_loss(tmp_path: Path, url: str,
                                                            kernels: list[Kernel]) -> None:
    n_kernels, cells, calls = 8, (200 if LONG else 12), 10
    with ThreadPoolExecutor(n_kernels) as pool:
        started = list(pool.map(lambda i: Kernel(tmp_path, host_env(tmp_path, f"host-{i % 3}", url)),
                                range(n_kernels)))
    kernels.extend(started)
    setup = ("%load_ext durable_nb\nimport durable_nb\n@durable_nb.activity\ndef step(k, c, i):\n"
             "    return {'k': k, 'c': c, 'i': i}\n")

    def work(index: int) -> None:
        kernel = started[index]
        kernel.run(setup)
        for c in range(cells):
            kernel.run(f"%%durable --name k{index}c{c}\nrows_{c} = [step({index}, {c}, i) for i in range({calls})]\n"
                       f"total_{c} = len(rows_{c})")
        kernel.run("from durable_nb.log.calls import flush\nflush()")

    with ThreadPoolExecutor(n_kernels) as pool:
        list(pool.map(work, range(n_kernels)))  # a cell that fails raises here (Kernel.run checks the reply)
    assert sql(url, "SELECT state, count(*) FROM execution GROUP BY state") == [("recorded", n_kernels * cells)]
    assert sql(url, "SELECT state, count(*) FROM activity_call GROUP BY state") == [
        ("recorded", n_kernels * cells * calls)]
    assert sql(url, "SELECT count(*) FROM output WHERE name LIKE 'rows_%'") == [(n_kernels * cells,)]


def wait_for_record_transaction(server: PostgresServer, timeout: float = 60.0) -> None:
    """Until a kernel is inside a cell's record transaction, storing a value's chunks."""
    deadline = time.monotonic() + timeout
    with server.connect("team", autocommit=True) as conn:
        while time.monotonic() < deadline:
            (n,) = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'durable_nb' "
                                "AND xact_start IS NOT NULL AND query LIKE 'INSERT INTO chunk%'").fetchone()
            if n:
                return
            time.sleep(0.01)
    raise AssertionError("no kernel started storing its value's chunks")


def test_server_restart_inside_a_cells_record_transaction(tmp_path: Path, kernels: list[Kernel]) -> None:
    """The server restarts while a cell's outputs are being written (not between cells): the record is retried
    on a new connection, the user's variables stay, the next cell records, nothing recorded earlier is lost."""
    for server in running_server():
        server.create_database("team")
        url = server.url("team", query="schema=team")
        kernel = start(kernels, tmp_path, host_env(tmp_path, "host-a", url))
        kernel.run("%%durable --name one\nimport numpy as np\na = np.arange(1000)")
        # ~200 MB of random bytes: about a second of chunk inserts, long enough to restart the server inside it.
        kernel.start("%%durable --name big\nimport numpy as np\nbig = np.random.default_rng(0).random(25_000_000)")
        wait_for_record_transaction(server)
        server.restart(mode="immediate")
        reply = kernel.kc.get_shell_msg(timeout=180)
        assert reply["content"]["status"] == "ok", reply["content"]
        kernel.run("%%durable --name two\nb = a * 2")
        assert kernel.run("print(int(b.sum()), big.shape[0])").split() == [str(2 * sum(range(1000))), "25000000"]
        assert states(url) == [("one", "recorded"), ("big", "recorded"), ("two", "recorded")]
        assert sql(url, "SELECT cell_name, replayable, problems FROM execution WHERE cell_name = 'big'") == [
            ("big", 1, "[]")], "the record was written again, whole"
        assert sql(url, "SELECT count(*) FROM blob WHERE id NOT IN (SELECT blob_id FROM output_blob)") == [(0,)], \
            "the interrupted transaction left no blob behind"
        kernel.run("del big")
        kernel.run("%%durable --name big\nimport numpy as np\nbig = np.random.default_rng(0).random(25_000_000)")
        assert kernel.run("import durable_nb\nprint(durable_nb.history()['state'].iloc[-1])") == "replayed\n"
        assert kernel.run("print(big[:3].tolist() == np.random.default_rng(0).random(3).tolist())") == "True\n"
