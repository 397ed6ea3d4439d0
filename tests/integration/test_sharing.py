"""Sharing a log between two users on real kernels: the example notebook, and a hostile log that must never run
its pickle until the receiving user trusts it. The `durable-nb` verbs run as real subprocesses."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from shells import user_env

from durable_nb.demo import run_all

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).parents[2] / "example_notebooks"


def durable_nb(*args: object, secret: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("durable-nb")
    return subprocess.run([str(exe), *map(str, args)], env={**os.environ, **user_env(secret)},
                          capture_output=True, text=True, timeout=120)


def test_share_with_a_colleague_notebook(tmp_path: Path) -> None:
    nb = tmp_path / "share_with_a_colleague.ipynb"
    shutil.copy(EXAMPLES / nb.name, nb)
    env = {**user_env(tmp_path / "reader.secret"), "SHARE_DEMO_DIR": str(tmp_path / "work")}
    runs = run_all(nb, env=env)
    assert [r.status for r in runs] == ["ok"] * len(runs), runs[-1].text()
    text = "".join(r.text() for r in runs)
    assert "a key you do not trust; to trust them" in text and "durable-nb trust user alice@" in text
    assert "trusted SHA256:" in text and "no tampering found" in text and "ssh-ed25519 AAAA" in text
    assert text.count("cell model  replayed") == 1 and "prediction for 10 units" in text


def test_hostile_log_runs_nothing_until_trusted(tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice.mkdir()
    bob.mkdir()
    marker = tmp_path / "PWNED"
    cells = ["%load_ext durable_nb",
             f"%%durable --name evil\nimport builtins\nclass Evil:\n    def __reduce__(self):\n"
             f"        return (builtins.open, ({str(marker)!r}, 'w'))\nevil = Evil()"]
    nb = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
    nb.cells = [nbformat.v4.new_code_cell(s) for s in cells]  # type: ignore[no-untyped-call]
    nbformat.write(nb, alice / "evil.ipynb")  # type: ignore[no-untyped-call]
    as_alice = {**user_env(alice / "s"), "LOGNAME": "alice", "USER": "alice"}
    assert [r.status for r in run_all(alice / "evil.ipynb", env=as_alice)] == ["ok", "ok"]
    bob_secret = bob / "s"
    shared = bob / "evil.durable.db"

    done = durable_nb("export", alice / "evil.durable.db", "-o", shared, secret=bob_secret)
    assert done.returncode == 0, done.stderr
    done = durable_nb("verify", shared, secret=bob_secret)
    alice_key = f"alice@{socket.gethostname()}"
    assert done.returncode == 0, done.stderr
    assert "untrusted execution 1 (cell evil) variable evil (Evil) (pickle), signed by SHA256:" in done.stdout
    assert f" {alice_key}" in done.stdout
    shutil.copy(alice / "evil.ipynb", bob / "evil.ipynb")
    shutil.copy(shared, bob / "scratch.durable.db")
    nbformat.write(nb, bob / "scratch.ipynb")  # type: ignore[no-untyped-call]
    runs = run_all(bob / "scratch.ipynb", env=user_env(bob_secret))
    assert f"durable-nb trust user {alice_key} scratch.durable.db" in runs[1].durable_statuses()[0]["reason"]
    assert not marker.exists(), "nothing from the hostile log may be unpickled before it is trusted"

    done = durable_nb("trust", "user", alice_key, shared, "--dry-run", secret=bob_secret)
    assert done.returncode == 0 and f"{alice_key} signed 2 pickled values" in done.stdout, done.stderr
    assert not marker.exists(), "a review decodes nothing"
    done = durable_nb("trust", "user", alice_key, shared, secret=bob_secret)
    assert done.returncode == 0 and "trusted SHA256:" in done.stdout
    runs = run_all(bob / "evil.ipynb", env=user_env(bob_secret))
    assert runs[1].durable_states() == ["replayed"]
    assert marker.exists(), "trusted, the pickle loads (the marker is visible to this test)"
