"""Trust across a team, on both backends: values are signed with their recorder's Ed25519 key, and a pickled value
replays only for its signer and for those who trust the signer's key (durable-nb trust add | user | remove).

Two users are two key folders (DURABLE_NB_KEYS_DIR, see shells.become); each shell stands in for a kernel.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import sql
from shells import Shell, become
from test_activity import Calls

import durable_nb
import durable_nb.calls as act
from durable_nb import session
from durable_nb.cli import main as cli
from durable_nb.errors import SigningKeyError
from durable_nb.log.calls import flush

BOTH_BACKENDS = True


def evil_cell(marker: Path, name: str = "evil") -> str:
    """A cell whose variable, when unpickled, writes `marker`: what a hostile teammate's record would hold."""
    return (f"import builtins\nclass Evil:\n    def __reduce__(self):\n"
            f"        return (builtins.open, ({str(marker)!r}, 'w'))\n{name} = Evil()")


@pytest.fixture
def team(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         new_shell: Callable[[], Shell]) -> Iterator[Callable[[str], Shell]]:
    """`team("alice")`: a new kernel of that user (their own secret and key folder) on the test's log."""

    def kernel(user: str) -> Shell:
        session.close_log()
        become(monkeypatch, tmp_path / f"{user}-secret", user=user)
        return new_shell()

    yield kernel
    session.close_log()


def key_file(tmp_path: Path, user: str) -> Path:
    return tmp_path / f"{user}-secret-keys" / "signing_key.pub"


def states(sh: Shell) -> list[str]:
    return [s["state"] for s in sh.statuses()]


