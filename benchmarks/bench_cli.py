"""The command line, as a user runs it (a new process each time): `durable-nb query` and `durable-nb history
--json` against the sqlite-utils CLI on the same log, in the same run, printing the same JSON array."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from .bench_history import _logs_module
from .harness import median_time, report

EXECUTIONS = 20_000
BIN = Path(sys.executable).parent


def _run(*argv: str) -> None:
    subprocess.run([str(BIN / argv[0]), *argv[1:]], stdout=subprocess.DEVNULL, check=True)


def main() -> None:
    logs = _logs_module()
    with tempfile.TemporaryDirectory() as tmp:
        db = str(logs.synthetic_log(Path(tmp) / "big.durable.db", EXECUTIONS, cells=80, runs=50))
        one = "SELECT 1 AS one"
        report("durable-nb query LOG 'SELECT 1' (start-up)", median_time(lambda: _run("durable-nb", "query", db, one)),
               median_time(lambda: _run("sqlite-utils", "query", db, one)), baseline_name="sqlite-utils query",
               limit=1.0)
        every = "SELECT * FROM executions"
        report(f"durable-nb query --json, {EXECUTIONS:,} executions",
               median_time(lambda: _run("durable-nb", "query", db, every, "--json")),
               median_time(lambda: _run("sqlite-utils", "query", db, every)), baseline_name="sqlite-utils query",
               limit=1.0)
        report(f"durable-nb history --json, {EXECUTIONS:,} executions",
               median_time(lambda: _run("durable-nb", "history", db, "--json")),
               median_time(lambda: _run("sqlite-utils", "rows", db, "executions")), baseline_name="sqlite-utils rows",
               limit=1.5)


if __name__ == "__main__":
    main()
