"""history() over 100,000 executions (target ≤ 0.5 s), against a plain `pd.read_sql('SELECT * FROM execution')`
of the same log in the same run; and the timeline of 5,000 executions."""

from __future__ import annotations

import importlib.util
import sqlite3
import tempfile
from pathlib import Path
from types import ModuleType

from .harness import median_time, report

EXECUTIONS = 100_000


def _logs_module() -> ModuleType:
    path = Path(__file__).parents[1] / "tests" / "history_logs.py"
    spec = importlib.util.spec_from_file_location("history_logs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    import pandas as pd

    from durable_nb import views

    logs = _logs_module()
    with tempfile.TemporaryDirectory() as tmp:
        db = logs.synthetic_log(Path(tmp) / "big.durable.db", EXECUTIONS, cells=80, runs=50)
        conn = sqlite3.connect(db)
        baseline = median_time(lambda: pd.read_sql("SELECT * FROM execution", conn), repeat=5)
        conn.close()
        frame = views.history(db)
        assert len(frame) == EXECUTIONS
        value = median_time(lambda: views.history(db), repeat=5)
        report(f"history() over {EXECUTIONS:,} executions", value, baseline,
               baseline_name="pd.read_sql(execution)", limit=0.5, limit_kind="abs")
        small = logs.synthetic_log(Path(tmp) / "five.durable.db", 5_000, cells=60, runs=8)

        def draw() -> None:
            views.timeline(small).savefig(Path(tmp) / "t.png", dpi=80)

        report("timeline() of 5,000 executions, rendered to PNG", median_time(draw, repeat=3))


if __name__ == "__main__":
    main()
