"""One replay, three figures (original run, replay, saved = original − replay), the same wherever they are shown:
the badge's payload, the side panel's data, history(), %durable_history and the CLI."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from shells import Shell

from durable_nb import session, views
from durable_nb.cli import main as cli
from durable_nb.server import read_log
from durable_nb.vocabulary import fmt_duration

SLOW = "import time\ntime.sleep(0.3)\nx = 41 + 1\nprint('x is', x)"


def test_badge_panel_history_table_and_cli_show_the_same_figures(tmp_path: Path,
                                                                  new_shell: Callable[[], Shell]) -> None:
    new_shell().durable(SLOW, "--name slow")
    sh = new_shell()
    sh.durable(SLOW, "--name slow")
    badge = sh.last_status()
    assert badge["state"] == "replayed" and badge["session"]
    session.close_log()  # the replay's row is written at the next commit; a closing kernel writes it too
    db = tmp_path / "t.durable.db"

    row = views.history(db).iloc[-1]
    assert row.state == "replayed"
    figures = (row.original_duration, row.duration, row.saved_seconds)
    assert figures == (badge["original_s"], badge["duration_s"], badge["saved_s"])
    assert badge["original_s"] >= 0.3 and badge["duration_s"] < badge["original_s"]
    assert badge["saved_s"] == max(badge["original_s"] - badge["duration_s"], 0.0)
    assert badge["replayed_from"] == row.replayed_from
    assert badge["message"].startswith(f"replayed in {fmt_duration(badge['duration_s'])} · saved "
                                       f"{fmt_duration(badge['saved_s'])} of {fmt_duration(badge['original_s'])}")

    panel = read_log(tmp_path, "t.ipynb", None)["executions"][-1]
    assert (panel["original_duration"], panel["duration"], panel["saved_seconds"]) == figures

    out = io.StringIO()
    with redirect_stdout(out):
        assert cli(["history", str(db), "--json"]) == 0
    text = out.getvalue().strip()
    # One object a line, or one array (the sqlite-utils convention): the last row either way.
    last = json.loads(text)[-1] if text.startswith("[") else json.loads(text.splitlines()[-1])
    # The CLI's JSON writes durations to the nanosecond.
    assert (last["original_duration"], last["duration"], last["saved_seconds"]) == pytest.approx(figures, abs=1e-9)

    shell = new_shell()
    shell.run("%durable_history")
    table = shell.displays[-1]["text/html"]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", table.split("<tr>")[-1])
    took, original, saved = cells[5:8]
    assert (took, original, saved) == tuple(fmt_duration(v) for v in (row.duration, row.original_duration,
                                                                      row.saved_seconds))
    assert "ago" not in table, "saved output carries absolute times"
