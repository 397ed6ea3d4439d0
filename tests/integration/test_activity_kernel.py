"""A real kernel runs a 2,000-iteration activity loop, is SIGKILLed at a random iteration, and a new kernel
re-runs the loop: only the iterations that were not recorded call the function again."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager
from shells import user_env

pytestmark = pytest.mark.integration

ITERATIONS = 2000

SETUP = """
import time, durable_nb.calls as act
from durable_nb.log.calls import flush
from durable_nb.session import open_log
open_log({db!r})
SIDE = {side!r}

@act.activity
def work(i):
    with open(SIDE, "a") as f:   # the side channel: one line per real call
        f.write(f"{{i}}\\n")
    time.sleep(0.001)
    return {{"i": i, "v": (i * i) % 97}}
"""

LOOP = f"""
import hashlib, json
results = [work(i) for i in range({ITERATIONS})]
print("DIGEST", hashlib.sha256(json.dumps(results).encode()).hexdigest())
"""


def expected_digest() -> str:
    results = [{"i": i, "v": (i * i) % 97} for i in range(ITERATIONS)]
    return hashlib.sha256(json.dumps(results).encode()).hexdigest()


class Kernel:
    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(cwd), env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 120) -> str:
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append("\n".join(msg["content"]["traceback"]))

        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        text = "".join(out)
        assert reply["content"]["status"] == "ok", text
        return text

    def start(self, code: str) -> None:
        self.kc.execute(code)

    def kill(self) -> None:
        self.km.signal_kernel(signal.SIGKILL)

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernels(tmp_path: Path) -> Iterator[list[Kernel]]:
    made: list[Kernel] = []
    yield made
    for k in made:
        k.close()


def called(side: Path) -> list[int]:
    return [int(x) for x in side.read_text().split()] if side.exists() else []


def test_sigkill_mid_loop_then_rerun_calls_only_unrecorded_iterations(tmp_path: Path,
                                                                      kernels: list[Kernel]) -> None:
    db, side = tmp_path / "loop.durable.db", tmp_path / "calls.txt"
    env = {**user_env(tmp_path / "secret"), "PYTHONHASHSEED": "0"}
    setup = SETUP.format(db=str(db), side=str(side))
    kill_at = random.Random().randrange(100, ITERATIONS - 100)

    first = Kernel(tmp_path, env)
    kernels.append(first)
    first.run(setup)
    first.start(LOOP)
    deadline = time.monotonic() + 120
    while len(called(side)) < kill_at:
        assert time.monotonic() < deadline, "the loop did not reach the kill point"
        time.sleep(0.002)
    first.kill()
    first.close()  # reaps it: a zombie's pid still looks alive, and a live run's journal is not imported
    kernels.remove(first)
    run1 = called(side)
    assert kill_at <= len(run1) < ITERATIONS, f"killed at {len(run1)} of {ITERATIONS} (target {kill_at})"
    side.unlink()

    second = Kernel(tmp_path, env)
    kernels.append(second)
    second.run(setup)
    output = second.run(LOOP)
    run2 = called(side)
    assert f"DIGEST {expected_digest()}" in output
    # Every iteration ran exactly once across both kernels, except possibly the one in flight at the kill.
    in_flight = set(run1[-1:])
    assert set(run2) == set(range(ITERATIONS)) - set(run1) | (set(run2) & in_flight)
    assert len(run2) == len(set(run2)) and len(run2) <= ITERATIONS - len(run1) + 1
    second.run("flush()")  # the flusher imports the journal every 20 ms; do it now
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        recorded = conn.execute("SELECT count(*) FROM activities WHERE state = 'recorded'").fetchone()[0]
    assert recorded >= ITERATIONS  # imported from the dead kernel's journal and the live one's


EXAMPLES = Path(__file__).parents[2] / "example_notebooks"


def run_notebook(path: Path, env: dict[str, str]) -> Any:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)
    return nb


def crash_then_resume(tmp_path: Path, name: str, crash_at: int) -> str:
    """Run an example notebook whose kernel kills itself (AGENT_CRASH_AT), then again without it; return the
    text the second run printed."""
    import os
    import shutil

    from nbclient.exceptions import DeadKernelError

    nb_path = tmp_path / name
    shutil.copy(EXAMPLES / name, nb_path)
    env = {**os.environ, **user_env(tmp_path / "secret")}
    with pytest.raises(DeadKernelError):
        run_notebook(nb_path, {**env, "AGENT_CRASH_AT": str(crash_at)})
    nb = run_notebook(nb_path, env)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_agent_loop_notebook_resumes_after_its_kernel_dies(tmp_path: Path) -> None:
    text = crash_then_resume(tmp_path, "agent_loop.ipynb", 12)
    assert "30 tasks done" in text
    # Tasks 0-11 (24 calls) were recorded before the kernel died: only the other 36 ran again.
    assert "API calls made by this run: 36 of 60" in text, text


def test_async_agent_notebook_resumes_mid_fan_out_after_its_kernel_dies(tmp_path: Path) -> None:
    text = crash_then_resume(tmp_path, "async_agent.ipynb", 20)
    assert "16 tasks done" in text and "all 16 tasks are solved" in text
    # 20 answers were recorded before the kernel died: only the other 13 calls went to the API again.
    assert "model calls made by this run: 13 of 33" in text, text
