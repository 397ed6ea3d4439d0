"""`%durable on / off` (DurableMagics.all_cells): every top-level code cell durable, with the exceptions."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from shells import Shell


def states(sh: Shell) -> list[str]:
    return [s["state"] for s in sh.statuses() if s["state"] != "running"]


def test_mode_on_records_and_replays_plain_cells(new_shell) -> None:  # type: ignore[no-untyped-def]
    sh = new_shell()
    sh.run("%durable on")
    sh.run("x = 40 + 2\nprint(x)")
    sh.run("y = x + 1")
    assert states(sh) == ["recorded", "recorded"]
    assert sh.ip.user_ns["y"] == 43
    sh = new_shell()
    sh.run("%config DurableMagics.all_cells = True")
    sh.run("x = 40 + 2\nprint(x)")
    sh.run("y = x + 1")
    assert states(sh) == ["replayed", "replayed"] and sh.ip.user_ns["y"] == 43


def test_left_alone_and_opt_outs(shell: Shell) -> None:
    shell.run("%durable on")
    shell.run("%%capture out\nprint('captured')")  # another cell magic: its body is not made durable either
    assert "captured" in shell.ip.user_ns["out"].stdout
    shell.run("!true")
    shell.run("%durable")
    shell.run("%%durable --off\na = 1 % 1")
    shell.run("%%time\nb = 2")
    shell.run("%%durable --name explicit\nc = 3")
    assert states(shell) == ["recorded"], "only the explicit %%durable cell, once (never wrapped twice)"
    assert shell.last_status()["cell"] == "explicit"
    shell.run("d = 4 % 3")  # a body with % is transformed once, not wrapped again
    assert states(shell) == ["recorded", "recorded"] and shell.ip.user_ns["d"] == 1
    shell.run("%durable off")
    shell.run("e = 5")
    assert states(shell) == ["recorded", "recorded"]
    assert shell.ip.input_transformer_manager.check_complete("f = 1\n") == ("complete", None)


def test_off_cell_raises_like_a_plain_cell(shell: Shell) -> None:
    with pytest.raises(ZeroDivisionError):
        shell.run("%%durable --off\n1 / 0")
    assert shell.run("%%durable --off\n6 * 7") == 42


def test_bad_mode_is_a_usage_error(shell: Shell) -> None:
    with pytest.raises(UsageError, match="say %durable on or %durable off"):
        shell.run("%durable maybe")
