"""Every history verb of the command line on both backends, on the same story: the same answers from a SQLite
file and from a PostgreSQL schema; `query` cannot write on either; gc of a PostgreSQL log never drops a blob that
another log of the database, or a writer at this moment, uses."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from backends import SCHEMA, columns, is_postgres, only, sql
from cli_runs import run
from pg_server import PostgresServer
from shells import Shell
from test_history import fingerprint, story  # noqa: F401  (story: the fixture, two kernels on one log)

import durable_nb
from durable_nb import session, views
from durable_nb.errors import DurableError
from durable_nb.log.maintenance import gc

BOTH_BACKENDS = True


def test_every_history_verb_answers_from_either_backend(story: Path, tmp_path: Path,  # noqa: F811
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    log = str(story)
    before = fingerprint(story)
    code, out, _ = run(capsys, "history", log, "--json")
    assert code == 0 and [r["state"] for r in json.loads(out)] == [
        "recorded", "recorded", "recorded", "failed", "crashed", "replayed", "recorded"]
    code, out, _ = run(capsys, "history", log, "--table", "--state", "failed")
    assert code == 0 and "ZeroDivisionError" in out
    code, out, _ = run(capsys, "runs", log, "--csv")
    assert code == 0 and out.splitlines()[0].startswith("run_id,uuid,") and len(out.splitlines()) == 4
    code, out, _ = run(capsys, "activities", log, "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = run(capsys, "show", log, "3")
    assert code == 0 and "ran because: input rows changed" in out and "total = sum(rows)" in out
    code, out, _ = run(capsys, "load", log, "total", "-o", str(tmp_path / "total.json"), "--execution", "2")
    assert code == 0 and json.loads((tmp_path / "total.json").read_text()) == 3
    code, out, _ = run(capsys, "diff", log, "1", "3", "--runs")
    assert code == 0 and "cleanup: only in run 3" in out
    code, out, _ = run(capsys, "status", log, "--json")
    assert code == 0 and json.loads(out)["executions"]["recorded"] == 4
    code, out, _ = run(capsys, "status", log)
    assert code == 0 and ("free pages" in out) != is_postgres(story), "a PostgreSQL schema has no free pages"
    code, out, _ = run(capsys, "query", log, "SELECT count(*) AS n FROM executions WHERE state = :s", "-p", "s",
                       "recorded")
    assert code == 0 and json.loads(out) == [{"n": 4}]
    code, out, _ = run(capsys, "verify", log)
    assert code == 0 and "no tampering found" in out
    assert fingerprint(story) == before, "reading verbs wrote to the log"
    code, out, _ = run(capsys, "export", log, "-o", str(tmp_path / "share.db"), "--latest-only")
    assert code == 0 and out.startswith("exported 4 executions")
    assert fingerprint(story) == before
    assert views.load("total", log=tmp_path / "share.db") == 30
    code, out, _ = run(capsys, "gc", log)
    assert code == 0 and "dropped 1 superseded executions" in out, out  # total's first record
    assert list(views.history(story)["execution_id"]) == [1, 3, 4, 5, 6, 7]


WRITES = [
    "DELETE FROM execution",
    "UPDATE execution SET state = 'recorded'",
    "INSERT INTO run (uuid, started_at, host, pid, python, platform) VALUES ('x', 0, 'h', 1, '3', 'l')",
    "CREATE TABLE mine (a integer)",
    "DROP VIEW executions",
    "  -- a comment first\n  delete from execution",
]


@pytest.mark.parametrize("statement", WRITES)
def test_query_cannot_write_on_either_backend(story: Path, statement: str,  # noqa: F811
                                              capsys: pytest.CaptureFixture[str]) -> None:
    before = fingerprint(story)
    code, out, err = run(capsys, "query", str(story), statement)
    keyword = statement.split("\n")[-1].split()[0].upper()
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"durable-nb query: {keyword} refused: ") and "was not changed" in err, err
    with pytest.raises(DurableError, match="refused"):
        durable_nb.query(statement, log=story)
    assert fingerprint(story) == before


@only("postgres", reason="statements a SQLite authorizer never lets through; on PostgreSQL the server refuses")
def test_query_on_postgres_takes_one_statement_and_sqlite_placeholders(story: Path,  # noqa: F811
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    before = fingerprint(story)
    for statement in ("SELECT 1; DELETE FROM execution", "COMMIT; DELETE FROM execution",
                      "SELECT 1; SET default_transaction_read_only = off; DELETE FROM execution"):
        code, _, err = run(capsys, "query", str(story), statement)
        assert code == 1 and "one SQL statement at a time" in err, err
    assert fingerprint(story) == before
    frame = durable_nb.query("SELECT '100%' AS pct, :n::int + 1 AS next, 'a?' AS q FROM runs "
                             "WHERE run_id = 1", {"n": "2"}, log=story)
    assert frame.to_dict("records") == [{"pct": "100%", "next": 3, "q": "a?"}]
    assert durable_nb.query("SELECT count(*) AS n FROM runs WHERE run_id > ?", [1], log=story)["n"].tolist() == [2]
    code, _, err = run(capsys, "query", str(story), "SELECT :missing")
    assert code == 1 and "--param NAME VALUE" in err


ARRAY = "import numpy as np\narr = np.random.default_rng(7).random(200_000)"


@only("postgres", reason="blobs shared between the logs of one database are PostgreSQL's")
def test_gc_keeps_blobs_another_log_or_a_writer_still_uses(new_shell: Callable[[], Shell],
                                                          log_location: str) -> None:
    other = log_location.replace("schema=analysis", "schema=teammate")
    sh = new_shell()
    sh.durable(ARRAY, "--name sample")
    sh.durable("arr = arr + 1", "--name sample")  # supersedes the first record of `sample`
    sh.run(f"%config DurableMagics.db = {other!r}")
    sh.durable(ARRAY, "--name theirs")  # the same bytes in the other log: the same blob
    session.close_log()
    (shared,) = sql(log_location, "SELECT blob_id FROM output_blob WHERE execution_id = 1 AND name = 'arr'")[0]
    assert sql(other, "SELECT blob_id FROM output_blob WHERE name = 'arr'") == [(shared,)]
    assert gc(log_location).executions == 1
    assert sql(log_location, "SELECT count(*) FROM blob WHERE id = ?", (shared,)) == [(1,)]
    assert np.array_equal(views.load("arr", log=other), np.random.default_rng(7).random(200_000))

    # A writer reusing the blob holds its hash's lock until it commits the reference: gc must leave it.
    from durable_nb.log.pg_blobs import PgBlobSink
    from durable_nb.log.pg_connect import PgConnection
    from durable_nb.pg_url import parse

    assert gc(other).executions == 0
    sql(other, "DELETE FROM execution")  # the other log forgets its record: the blob is garbage now
    writer = PgConnection(parse(other), readonly=False)
    try:
        with writer.write_transaction():
            (digest,) = writer.execute("SELECT hash FROM blob WHERE id = ?", (shared,)).fetchone()
            assert PgBlobSink(writer, 1 << 20)._existing(digest) == shared  # takes the lock, as a writer does
            assert gc(other).blobs == 0, "gc dropped a blob a writer holds"
        assert gc(other).blobs == 1  # once the writer is done, the garbage goes
    finally:
        writer.close()
    assert sql(other, "SELECT count(*) FROM blob WHERE id = ?", (shared,)) == [(0,)]


def test_both_backends_expose_the_same_views_with_the_same_columns(tmp_path: Path, postgres: PostgresServer,
                                                                   pg_database: str) -> None:
    """The views' SQL is written once (log/schema.py); what each backend makes of it must agree, name for name
    and column for column, in order (docs/schema.md lists them; test_history checks the list)."""
    sqlite_log = tmp_path / "t.durable.db"
    pg_log = postgres.url(pg_database, query=f"schema={SCHEMA}")
    for location in (sqlite_log, pg_log):
        durable_nb.DurableLog(location, readonly=False).close()
    sqlite_views = [r[0] for r in sql(sqlite_log, "SELECT name FROM sqlite_master WHERE type = 'view' ORDER BY 1")]
    pg_views = [r[0] for r in sql(pg_log, "SELECT table_name::text FROM information_schema.views "
                                          "WHERE table_schema = ? ORDER BY 1", (SCHEMA,))]
    assert sqlite_views == pg_views == ["activities", "attempts", "executions", "outputs", "runs"]
    for view in sqlite_views:
        assert columns(sqlite_log, view) == columns(pg_log, view), view
