"""A log written before signer keys (schema 6, every signature an HMAC of its recorder's secret) opens, migrates,
and its pickled values replay for the owner of that secret and for nobody else (tests/data/make_hmac_log.py)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from data.make_hmac_log import HMAC_CELLS
from shells import Shell, become

from durable_nb import session
from durable_nb.log.calls import flush
from durable_nb.log.schema import SCHEMA_VERSION
from durable_nb.trust import verify_log

DATA = Path(__file__).parent / "data"


@pytest.fixture
def old_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "hmac_v6.durable.db"
    shutil.copy(DATA / db.name, db)
    shutil.copy(DATA / "hmac_v6.secret", tmp_path / "owner-secret")
    monkeypatch.chdir(tmp_path)  # the evil cell's pickle writes PWNED in the working directory
    return db


def run_all(db: Path) -> Shell:
    sh = Shell(db)
    for name, code in HMAC_CELLS.items():
        sh.durable(code, f"--name {name}")
    return sh


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    flush()
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_its_owner_replays_every_value_after_the_migration(old_log: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    become(monkeypatch, tmp_path / "owner-secret", user="owner")
    assert rows(old_log, "SELECT max(version) FROM schema_migration") == [(6,)]
    before = verify_log(old_log)
    assert before.ok and before.pickled == before.signed_by_you == 6 and not before.unsigned
    sh = run_all(old_log)
    assert [s["state"] for s in sh.statuses()] == ["replayed"] * len(HMAC_CELLS)
    assert sh.ns["p"].x == 7 and sh.ns["b"] == 3 and (tmp_path / "PWNED").exists()
    sh.run("again = box(3).x")  # the activity replays its HMAC-signed result: no new call is recorded
    assert sh.ns["again"] == 3
    session.close_log()
    assert rows(old_log, "SELECT max(version) FROM schema_migration") == [(SCHEMA_VERSION,)]
    assert rows(old_log, "SELECT count(*), count(signer_id) FROM activity_call") == [(1, 0)]
    assert rows(old_log, "SELECT count(*) FROM output WHERE signer_id IS NOT NULL") == [(0,)]


def test_anyone_else_runs_its_pickled_cells_and_unpickles_nothing(old_log: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    become(monkeypatch, tmp_path / "someone-else-secret", user="someone")
    sh = run_all(old_log)
    assert [s["state"] for s in sh.statuses()] == ["replayed", "recorded", "recorded", "recorded"]
    assert "not signed by you" in sh.statuses()[1]["reason"] and "durable-nb trust log" in sh.statuses()[1]["reason"]
    assert not (tmp_path / "PWNED").exists(), "a pickle signed with another user's secret must never be loaded"
    session.close_log()
    # The re-run cells and the activity call are recorded anew, signed with this user's Ed25519 key.
    assert rows(old_log, "SELECT count(*), count(batch_id) FROM activity_call") == [(2, 1)]
    review = verify_log(old_log)
    assert review.ok and len(review.unsigned) == 6 and review.signed_by_you == review.pickled - 6
