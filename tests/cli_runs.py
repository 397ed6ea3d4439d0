"""`durable-nb` run in-process, as the CLI tests call it: its exit code and what it printed."""

from __future__ import annotations

import pytest

from durable_nb.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `durable-nb ARGV...`."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
