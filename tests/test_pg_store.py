"""What only a log on PostgreSQL has: blobs shared by the logs of a database, the schema's version checks, a
password that never reaches the log, leases, and the current-log rules taking a URL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from backends import sql
from pg_server import PASSWORD_ROLE, PostgresServer
from shells import Shell

from durable_nb import DurableLog, session
from durable_nb.errors import LogError, LogTransactionLost, NewerLogError, NotALogError
from durable_nb.log import current, pg_schema, schema
from durable_nb.log.cells import ExecutionStart


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
def database(postgres: PostgresServer, pg_database: str) -> str:
    return pg_database


def url(server: PostgresServer, dbname: str, schema_name: str) -> str:
    return server.url(dbname, query=f"schema={schema_name}")


def test_same_schema_version_as_sqlite_and_the_same_documented_views(postgres: PostgresServer,
                                                                      database: str) -> None:
    assert [m.version for m in pg_schema.MIGRATIONS] == [m.version for m in schema.MIGRATIONS]
    with DurableLog(url(postgres, database, "a"), readonly=False) as log:
        assert log.status().schema_version == schema.SCHEMA_VERSION


def test_a_value_stored_by_two_logs_of_one_database_is_stored_once(postgres: PostgresServer,
                                                                    database: str) -> None:
    data = np.random.default_rng(1).random(3_000_000)  # 24 MB: 3 chunks
    ids = []
    for name in ("alice", "bob"):
        with DurableLog(url(postgres, database, name), readonly=False) as log:
            with log.transaction():
                ids.append(log.blobs.sink().put(data))
            out = np.empty_like(data)
            log.blobs.source(ids[-1]).readinto(memoryview(out).cast("B"))
            assert (out == data).all()
    assert ids[0] == ids[1]
    assert sql(url(postgres, database, "alice"), "SELECT count(*), sum(chunk_count) FROM blob") == [(1, 3)]


def test_kernels_storing_the_same_bytes_at_once_store_them_once(postgres: PostgresServer, database: str) -> None:
    data = np.random.default_rng(2).bytes(20_000_000)
    logs = [DurableLog(url(postgres, database, f"k{i}"), readonly=False) for i in range(4)]
    barrier = threading.Barrier(len(logs))
    found: list[int] = []

    def store(log: DurableLog) -> None:
        with log.transaction():
            barrier.wait()
            found.append(log.blobs.sink().put(data))

    threads = [threading.Thread(target=store, args=(log,)) for log in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        log.close()
    assert len(found) == 4 and len(set(found)) == 1
    assert sql(url(postgres, database, "k0"), "SELECT count(*) FROM blob") == [(1,)]


def test_two_kernels_locking_two_blobs_in_opposite_orders_lose_one_transaction_to_retry(
        postgres: PostgresServer, database: str) -> None:
    """The riskiest lock pattern of the backend: a blob is claimed under its hash's advisory lock until commit,
    and two cells may store the same two values in opposite orders. The server breaks the deadlock by aborting
    one transaction: that one is LogTransactionLost (what the cell runtime writes again), the other commits,
    and the retry stores nothing twice."""
    first, second = (np.random.default_rng(seed).bytes(1_000_000) for seed in (3, 4))
    logs = [DurableLog(url(postgres, database, f"k{i}"), readonly=False) for i in range(2)]
    barrier = threading.Barrier(2)
    outcomes: dict[int, object] = {}

    def store(n: int, values: tuple[bytes, bytes]) -> None:
        try:
            with logs[n].transaction():
                sink = logs[n].blobs.sink()
                sink.put(values[0])
                barrier.wait()
                sink.put(values[1])  # waits for the other's lock: a deadlock, until the server breaks it
            outcomes[n] = "committed"
        except LogTransactionLost as exc:
            outcomes[n] = exc

    threads = [threading.Thread(target=store, args=(0, (first, second))),
               threading.Thread(target=store, args=(1, (second, first)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert sorted(map(str, outcomes.values())).count("committed") == 1, outcomes
        (victim,) = [n for n, outcome in outcomes.items() if outcome != "committed"]
        assert "deadlock" in str(outcomes[victim]) and "nothing of this transaction was committed" in str(
            outcomes[victim])
        with logs[victim].transaction():  # written again, as the cell runtime does
            sink = logs[victim].blobs.sink()
            assert [sink.put(first), sink.put(second)] == [sink.put(first), sink.put(second)]
    finally:
        for log in logs:
            log.close()
    assert sql(url(postgres, database, "k0"), "SELECT count(*) FROM blob") == [(2,)]


def test_a_newer_schema_is_refused_and_an_empty_one_is_not_a_log(postgres: PostgresServer, database: str) -> None:
    where = url(postgres, database, "x")
    with pytest.raises(NotALogError, match="holds no durable log"):
        DurableLog(where)
    DurableLog(where, readonly=False).close()
    sql(where, "INSERT INTO schema_migration VALUES (99, 'future', 0)")
    with pytest.raises(NewerLogError, match="schema version 99"):
        DurableLog(where, readonly=False)


def test_a_password_is_used_never_shown_nor_stored(postgres: PostgresServer, database: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with postgres.connect(database, autocommit=True) as conn:
        conn.execute(f"GRANT ALL ON DATABASE {database} TO {PASSWORD_ROLE}")
    secret_url = postgres.url(database, user=PASSWORD_ROLE, password=postgres.password, query="schema=team")
    with DurableLog(secret_url, readonly=False) as log:
        log.start_execution(ExecutionStart("c", None, 1, "k", "x = 1", "h", {}, {}, None))
        shown = [repr(log), str(log.status())]
    assert all(postgres.password not in text for text in shown)
    assert "durable_pw@" in shown[0]
    dump = repr(sql(postgres.url(database, query="schema=team"), "SELECT * FROM run"))
    assert postgres.password not in dump
    wrong = postgres.url(database, user=PASSWORD_ROLE, password="not-" + postgres.password, query="schema=t")
    with pytest.raises(LogError, match="cannot connect") as failed:
        DurableLog(wrong, readonly=False)
    assert postgres.password not in str(failed.value) and "not-" not in str(failed.value)


def test_the_current_log_rules_take_a_url(postgres: PostgresServer, database: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    where = url(postgres, database, "env")
    monkeypatch.setenv("DURABLE_NB_DB", where)
    assert current.configured_path() == where
    log = session.current_log()
    assert log.location == where and session.current_log() is log, "the same settings keep the same log"
    session.configure(where)
    assert session.current_log() is log
    other = url(postgres, database, "other")
    assert session.open_log(other).location == other


def test_a_run_is_alive_while_its_lease_is_renewed(postgres: PostgresServer, database: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_NB_LEASE_SECONDS", "1.5")
    where = url(postgres, database, "lease")
    monkeypatch.setenv("DURABLE_NB_HOST", "host-a")
    with DurableLog(where, readonly=False) as writer:
        writer.start_execution(ExecutionStart("slow", None, 1, "k", "x", "h", {}, {}, None))
        monkeypatch.setenv("DURABLE_NB_HOST", "host-b")
        import time

        time.sleep(3.5)  # over twice the lease: only the heartbeats keep the run alive
        with DurableLog(where, readonly=False) as other:
            assert writer.run_id not in other.dead_run_ids()
            assert sql(where, "SELECT state FROM execution") == [("running",)]
    assert sql(where, "SELECT ended_at IS NOT NULL FROM run WHERE host = 'host-a'") == [(True,)]


def test_copy_moves_a_log_between_backends_both_ways(postgres: PostgresServer, database: str, tmp_path: Path,
                                                     new_shell: Callable[[], Shell]) -> None:
    """A SQLite log recorded by a shell goes into a team schema and back into a file: the same history, the same
    values, blob ids remapped to the database's, ids of runs and executions kept."""
    from durable_nb import views
    from durable_nb.cli import main as cli
    from durable_nb.log.transfer import copy

    src = tmp_path / "t.durable.db"
    sh = new_shell()
    sh.durable("import numpy as np\narr = np.arange(2_000_000)\nconf = {'a': [1, 2]}", "--name load")
    sh.run("import durable_nb\n@durable_nb.activity\ndef twice(x):\n    return x * 2\nr = [twice(i) for i in range(5)]")
    sh.durable("total = int(arr.sum())", "--name total")
    sh.durable("import numpy as np\narr = np.arange(2_000_000)\nconf = {'a': [1, 2]}", "--name load")
    session.close_log()
    team = url(postgres, database, "team")
    with DurableLog(url(postgres, database, "other"), readonly=False) as other, other.transaction():
        other.blobs.sink().put(np.zeros(10))  # the database already has a blob: ids must be remapped
    result = copy(src, team)
    assert result.blobs >= 1 and result.rows > 0
    assert cli(["copy", team, str(tmp_path / "back.durable.db")]) == 0
    back = tmp_path / "back.durable.db"
    columns = ["execution_id", "run_id", "cell_name", "state", "replayed_from", "outputs", "key"]
    for copied in (team, back):
        assert views.history(copied)[columns].equals(views.history(src)[columns]), copied
        assert (views.load("arr", log=copied) == np.arange(2_000_000)).all()
        assert views.load("total", log=copied) == sum(range(2_000_000))
        assert len(views.activities(copied)) == 5
    with pytest.raises(LogError, match="already holds"):
        copy(src, team)


def test_verify_reads_a_team_log_and_trust_refuses_to_re_sign_it(postgres: PostgresServer, database: str,
                                                                  secret: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from durable_nb.cli import main as cli
    from durable_nb.trust import trust_log, verify_log

    where = url(postgres, database, "team")
    monkeypatch.chdir(tmp_path)
    sh = Shell(where)
    sh.durable("class Point:\n    pass\np = Point()\narr = list(range(5))", "--name point")
    session.close_log()
    review = verify_log(where)
    assert not review.tampered and review.pickled == review.signed_by_you >= 1, review
    with pytest.raises(LogError, match="replace your teammates' signatures"):
        trust_log(where)
    assert cli(["trust", "log", where]) == 1
    assert cli(["verify", where]) == 0
