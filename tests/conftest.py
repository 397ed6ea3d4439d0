"""Shared pytest fixtures. Fixture modules live next to this file; importing a fixture here registers it."""

from collections.abc import Iterator
from typing import Any

import backends
import pytest
import torture
from backends import backend, log_location  # noqa: F401  (fixtures: the test's log on SQLite or PostgreSQL)
from pg_server import pg_database, postgres  # noqa: F401  (fixtures: a real PostgreSQL on 127.0.0.1, a database)
from s3server import s3  # noqa: F401  (fixture: a real rclone S3 server on 127.0.0.1)
from shells import new_shell, secret, shell  # noqa: F401  (fixtures: IPython shells with durable_nb loaded)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    backends.parametrize(metafunc)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The torture suite's figures (kills survived, corruptions detected, ...), when any torture test ran."""
    if torture.FIGURES:
        for line in torture.summary():
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _default_log_settings() -> Iterator[None]:
    """Each test starts with the default current-log settings: one test's %config DurableMagics.db or
    open_log(path) must not choose the next test's log."""
    from durable_nb import session

    yield
    session.close_log()
    session.configure()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long torture version runs a test for ten minutes or more on a busy machine (the soak takes 600 s, 110
    kills took 562 s at a load of 6-8 on 2 cores): pytest's 600 s per test would cut it short."""
    if torture.LONG:
        for item in items:
            if "torture" in item.nodeid:
                item.add_marker(pytest.mark.timeout(3 * 3600))
