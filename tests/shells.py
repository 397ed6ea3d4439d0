"""IPython shells for unit tests: a fresh InteractiveShell per test, its own log and its own user secret."""

from __future__ import annotations

import atexit
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.displaypub import CapturingDisplayPublisher
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from durable_nb import session


class Shell:
    """An InteractiveShell with durable_nb loaded, whose displays are collected in `displays`."""

    def __init__(self, db: Path | str) -> None:
        cfg = Config()
        cfg.HistoryManager.hist_file = ":memory:"
        InteractiveShell.clear_instance()
        # IPython's display() only publishes through the singleton instance.
        self.ip = InteractiveShell.instance(config=cfg)
        # Each shell registers an atexit reset with a full gc.collect(); hundreds of test shells made pytest's
        # exit take minutes. An in-memory history needs no exit work.
        atexit.unregister(self.ip.atexit_operations)
        self.ip.display_pub = CapturingDisplayPublisher()
        self.ip.run_cell("%load_ext durable_nb", store_history=False)
        self.ip.run_cell(f"%config DurableMagics.db = {str(db)!r}", store_history=False)

    @property
    def ns(self) -> dict[str, Any]:
        return self.ip.user_ns

    @property
    def displays(self) -> list[dict[str, Any]]:
        return [o["data"] for o in self.ip.display_pub.outputs]

    def statuses(self) -> list[dict[str, Any]]:
        """The status displays as a notebook shows them: an update replaces its display (same display_id)."""
        mime = "application/vnd.durable-nb.status+json"
        shown: dict[str, dict[str, Any]] = {}
        for n, out in enumerate(self.ip.display_pub.outputs):
            if mime in out["data"]:
                shown[(out.get("transient") or {}).get("display_id") or str(n)] = out["data"][mime]
        return list(shown.values())

    def last_status(self) -> dict[str, Any]:
        return self.statuses()[-1]

    def run(self, code: str) -> Any:
        """Run a cell (store_history so Out/_ are set); re-raise what the cell raised."""
        result = self.ip.run_cell(code, store_history=True)
        if result.error_before_exec is not None:
            raise result.error_before_exec
        if result.error_in_exec is not None:
            raise result.error_in_exec
        return result.result

    def durable(self, body: str, options: str = "") -> Any:
        return self.run(f"%%durable {options}\n{body}")


@pytest.fixture
def secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "secret"
    become(monkeypatch, path)
    return path


def user_env(secret: Path) -> dict[str, str]:
    """The variables that make a process the user whose HMAC secret is the file `secret`: that file, and their
    Ed25519 key folder beside it (SECRET-keys)."""
    return {"DURABLE_NB_SECRET_FILE": str(secret), "DURABLE_NB_KEYS_DIR": str(secret.with_name(secret.name + "-keys"))}


def become(monkeypatch: pytest.MonkeyPatch, secret: Path, user: str | None = None) -> None:
    """From here on, this process is the user of `secret` (see user_env); `user` names them (the login name
    their new key is called by: user@host)."""
    for name, value in user_env(secret).items():
        monkeypatch.setenv(name, value)
    if user is not None:
        for name in ("LOGNAME", "USER"):  # the first variables getpass.getuser() reads
            monkeypatch.setenv(name, user)


@pytest.fixture
def new_shell(tmp_path: Path, secret: Path, monkeypatch: pytest.MonkeyPatch,
              log_location: Path | str) -> Iterator[Callable[[], Shell]]:
    """A factory: each call is a new "kernel" on the same log (tmp_path/t.durable.db, or on PostgreSQL in the
    modules that run on both backends: see backends.py)."""
    monkeypatch.chdir(tmp_path)
    db = log_location
    made: list[Shell] = []

    def make() -> Shell:
        session.close_log()
        made.append(Shell(db))
        return made[-1]

    yield make
    session.close_log()
    InteractiveShell.clear_instance()


@pytest.fixture
def shell(new_shell: Callable[[], Shell]) -> Shell:
    return new_shell()
