"""Async durable cells on an InteractiveShell with autoawait (terminal IPython's path: run_cell on its asyncio
runner): top-level await, async for, async with, failures, interrupts, async activities and durable_nb.gather.
Real kernels (ipykernel's path): tests/integration/test_async_kernel.py."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from shells import Shell
from test_cell import body, runs

import durable_nb
from durable_nb.analysis import analyze

STREAM = """
import asyncio
async def stream(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield i
class Session:
    async def __aenter__(self):
        await asyncio.sleep(0)
        return 'open'
    async def __aexit__(self, *exc):
        await asyncio.sleep(0)
"""


def states(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT state FROM execution ORDER BY id")]


def test_analysis_of_async_code_finds_inputs_and_outputs() -> None:
    a = analyze("x = await fetch(url)\nasync for item in stream(n):\n    total += item\n"
                "async with session(cfg) as s:\n    y = await s.get(x)\nz = [await f(v) async for v in gen()]\n")
    assert set(a.reads) == {"fetch", "url", "stream", "n", "total", "session", "cfg", "f", "gen"}
    assert set(a.binds) >= {"x", "item", "total", "s", "y", "z"}
    assert "v" not in a.binds and "v" not in a.reads
    assert analyze("await asyncio.sleep(0, 5)").has_result


def test_top_level_await_records_then_a_new_kernel_replays(new_shell: Callable[[], Shell]) -> None:
    cell = body("c", "import asyncio\nprint('before')\nx = await asyncio.sleep(0, 41) + 1\nprint('after', x)\nx")
    sh = new_shell()
    assert sh.ip.transform_cell("%%durable\n" + cell).startswith("await get_ipython().run_cell_magic(")
    assert sh.durable(cell) == 42
    assert sh.last_status()["state"] == "recorded" and sh.ns["_"] == 42
    sh2 = new_shell()
    assert sh2.durable(cell) == 42
    assert runs("c") == 1 and sh2.last_status()["state"] == "replayed"
    assert sh2.ns["x"] == 42 and sh2.ns["_"] == 42 and sh2.ns["Out"][1] == 42


def test_output_replays_in_order(new_shell: Callable[[], Shell], capsys: pytest.CaptureFixture[str]) -> None:
    cell = "import asyncio\nprint('one')\nawait asyncio.sleep(0)\nprint('two')\nawait asyncio.sleep(0)\nprint('three')"
    new_shell().durable(cell)
    first = capsys.readouterr().out
    new_shell().durable(cell)
    assert capsys.readouterr().out == first and first.index("one") < first.index("two") < first.index("three")


def test_async_for_and_async_with_record_and_replay(new_shell: Callable[[], Shell]) -> None:
    cell = body("c", "items = []\nasync for i in stream(4):\n    items.append(i)\n"
                     "async with Session() as opened:\n    state = opened.upper()")
    sh = new_shell()
    sh.run(STREAM)
    sh.durable(cell)
    assert sh.ns["items"] == [0, 1, 2, 3] and sh.ns["state"] == "OPEN"
    sh2 = new_shell()
    sh2.run(STREAM)
    sh2.durable(cell)
    assert runs("c") == 1 and sh2.last_status()["state"] == "replayed"
    assert sh2.ns["items"] == [0, 1, 2, 3] and sh2.ns["state"] == "OPEN"


def test_failing_awaited_call_is_failed_and_runs_again(new_shell: Callable[[], Shell], tmp_path: Path) -> None:
    cell = body("c", "import asyncio\nasync def boom():\n    await asyncio.sleep(0)\n    raise ValueError('no')\n"
                     "partial = 1\nawait boom()")
    sh = new_shell()
    with pytest.raises(ValueError, match="no"):
        sh.durable(cell)
    assert sh.last_status()["state"] == "failed"
    sh2 = new_shell()
    with pytest.raises(ValueError):
        sh2.durable(cell)
    assert runs("c") == 2 and "previous run failed" in sh2.last_status()["reason"]
    assert states(tmp_path / "t.durable.db") == ["failed", "failed"]


ASK = """
import asyncio, durable_nb
from pathlib import Path
@durable_nb.activity
async def ask(i):
    await asyncio.sleep(0.001 * (i % 3))
    with Path('asks.log').open('a') as f:
        f.write(f'{i}\\n')
    return i * i
"""


def asked() -> list[int]:
    p = Path("asks.log")
    return [int(x) for x in p.read_text().split()] if p.exists() else []


def test_interrupted_cell_is_failed_never_replayed_and_keeps_finished_calls(
        new_shell: Callable[[], Shell], tmp_path: Path) -> None:
    cell = body("c", "first = await ask(1)\nimport asyncio\ntask = asyncio.current_task()\n"
                     "asyncio.get_running_loop().call_later(0.05, task.cancel)\nawait asyncio.sleep(30)")
    sh = new_shell()
    sh.run(ASK)
    with pytest.raises(asyncio.CancelledError):
        sh.durable(cell)
    assert sh.last_status()["state"] == "failed"
    with sqlite3.connect(tmp_path / "t.durable.db") as conn:
        assert conn.execute("SELECT state, error_type FROM execution").fetchall() == [("failed", "CancelledError")]
    sh2 = new_shell()
    sh2.run(ASK)
    with pytest.raises(asyncio.CancelledError):
        sh2.durable(cell)
    assert runs("c") == 2, "an interrupted cell never replays"
    assert asked() == [1], "the call finished before the interrupt replays"


def test_keyboard_interrupt_while_awaiting_is_failed(shell: Shell) -> None:
    with pytest.raises(KeyboardInterrupt):
        shell.durable("import asyncio\nawait asyncio.sleep(0)\nraise KeyboardInterrupt")
    assert shell.last_status()["state"] == "failed"


def test_gather_of_async_activities_replays_each_call(new_shell: Callable[[], Shell]) -> None:
    cell = body("c", "answers = await asyncio.gather(*(ask(i) for i in range(30)))")
    sh = new_shell()
    sh.run(ASK)
    sh.durable(cell)
    assert sh.ns["answers"] == [i * i for i in range(30)] and sorted(asked()) == list(range(30))
    sh2 = new_shell()
    sh2.run(ASK)
    sh2.durable(cell, "--force")
    assert runs("c") == 2 and sh2.ns["answers"] == [i * i for i in range(30)]
    assert len(asked()) == 30, "every call replays from the log"


def test_bounded_gather_keeps_order_and_limit(new_shell: Callable[[], Shell]) -> None:
    sh = new_shell()
    sh.run(ASK)
    sh.durable("import durable_nb\nbounded = await durable_nb.gather(*(ask(i) for i in range(20)), limit=3)")
    assert sh.ns["bounded"] == [i * i for i in range(20)]

    async def fan_out() -> tuple[list[int], int]:
        running = peak = 0

        async def job(i: int) -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.001 * (7 - i % 7))
            running -= 1
            return i

        return await durable_nb.gather(*(job(i) for i in range(40)), limit=4), peak

    results, peak = asyncio.run(fan_out())
    assert results == list(range(40)) and peak == 4
    with pytest.raises(ValueError, match="positive integer"):
        asyncio.run(durable_nb.gather(limit=0))


def test_bounded_gather_cancels_the_rest_on_an_error() -> None:
    started: list[int] = []

    async def job(i: int) -> int:
        started.append(i)
        await asyncio.sleep(0.001)
        if i == 1:
            raise RuntimeError("job 1")
        await asyncio.sleep(10)
        return i

    async def main() -> None:
        await durable_nb.gather(*(job(i) for i in range(10)), limit=2)

    with pytest.raises(RuntimeError, match="job 1"):
        asyncio.run(asyncio.wait_for(main(), 5))
    assert started[:2] == [0, 1] and len(started) <= 3, "the awaitables still waiting never started"


def test_async_generator_activity_is_refused_with_the_way_out() -> None:
    async def tokens(prompt: str):  # type: ignore[no-untyped-def]
        yield prompt

    with pytest.raises(TypeError, match=r"async generator function .*return \[c async for c in stream"):
        durable_nb.activity(tokens)


def test_durable_mode_off_option_and_autoawait_off(shell: Shell, tmp_path: Path) -> None:
    shell.run("%durable on")
    shell.run("import asyncio\nmode = await asyncio.sleep(0, 'on')")
    assert shell.ns["mode"] == "on" and shell.last_status()["state"] == "recorded"
    shell.run("%durable off")
    shell.durable("plain = await asyncio.sleep(0, 'plain')", "--off")
    assert shell.ns["plain"] == "plain"
    shell.run("%autoawait False")
    with pytest.raises(SyntaxError, match="outside"):
        shell.durable("await asyncio.sleep(0)")
    assert states(tmp_path / "t.durable.db") == ["recorded", "failed"], "as a sync cell with await: a failure"


def test_sync_cells_are_left_as_they_were(shell: Shell) -> None:
    source = "%%durable\nx = 'await me'\nasync def f():\n    await g()"
    assert shell.ip.transform_cell(source).startswith("get_ipython().run_cell_magic('durable', ''")
    shell.run(source)
    assert shell.last_status()["state"] == "recorded"
    shell.run("%%durable?")
    assert "--awaited" not in shell.ip.find_cell_magic("durable").__doc__