def test_my_own_values_replay(team: Callable[[str], Shell], tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    team("alice").durable(evil_cell(marker), "--name evil")
    assert not marker.exists()
    sh = team("alice")
    sh.durable(evil_cell(marker), "--name evil")
    assert states(sh) == ["replayed"] and marker.exists(), "my own pickles replay (the marker proves unpickling)"


def test_a_teammates_pickles_miss_until_their_key_is_trusted_then_replay_past_and_future(
        team: Callable[[str], Shell], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"
    team("alice").durable(evil_cell(marker), "--name past")
    team("alice").durable("import numpy as np\narr = np.arange(5)", "--name safe")

    bob = team("bob")
    bob.durable("import numpy as np\narr = np.arange(5)", "--name safe")
    bob.durable(evil_cell(marker), "--name past")
    assert states(bob) == ["replayed", "recorded"], "safe values replay from anyone; pickles do not"
    reason = bob.last_status()["reason"]
    assert "signed by SHA256:" in reason and "alice@" in reason and "a key you do not trust" in reason, reason
    assert "durable-nb trust user alice@" in reason, reason
    assert not marker.exists(), "a teammate's pickle must never be unpickled before their key is trusted"

    assert durable_nb.trust_add(key_file(tmp_path, "alice"), name="alice").comment == "alice"
    assert [k.comment for k in durable_nb.trust_list()][1:] == ["alice"]
    code = cli(["trust", "list", "--csv"])
    listed = capsys.readouterr().out.splitlines()
    assert code == 0 and listed[0] == "fingerprint,name,yours,public_key" and len(listed) == 3
    assert listed[1].split(",")[2] == "True" and listed[2].split(",")[1:3] == ["alice", "False"]

    team("alice").durable("class Later:\n    pass\nlater = Later()", "--name future")
    bob = team("bob")
    bob.durable("class Later:\n    pass\nlater = Later()", "--name future")
    assert states(bob) == ["replayed"], "a value Alice signs after the trust replays"
    marker.unlink(missing_ok=True)
    team("alice").durable(evil_cell(marker, "again"), "--name past2")
    bob = team("bob")
    bob.durable(evil_cell(marker, "again"), "--name past2")
    assert states(bob) == ["replayed"] and marker.exists(), "and so do the ones she signed before"

    assert cli(["trust", "remove", "alice"]) == 0
    assert "no longer trusted" in capsys.readouterr().out
    marker.unlink()
    bob = team("bob")
    bob.durable(evil_cell(marker, "again"), "--name past2")
    assert states(bob) == ["recorded"] and not marker.exists(), "after trust remove her pickles miss again"
    with pytest.raises(SigningKeyError, match="your own key"):
        durable_nb.trust_remove(durable_nb.public_key().fingerprint)


def test_trust_user_reviews_what_the_signer_recorded_then_trusts(team: Callable[[str], Shell],
                                                                 log_location: Path | str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"
    team("alice").durable(evil_cell(marker), "--name hostile")
    team("bob").durable("class Mine:\n    pass\nmine = Mine()", "--name bobs")
    session.close_log()
    log = str(log_location)

    assert cli(["trust", "user", "alice", log, "--dry-run"]) == 1
    assert "no signer matches 'alice'" in capsys.readouterr().err
    assert cli(["trust", "user", "alice@", log, "--dry-run"]) == 1  # a name is matched whole, not by prefix
    capsys.readouterr()
    (name,) = [n for (n,) in sql(log, "SELECT name FROM signer") if n.startswith("alice@")]
    assert cli(["trust", "user", name, log, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{name} signed 2 pickled values" in out and "1 cell executions" in out, out
    assert "cell hostile) variable evil (Evil) (pickle)" in out and "types: Evil, type" in out, out
    assert "--dry-run: nothing trusted" in out and len(durable_nb.trust_list()) == 1
    assert not marker.exists()

    done = durable_nb.trust_user(name, log)
    assert done.trusted and [k.comment for k in durable_nb.trust_list()][1:] == [name]
    bob = team("bob")
    bob.durable(evil_cell(marker), "--name hostile")
    assert states(bob) == ["replayed"] and marker.exists()
    mine = durable_nb.trust_user(durable_nb.public_key().fingerprint, log, dry_run=True)
    assert mine.yours and "your own key" in mine.lines()[-1]


def test_a_tampered_signature_misses(team: Callable[[str], Shell], log_location: Path | str,
                                     tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    team("alice").durable(evil_cell(marker), "--name evil")
    session.close_log()
    (sig,) = sql(log_location, "SELECT signature FROM output WHERE name = 'evil'")[0]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    sql(log_location, "UPDATE output SET signature = ? WHERE name = 'evil'", (flipped,))
    sh = team("alice")
    sh.durable(evil_cell(marker), "--name evil")
    assert states(sh) == ["recorded"] and not marker.exists()
    assert "does not match the value" in sh.last_status()["reason"]


class Box:
    def __init__(self, n: int) -> None:
        self.n = n


class Hostile:
    """Unpickling it would write the file named in `marker` (as a hostile activity result would)."""
    marker = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.marker, "w"))


def test_activity_results_of_a_teammate_miss_until_trusted(team: Callable[[str], Shell], log_location: Path | str,
                                                           tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"
    Hostile.marker = str(marker)
    calls = Calls()  # fingerprints as empty: the activities' keys do not change as it fills

    @act.activity
    def build(n: int) -> Box:
        calls.append(n)
        return Box(n)

    @act.activity
    def hostile() -> Hostile:
        return Hostile()

    def as_user(user: str) -> None:
        flush()
        team(user)
        session.open_log(log_location)
        act.reset_scope()

    as_user("alice")
    assert build(3).n == 3 and isinstance(hostile(), Hostile) and calls == [3]
    as_user("alice")
    assert build(3).n == 3 and calls == [3], "my own activity results replay"
    as_user("bob")
    capsys.readouterr()
    assert build(3).n == 3 and calls == [3, 3], "a teammate's pickled result is a miss: the function runs"
    assert isinstance(hostile(), Hostile) and not marker.exists()
    err = capsys.readouterr().err
    assert err.count("a key you do not trust") == 1, "said once, not once per call"
    assert "durable-nb trust user alice@" in err, err
    flush()
    (name,) = [n for (n,) in sql(log_location, "SELECT name FROM signer") if n.startswith("alice@")]
    review = durable_nb.trust_user(name, str(log_location), dry_run=True)  # her results are signed per batch
    assert sorted(v.where.split(") result (")[1] for v in review.values if v.table == "activity_call") == \
        ["test_team_trust.Box)", "test_team_trust.Hostile)"], review.lines()
    durable_nb.trust_add(key_file(tmp_path, "alice"))
    as_user("bob")
    assert build(3).n == 3 and calls == [3, 3], "once her key is trusted, her results replay"
    opened = hostile()  # unpickling her result called open(): what trusting a key allows
    assert marker.exists() and not isinstance(opened, Hostile)
    opened.close()
    flush()
