"""Run a notebook through a real kernel the way JupyterLab does (cell ids included), kill it part way with
SIGKILL, run it again, and report what replayed. `make demo` runs `python -m durable_nb.demo NOTEBOOK`.

`NotebookKernel` is also what the integration tests drive kernels with.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shutil
import signal
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class CellRun:
    index: int
    source: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    status: str = "ok"
    seconds: float = 0.0

    def text(self) -> str:
        parts = []
        for out in self.outputs:
            if out["msg_type"] == "stream":
                parts.append(out["content"]["text"])
            elif "data" in out["content"]:
                parts.append(out["content"]["data"].get("text/plain", ""))
        return "".join(parts)

    def durable_statuses(self) -> list[dict[str, Any]]:
        """The final payload of each durable status display this cell showed (updates replace by display_id)."""
        found: dict[str, dict[str, Any]] = {}
        for out in self.outputs:
            status = out["content"].get("data", {}).get("application/vnd.durable-nb.status+json")
            if status is not None:
                found[out["content"].get("transient", {}).get("display_id", str(len(found)))] = status
        return list(found.values())

    def durable_states(self) -> list[str]:
        return [s["state"] for s in self.durable_statuses()]


class KernelDied(RuntimeError):
    pass


class NotebookKernel:
    """A real ipykernel started in the notebook's folder, told the notebook's path like Jupyter does."""

    def __init__(self, notebook: Path, env: dict[str, str] | None = None, *, kernel_name: str = "python3") -> None:
        from jupyter_client.manager import KernelManager

        self.notebook = notebook.resolve()
        self.km = KernelManager(kernel_name=kernel_name)
        kernel_env = {**os.environ, "JPY_SESSION_NAME": str(self.notebook), **(env or {})}
        self.km.start_kernel(cwd=str(self.notebook.parent), env=kernel_env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def execute(self, source: str, *, cell_id: str | None = None, timeout: float = 600,
                on_output: Any = None, tags: list[str] | None = None) -> CellRun:
        """Execute one cell and collect its iopub messages until the kernel is idle again. The request carries
        the cell id and tags in its metadata, as JupyterLab sends them."""
        content = {"code": source, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": True}
        metadata: dict[str, Any] = {"cellId": cell_id} if cell_id else {}
        if tags is not None:
            metadata["tags"] = tags
        msg = self.kc.session.msg("execute_request", content, metadata=metadata)
        self.kc.shell_channel.send(msg)
        run = CellRun(index=-1, source=source)
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self.kc.get_iopub_msg(timeout=0.5)
            except queue.Empty:
                if not self.km.is_alive():
                    raise KernelDied(f"the kernel died while running:\n{source[:200]}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cell did not finish within {timeout} s:\n{source[:200]}") from None
                continue
            if reply["parent_header"].get("msg_id") != msg["header"]["msg_id"]:
                continue
            kind = reply["msg_type"]
            if kind == "status" and reply["content"]["execution_state"] == "idle":
                break
            if kind in ("stream", "display_data", "update_display_data", "execute_result", "error",
                        "clear_output"):
                run.outputs.append({"msg_type": kind, "content": reply["content"]})
                if kind == "error":
                    run.status = "error"
                if on_output is not None:
                    on_output(run)
        run.seconds = time.perf_counter() - t0
        return run

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a crash would: no atexit, no cleanup."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    @property
    def pid(self) -> int:
        return int(self.km.provisioner.pid)  # type: ignore[union-attr]

    def close(self) -> None:
        """A clean shutdown, as Jupyter's: the kernel gets a shutdown request and runs its exit handlers."""
        self.kc.stop_channels()
        if self.km.is_alive():
            self.km.shutdown_kernel(now=False)


def code_cells(notebook: Path) -> list[tuple[str, str]]:
    import nbformat

    nb = nbformat.read(notebook, as_version=4)  # type: ignore[no-untyped-call]
    return [(c.get("id") or str(i), c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def run_all(notebook: Path, *, kill_when: str | None = None, kill_after: float = 1.0,
            env: dict[str, str] | None = None) -> list[CellRun]:
    """Run every code cell in order; if `kill_when` appears in a cell's source, SIGKILL the kernel
    `kill_after` seconds into that cell."""
    kernel = NotebookKernel(notebook, env)
    results: list[CellRun] = []
    try:
        for index, (cell_id, source) in enumerate(code_cells(notebook)):
            timer = None
            if kill_when and kill_when in source:
                timer = threading.Timer(kill_after, kernel.kill)
                timer.start()
            try:
                run = kernel.execute(source, cell_id=cell_id)
            except KernelDied:
                run = CellRun(index, source, status="killed", seconds=kill_after)
            finally:
                if timer is not None:
                    timer.cancel()
            run.index = index
            results.append(run)
            if run.status != "ok":
                break
    finally:
        if kernel.km.is_alive():
            kernel.close()
    return results


def _summary(log: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{log}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT run_id, coalesce(cell_name, cell_id), state, duration, saved_seconds, reason "
            "FROM executions ORDER BY execution_id").fetchall()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--workdir", type=Path, default=Path("demo-run"),
                        help="A fresh copy of the notebook runs here (the log is written beside it).")
    parser.add_argument("--kill-when", default="the slow cell",
                        help="Kill the first run in the first cell containing this.")
    args = parser.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    nb = args.workdir / args.notebook.name
    shutil.copy(args.notebook, nb)
    print(f"1st run of {nb} — the kernel will be SIGKILLed inside the cell mentioning {args.kill_when!r}")
    first = run_all(nb, kill_when=args.kill_when, kill_after=1.5)
    _print_runs(first)
    print("\n2nd run (a fresh kernel, Run All):")
    t0 = time.perf_counter()
    second = run_all(nb)
    _print_runs(second)
    print(f"2nd run took {time.perf_counter() - t0:.1f} s in all")
    log = nb.with_name(nb.stem + ".durable.db")
    rows = _summary(log)
    replayed = [r for r in rows if r[2] == "replayed"]
    print(f"\nlog {log}: " + ", ".join(f"{s} {sum(1 for r in rows if r[2] == s)}"
                                       for s in ("recorded", "replayed", "crashed", "failed")))
    print(f"time saved by {len(replayed)} replayed cells: {sum(r[4] or 0 for r in replayed):.1f} s")
    return 0 if all(r.status == "ok" for r in second) else 1


def _print_runs(runs: list[CellRun]) -> None:
    for run in runs:
        first_line = run.source.strip().splitlines()[0][:40] if run.source.strip() else ""
        print(f"  cell {run.index}: {run.status:<6} {run.seconds:6.2f} s  {first_line}")
        for status in run.durable_statuses():
            print(f"      {status['state']}: {status['message']}")


if __name__ == "__main__":
    sys.exit(main())
