"""Async durable cells in real ipykernels (ipykernel awaits the cell on its own loop): record and replay after a
restart, failures, a SIGKILL in the middle of a 300-call gather, and Jupyter's interrupt."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from durable_nb.demo import NotebookKernel

pytestmark = pytest.mark.integration

CALLS = 300

ASK = """
import asyncio, random, durable_nb
SIDE = {side!r}

@durable_nb.activity
async def ask(i):
    await asyncio.sleep(random.Random(i).uniform(0.05, 1.5))
    with open(SIDE, "a") as f:   # the side channel: one line per call that really ran to its end
        f.write(f"{{i}}\\n")
    return {{"i": i, "v": (i * i) % 97}}
"""

GATHER = f"""%%durable
import hashlib, json
answers = await asyncio.gather(*(ask(i) for i in range({CALLS})))
print("DIGEST", hashlib.sha256(json.dumps(answers).encode()).hexdigest())
"""

CELLS = [
    "%%durable\nimport asyncio\nopen('runs.txt', 'a').write('a\\n')\nprint('before')\n"
    "x = await asyncio.sleep(0.01, 41) + 1\nprint('after', x)\nx",
    "%%durable\nopen('runs.txt', 'a').write('b\\n')\nasync def stream(n):\n    for i in range(n):\n"
    "        await asyncio.sleep(0)\n        yield i\nclass Session:\n    async def __aenter__(self):\n"
    "        return 'open'\n    async def __aexit__(self, *exc):\n        pass\n"
    "items = [i async for i in stream(3)]\nasync for i in stream(2):\n    items.append(i)\n"
    "async with Session() as opened:\n    state = opened.upper()",
    "assert x == 42 and _ == 42 and items == [0, 1, 2, 0, 1] and state == 'OPEN' and isinstance(Session(), Session)"
    "\nprint('checked')",
    "%%durable\nasync def boom():\n    await asyncio.sleep(0)\n    raise ValueError('no answer')\nawait boom()",
]


def execution_states(db: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT state, error_type FROM execution ORDER BY id").fetchall()


@pytest.fixture
def notebook(tmp_path: Path) -> Path:
    path = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), path)
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"DURABLE_NB_SECRET_FILE": str(tmp_path / "secret"), "PYTHONHASHSEED": "0"}


@pytest.fixture
def kernels() -> Iterator[list[NotebookKernel]]:
    made: list[NotebookKernel] = []
    yield made
    for k in made:
        if k.km.is_alive():
            k.close()


def start(notebook: Path, env: dict[str, str], kernels: list[NotebookKernel]) -> NotebookKernel:
    kernel = NotebookKernel(notebook, env)
    kernels.append(kernel)
    assert kernel.execute("%load_ext durable_nb").status == "ok"
    return kernel


def test_await_async_for_async_with_record_then_replay_after_restart(
        notebook: Path, env: dict[str, str], kernels: list[NotebookKernel]) -> None:
    first = start(notebook, env, kernels)
    runs1 = [first.execute(c) for c in CELLS]
    assert [r.status for r in runs1] == ["ok", "ok", "ok", "error"], runs1[2].text()
    assert runs1[0].durable_states() == ["recorded"] and runs1[1].durable_states() == ["recorded"]
    assert runs1[3].durable_states() == ["failed"] and "no answer" in str(runs1[3].outputs[-1]["content"])
    first.close()

    second = start(notebook, env, kernels)
    runs2 = [second.execute(c) for c in CELLS]
    assert [r.status for r in runs2] == ["ok", "ok", "ok", "error"], runs2[2].text()
    assert runs2[0].durable_states() == ["replayed"] and runs2[1].durable_states() == ["replayed"]
    assert runs2[3].durable_states() == ["failed"], "a failed cell runs again"
    assert "before\nafter 42\n" in runs2[0].text() and "checked" in runs2[2].text()
    shown = [o["msg_type"] for o in runs2[0].outputs if o["msg_type"] != "update_display_data"]
    assert shown[-1] == "execute_result", "the replayed value is Out[n]"
    assert (notebook.parent / "runs.txt").read_text().split() == ["a", "b"], "replays never ran the cells"
    states = [s for s, _ in execution_states(notebook.with_name("nb.durable.db"))]
    assert states == ["recorded", "recorded", "failed", "replayed", "replayed", "failed"]


def called(side: Path) -> list[int]:
    return [int(x) for x in side.read_text().split()] if side.exists() else []


def expected_digest() -> str:
    answers = [{"i": i, "v": (i * i) % 97} for i in range(CALLS)]
    return hashlib.sha256(json.dumps(answers).encode()).hexdigest()


def test_sigkill_during_gather_then_rerun_calls_only_what_was_not_recorded(
        notebook: Path, env: dict[str, str], kernels: list[NotebookKernel]) -> None:
    side = notebook.parent / "calls.txt"
    kill_at = random.Random().randrange(20, CALLS - 20)
    first = start(notebook, env, kernels)
    assert first.execute(ASK.format(side=str(side))).status == "ok"
    first.kc.execute(GATHER)  # not waited for
    deadline = time.monotonic() + 60
    while len(called(side)) < kill_at:
        assert time.monotonic() < deadline, "the gather did not reach the kill point"
        time.sleep(0.002)
    first.kill()
    first.close()
    run1 = called(side)
    assert kill_at <= len(run1) < CALLS, f"killed after {len(run1)} of {CALLS} calls (target {kill_at})"
    side.unlink()

    second = start(notebook, env, kernels)
    assert second.execute(ASK.format(side=str(side))).status == "ok"
    rerun = second.execute(GATHER, timeout=120)
    assert rerun.status == "ok", rerun.text()
    assert f"DIGEST {expected_digest()}" in rerun.text(), "the result equals an uninterrupted run's"
    run2 = called(side)
    assert len(run2) == len(set(run2)), "each call ran at most once in the re-run"
    assert set(run1) | set(run2) == set(range(CALLS))
    # A call that finished in the first kernel is recorded before its result is returned; the one whose side
    # channel line was written in the instant before the kill may not be.
    assert len(set(run1) & set(run2)) <= 1, sorted(set(run1) & set(run2))


def test_interrupt_while_awaiting_is_failed_not_replayed_and_keeps_finished_calls(
        notebook: Path, env: dict[str, str], kernels: list[NotebookKernel]) -> None:
    side = notebook.parent / "calls.txt"
    gate = notebook.parent / "gate.txt"
    gate.write_text("wait")
    # An agent awaits one short call after another. (ipykernel's SIGINT handler only runs when the event loop
    # wakes up: a single long `await asyncio.sleep(60)` is interrupted at its end, in plain cells too.)
    cell = ("%%durable\nfirst = await ask(7)\nprint('asked', flush=True)\n"
            "while open('gate.txt').read() == 'wait':\n    await asyncio.sleep(0.05)\ndone = True")
    kernel = start(notebook, env, kernels)
    assert kernel.execute(ASK.format(side=str(side))).status == "ok"

    def interrupt_once_asked(run: object) -> None:
        if "asked" in run.text() and not getattr(run, "interrupted", False):  # type: ignore[attr-defined]
            run.interrupted = True  # type: ignore[attr-defined]
            kernel.km.interrupt_kernel()

    interrupted = kernel.execute(cell, timeout=60, on_output=interrupt_once_asked)
    assert interrupted.status == "error" and interrupted.seconds < 30
    assert interrupted.durable_states() == ["failed"]
    db = notebook.with_name("nb.durable.db")
    assert execution_states(db)[-1] == ("failed", "CancelledError")
    gate.write_text("go")
    again = kernel.execute(cell)
    assert again.status == "ok" and again.durable_states() == ["recorded"], again.text()
    assert "previous run failed" in again.durable_statuses()[0]["message"]
    assert called(side) == [7], "the call that finished before the interrupt replayed"
