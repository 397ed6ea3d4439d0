"""Large synthetic logs for the history views (timeline at 5,000 executions, the 100,000-execution benchmark).

Rows go through the real schema (migrations, constraints, foreign keys) in bulk; the cells' shapes imitate a
notebook run many times: most executions recorded or replayed, some failed, a few crashed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from durable_nb import DurableLog

CODE = "import pandas as pd\ndf = pd.read_csv('data_{i}.csv')\nsummary = df.describe()\nprint(len(df))\n"


def synthetic_log(path: Path, executions: int, *, cells: int = 40, runs: int = 20, seed: int = 1) -> Path:
    rng = random.Random(seed)
    per_run = max(executions // runs, 1)
    t0 = 1_780_000_000.0
    with DurableLog(path, readonly=False) as log, log.transaction() as conn:
        conn.executemany(
            "INSERT INTO run (id, uuid, started_at, ended_at, host, pid, python, platform) "
            "VALUES (?, ?, ?, ?, 'bench', ?, '3.11', 'linux')",
            [(r + 1, f"run{r}", t0 + r * 4000.0, t0 + r * 4000.0 + 3000.0, 1000 + r) for r in range(runs)])
        rows, outs = [], []
        last_recorded: dict[int, int] = {}
        clock = t0
        for i in range(1, executions + 1):
            run = min((i - 1) // per_run, runs - 1) + 1
            clock = max(clock, t0 + (run - 1) * 4000.0)
            cell = rng.randrange(cells)
            source = last_recorded.get(cell)
            roll = rng.random()
            state = ("replayed" if source and roll < 0.5 else "failed" if roll < 0.56
                     else "crashed" if roll < 0.57 else "recorded")
            duration = 0.002 if state == "replayed" else rng.uniform(0.05, 3.0)
            rows.append((i, run, f"cell_{cell}", None, i, f"key{cell}-{i % 7}", CODE.format(i=cell), f"code{cell}",
                         state, clock, None if state == "crashed" else clock + duration, duration,
                         source if state == "replayed" else None, 1.5 if state == "replayed" else None,
                         "input df changed" if state == "recorded" and source else None,
                         json.dumps({"path": "f" * 32, "n": "e" * 32}), "path, n",
                         "df, summary" if state in ("recorded", "replayed") else None, int(state == "recorded"),
                         4096 if state == "recorded" else 0, "ValueError" if state == "failed" else None,
                         "bad row 17" if state == "failed" else None))
            if state == "recorded":
                last_recorded[cell] = i
                outs += [(i, "df", "value", "arrow", 1, "pandas.DataFrame", "{}", 4000),
                         (i, "summary", "value", "arrow", 1, "pandas.DataFrame", "{}", 96)]
            clock += duration + 0.01
        conn.executemany(
            "INSERT INTO execution (id, run_id, cell_name, cell_id, execution_count, key, code, code_hash, state, "
            "started_at, finished_at, duration, replayed_from, saved_seconds, reason, inputs, input_names, "
            "output_names, replayable, bytes_stored, error_type, error_message) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.executemany("INSERT INTO output (execution_id, name, kind, codec, codec_version, type, meta, size) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", outs)
    return path
