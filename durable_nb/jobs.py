"""A notebook as a resumable batch job: `durable_nb.run_notebook()` and `durable-nb run`.

The notebook runs in a real kernel through nbclient, with every code cell durable (`%durable on` in the kernel
before the first cell), so a run that died — kernel OOM, a timeout, a preempted machine — is resumed by running
it again: recorded cells replay, activities resume mid-loop, and only what never finished runs.

- Parameters follow papermill: the values go into a cell tagged `injected-parameters` right after the cell
  tagged `parameters` (a previous injected cell is replaced). They are ordinary variables, so they enter the
  keys of the cells that read them: a changed value re-runs exactly those cells.
- Every execute_request carries the cell's metadata and `cellId`, as JupyterLab sends them, so the log links
  executions to cell ids and the `durable-off` tag opts a cell out in batch runs too.
- The runner survives its kernel: a kernel that dies is reported with the cell it was running, and the
  output notebook is written with everything up to there.

Nothing here is imported by `%load_ext durable_nb` or `durable-nb --help`: nbclient loads on the first run.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import html
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import DurableError
from .status import MIME
from .vocabulary import JOB_STATES as STATES
from .vocabulary import fmt_duration, look

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
INJECTED_ID = "injected-parameters"
OFF_TAG = "durable-off"
_WRITE_EVERY_S = 5.0  # the output notebook is also rewritten during long runs, at most this often


class NotebookFailed(DurableError):
    """Raised by `RunResult.raise_for_status()` when a cell failed or the kernel died."""


@dataclass
class CellResult:
    """One code cell of a run."""

    number: int                 # 1-based among the code cells
    index: int                  # position among all cells of the notebook
    cell_id: str
    label: str                  # the cell's --name, else its first line
    state: str = "not run"
    seconds: float = 0.0
    saved_s: float = 0.0        # a replay: the time it saved (the recorded run minus the replay)
    estimate_s: float | None = None  # the duration the log recorded for this cell before this run
    reason: str | None = None   # why a durable cell ran instead of replaying
    error: str | None = None

    def line(self, total: int) -> str:
        width = len(str(total))
        text = f"[{self.number:>{width}}/{total}] {look(self.state).icon} {self.state:<14} " \
               f"{fmt_duration(self.seconds):>8}  {self.label[:48]}"
        if self.state == "replayed":
            text += f"  (saved {fmt_duration(self.saved_s)})"
        elif self.reason and self.state in ("recorded", "not-replayable"):
            text += f"  ({self.reason[:60]})"
        if self.error:
            text += f"  {self.error[:200]}"
        return text


@dataclass
class RunResult:
    """What `run_notebook` did: per-cell states, time saved, where the output went, and why it stopped."""

    notebook: Path
    output: Path
    log: Path
    kernel: str
    cells: list[CellResult] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None           # the first failure, as "ErrorType: message"
    failed: CellResult | None = None    # the cell that failed, timed out or was running when the kernel died
    kernel_died: bool = False

    @property
    def ok(self) -> bool:
        return self.failed is None and self.error is None

    @property
    def exit_code(self) -> int:
        """0 ok, 3 a cell failed or timed out, 4 the kernel died (run again to resume)."""
        if self.ok:
            return 0
        return 4 if self.kernel_died else 3

    def count(self, state: str) -> int:
        return sum(1 for c in self.cells if c.state == state)

    @property
    def time_saved(self) -> float:
        return sum(c.saved_s for c in self.cells if c.state == "replayed")

    def raise_for_status(self) -> RunResult:
        if not self.ok:
            raise NotebookFailed(self.problem())
        return self

    def problem(self) -> str:
        if self.ok:
            return ""
        if self.kernel_died and self.failed is None:
            return f"the kernel died while starting for {self.notebook.name}; run it again."
        where = f"cell {self.failed.number} ({self.failed.label})" if self.failed else "the notebook"
        if self.kernel_died:
            return (f"the kernel died while running {where} of {self.notebook.name}; run it again to resume "
                    f"(recorded cells replay). Partial output: {self.output}")
        return f"{where} of {self.notebook.name} failed: {self.error}. Output so far: {self.output}"

    def summary(self) -> str:
        counts = " · ".join(f"{self.count(s)} {s}" for s in STATES if self.count(s))
        head = f"{self.notebook.name}: {len(self.cells)} code cells: {counts or 'none'}"
        return (f"{head}\ntook {fmt_duration(self.seconds)} · time saved by replays {fmt_duration(self.time_saved)}"
                f"\noutput: {self.output}\nlog:    {self.log}")

    def __str__(self) -> str:
        lines = [c.line(len(self.cells)) for c in self.cells]
        lines.append(self.summary())
        if not self.ok:
            lines.append(self.problem())
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        def row(c: CellResult) -> str:
            facts = c.error or (f"saved {fmt_duration(c.saved_s)}" if c.state == "replayed" else c.reason or "")
            return (f"<tr data-state='{html.escape(c.state)}'><td>{c.number}</td><td><code>{html.escape(c.label)}"
                    f"</code></td><td>{look(c.state).icon} {html.escape(c.state)}</td>"
                    f"<td>{fmt_duration(c.seconds)}</td><td>{html.escape(facts)}</td></tr>")

        summary = html.escape(self.summary()).replace("\n", "<br>")
        problem = f"<p><b>{html.escape(self.problem())}</b></p>" if not self.ok else ""
        return ("<div class='durable-nb-run'><table><thead><tr><th>#</th><th>cell</th><th>state</th><th>took</th>"
                f"<th></th></tr></thead><tbody>{''.join(row(c) for c in self.cells)}</tbody></table>"
                f"<p>{summary}</p>{problem}</div>")


def run_notebook(path: str | os.PathLike[str], *, parameters: Mapping[str, Any] | None = None,
                 output: str | os.PathLike[str] | None = None, log: str | os.PathLike[str] | None = None,
                 kernel: str | None = None, cell_timeout: float | None = None, from_scratch: bool = False,
                 progress: IO[str] | None = None) -> RunResult:
    """Run the notebook at `path` in a real kernel, every code cell durable, and write the executed notebook to
    `output` (default: `NOTEBOOK.out.ipynb` beside it; never the input). A failing cell or a dying kernel is
    not raised: it is in the result (`ok`, `failed`, `error`, `exit_code`; `raise_for_status()` raises).

    - `parameters`: values for the names the cell tagged `parameters` assigns (papermill's convention).
    - `log`: the durable log (default `NOTEBOOK.durable.db` beside the notebook).
    - `kernel`: a kernel name (default: the notebook's kernelspec, else python3).
    - `cell_timeout`: seconds a cell may run; then it is interrupted and the run stops.
    - `from_scratch`: records of earlier runs are not replayed (every cell and activity runs again).
    - `progress`: a stream for one line per cell (replayed / recorded / failed, time, estimate).

    Raises `DurableError` for bad input: a missing or malformed notebook, an unknown parameter, a bad kernel
    name, an output path that is the input.
    """
    nb_path = Path(path).expanduser()
    nb = read_notebook(nb_path)
    out_path = Path(output).expanduser() if output is not None else nb_path.with_name(nb_path.stem + ".out.ipynb")
    if out_path.resolve() == nb_path.resolve():
        raise DurableError(f"the output {out_path} is the input notebook; choose another -o (it is never "
                           "overwritten).")
    log_path = (Path(log).expanduser() if log is not None
                else nb_path.with_name(nb_path.stem + ".durable.db")).resolve()
    if parameters:
        inject_parameters(nb, nb_path, dict(parameters))
    kernel_name = kernel or nb.metadata.get("kernelspec", {}).get("name") or "python3"
    _check_kernel(kernel_name)
    runner = _Runner(nb, nb_path.resolve(), out_path, log_path, kernel_name, cell_timeout, from_scratch, progress)
    return runner.run()


def read_notebook(path: Path) -> Any:
    import nbformat

    if not path.is_file():
        raise DurableError(f"notebook {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        nb = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise DurableError(f"{path} is not a readable notebook ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}); is it .ipynb JSON?"
                           ) from exc
    if not isinstance(nb.get("cells"), list):
        raise DurableError(f"{path} is not a notebook: it has no list of cells.")
    return nb


def parameter_value(text: str) -> Any:
    """A `-p NAME VALUE` from the command line: a Python literal (1, 0.2, True, None, 'x', [1, 2]), else the
    text itself as a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def inject_parameters(nb: Any, nb_path: Path, parameters: dict[str, Any]) -> None:
    """Insert (or replace) the cell tagged `injected-parameters` after the cell tagged `parameters`."""
    import nbformat

    cells = nb.cells
    tagged = [i for i, c in enumerate(cells) if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise DurableError(f"{nb_path.name} has no cell tagged '{PARAMETERS_TAG}', so it takes no parameters "
                           f"(got {', '.join(parameters)}); tag the cell that sets their defaults.")
    names = _assigned_names(cells[tagged[0]].source)
    unknown = [n for n in parameters if n not in names]
    if unknown:
        known = ", ".join(sorted(names)) or "nothing"
        raise DurableError(f"unknown parameter {', '.join(unknown)}: the parameters cell of {nb_path.name} "
                           f"sets {known}.")
    lines = ["# Parameters"]
    for name, value in parameters.items():
        text = repr(value)
        try:
            same = ast.literal_eval(text) == value
        except (ValueError, SyntaxError):
            same = False
        if not same:
            raise DurableError(f"parameter {name}: a {type(value).__name__} cannot be written into a cell as a "
                               "literal; pass numbers, strings, booleans, None, lists or dicts of them.")
        lines.append(f"{name} = {text}")
    cell = nbformat.v4.new_code_cell("\n".join(lines) + "\n")  # type: ignore[no-untyped-call]
    cell.metadata["tags"] = [INJECTED_TAG]
    if nb.get("nbformat_minor", 0) >= 5 or "id" in cells[tagged[0]]:
        cell["id"] = INJECTED_ID  # a stable id: the log explains "input alpha changed" across runs
    else:
        cell.pop("id", None)
    kept = [c for c in cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    at = kept.index(cells[tagged[0]]) + 1
    nb.cells = [*kept[:at], cell, *kept[at:]]


def _assigned_names(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise DurableError(f"the parameters cell is not plain Python ({exc.msg}, line {exc.lineno}).") from exc
    names: set[str] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign | ast.AugAssign) else []
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Name):
                    names.add(sub.id)
    return names


def _check_kernel(name: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        manager.get_kernel_spec(name)
    except NoSuchKernel:
        installed = ", ".join(sorted(manager.find_kernel_specs())) or "none"
        raise DurableError(f"no kernel named {name!r} (installed: {installed}); choose one with --kernel."
                           ) from None


def recorded_durations(log: Path) -> dict[str, float]:
    """The last duration the log recorded for each cell id (the progress estimate); nothing is written."""
    if not log.is_file():
        return {}
    try:
        conn = sqlite3.connect(f"file:{log}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT cell_id, duration FROM execution WHERE state IN ('recorded', 'failed') "
                                "AND cell_id IS NOT NULL AND duration IS NOT NULL ORDER BY id").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return {}
    return {str(cell_id): float(duration) for cell_id, duration in rows}


def _label(source: str) -> str:
    lines = [line.strip() for line in source.strip().splitlines() if line.strip()]
    for line in lines:
        if line.startswith("%%durable") and "--name" in line:
            parts = line.split()
            at = parts.index("--name") + 1 if "--name" in parts else -1
            if 0 < at < len(parts):
                return parts[at]
    first = next((line for line in lines if not line.startswith("%%durable")), lines[0] if lines else "")
    return first or "(empty)"


class _Progress:
    """One line per finished cell; on a terminal also a live line for the running cell (elapsed, estimate)."""

    def __init__(self, stream: IO[str] | None, total: int) -> None:
        self.stream = stream
        self.total = total
        self.live = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self._running: CellResult | None = None
        self._started = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def say(self, text: str) -> None:
        if self.stream is not None:
            with self._lock:
                self.stream.write(("\r\x1b[K" if self.live else "") + text + "\n")
                self.stream.flush()

    def start(self, cell: CellResult, remaining_estimate: float) -> None:
        self._running, self._started = cell, time.perf_counter()
        if self.live and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="durable-nb-progress", daemon=True)
            self._ticker.start()
        self._remaining = remaining_estimate

    def done(self, cell: CellResult) -> None:
        self._running = None
        self.say(cell.line(self.total))

    def close(self) -> None:
        self._stop.set()

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            cell = self._running
            if cell is None or self.stream is None:
                continue
            elapsed = time.perf_counter() - self._started
            est = f" of ~{fmt_duration(cell.estimate_s)}" if cell.estimate_s else ""
            rest = f" · ~{fmt_duration(self._remaining)} left" if self._remaining else ""
            with self._lock:
                self.stream.write(f"\r\x1b[K[{cell.number}/{self.total}] ◷ running {fmt_duration(elapsed)}{est}"
                                  f"{rest}  {cell.label[:48]}")
                self.stream.flush()


class _Runner:
    def __init__(self, nb: Any, nb_path: Path, out_path: Path, log_path: Path, kernel: str,
                 cell_timeout: float | None, from_scratch: bool, progress: IO[str] | None) -> None:
        self.nb, self.nb_path, self.out_path, self.log_path = nb, nb_path, out_path, log_path
        self.kernel, self.cell_timeout, self.from_scratch = kernel, cell_timeout, from_scratch
        self.result = RunResult(nb_path, out_path, log_path, kernel)
        durations = recorded_durations(log_path)
        code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        self.cells = {i: CellResult(n, i, _cell_id(c, i), _label(c.source), estimate_s=durations.get(_cell_id(c, i)))
                      for n, (i, c) in enumerate(code, 1)}
        self.result.cells = list(self.cells.values())
        self.progress = _Progress(progress, len(self.cells))
        self._metadata: dict[str, Any] = {}
        self._last_write = time.monotonic()

    def run(self) -> RunResult:
        from jupyter_core.utils import run_sync  # also from a notebook, whose event loop is already running

        t0 = time.perf_counter()
        estimate = sum(c.estimate_s or 0.0 for c in self.cells.values())
        known = sum(1 for c in self.cells.values() if c.estimate_s is not None)
        self.progress.say(f"running {self.nb_path.name} ({len(self.cells)} code cells) in kernel {self.kernel} · "
                          f"log {self.log_path.name}" + (f" · {known} cells recorded before, ~{fmt_duration(estimate)}"
                                                         " if none replays" if known else "")
                          + (" · from scratch" if self.from_scratch else ""))
        try:
            run_sync(self._run)()
        finally:
            self.progress.close()
            self.result.seconds = time.perf_counter() - t0
            self._write()
        self.progress.say(self.result.summary())
        return self.result

    async def _run(self) -> None:
        from nbclient import NotebookClient
        from nbclient.exceptions import DeadKernelError

        client = NotebookClient(
            self.nb, kernel_name=self.kernel, timeout=self.cell_timeout, interrupt_on_timeout=True,
            error_on_timeout={"ename": "CellTimeoutError", "evalue": f"the cell ran longer than {self.cell_timeout} s "
                                                                      "(--cell-timeout)", "traceback": []},
            resources={"metadata": {"path": str(self.nb_path.parent)}}, record_timing=False,
            on_cell_execute=self._on_cell_execute)
        env = {**os.environ, "JPY_SESSION_NAME": str(self.nb_path)}
        try:
            async with client.async_setup_kernel(env=env):
                assert client.kc is not None
                self._send_cell_metadata(client.kc)
                await self._setup(client)
                await self._cells(client)
        except (DeadKernelError, RuntimeError) as exc:  # jupyter_client: "Kernel died before replying ..."
            if self.result.failed is None and (isinstance(exc, DeadKernelError) or "died" in str(exc)):
                self.result.error, self.result.kernel_died = "the kernel died while starting", True
            elif self.result.failed is None:
                raise
        finally:
            # nbclient leaves its at-exit cleanup registered when the kernel died during start-up.
            if client.km is not None:
                with contextlib.suppress(Exception):
                    await client._async_cleanup_kernel()
            atexit.unregister(client._cleanup_kernel)

    async def _cells(self, client: Any) -> None:
        from nbclient.exceptions import CellControlSignal, CellExecutionError, CellTimeoutError, DeadKernelError

        for index, cell in enumerate(self.nb.cells):
            if cell.cell_type != "code":
                continue
            result = self.cells[index]
            remaining = sum(c.estimate_s or 0.0 for c in self.cells.values() if c.number >= result.number)
            self.progress.start(result, remaining)
            t0 = time.perf_counter()
            try:
                await client.async_execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
            except DeadKernelError:
                self._stop(result, "killed", "the kernel died (killed, out of memory, or crashed)", died=True)
            except CellTimeoutError as exc:
                self._stop(result, "timed out", str(exc).splitlines()[0])
            except (CellExecutionError, CellControlSignal) as exc:
                ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", str(exc))
                timed_out = ename == "CellTimeoutError"
                self._stop(result, "timed out" if timed_out else "failed", f"{ename}: {evalue}")
            finally:
                result.seconds = time.perf_counter() - t0
            if result.state == "not run":
                self._classify(result, cell)
            self.progress.done(result)
            if self.result.failed is not None:
                return
            if time.monotonic() - self._last_write > _WRITE_EVERY_S:
                self._write()

    def _stop(self, cell: CellResult, state: str, error: str, died: bool = False) -> None:
        cell.state, cell.error = state, error
        self.result.failed, self.result.error, self.result.kernel_died = cell, error, died

    async def _setup(self, client: Any) -> None:
        """Durable by default for this kernel, on this log (the notebook itself is not changed)."""
        code = ("%load_ext durable_nb\n"
                f"%config DurableMagics.db = {str(self.log_path)!r}\n"
                f"%config DurableMagics.from_scratch = {self.from_scratch}\n"
                "%config DurableMagics.all_cells = True\n")
        self._metadata = {}
        reply = await client.async_wait_for_reply(client.kc.execute(code, silent=True, store_history=False))
        content = (reply or {}).get("content", {})
        if content.get("status") != "ok":
            raise DurableError(f"kernel {self.kernel} could not load durable_nb ({content.get('ename')}: "
                               f"{content.get('evalue')}); install durable_nb in that kernel's environment.")

    def _on_cell_execute(self, cell: Any, cell_index: int) -> None:
        self._metadata = {**cell.get("metadata", {}), "cellId": _cell_id(cell, cell_index)}

    def _send_cell_metadata(self, kc: Any) -> None:
        """nbclient sends execute_requests without metadata; send the cell's, with cellId, as JupyterLab does."""
        def execute(code: str, silent: bool = False, store_history: bool = True,
                    user_expressions: dict[str, Any] | None = None, allow_stdin: bool | None = None,
                    stop_on_error: bool = True) -> str:
            content = {"code": code, "silent": silent, "store_history": store_history,
                       "user_expressions": user_expressions or {}, "allow_stdin": False,
                       "stop_on_error": stop_on_error}
            msg = kc.session.msg("execute_request", content, metadata=self._metadata)
            kc.shell_channel.send(msg)
            return str(msg["header"]["msg_id"])

        kc.execute = execute

    def _classify(self, result: CellResult, cell: Any) -> None:
        statuses: list[dict[str, Any]] = [o["data"][MIME] for o in cell.get("outputs", [])
                                          if isinstance(o.get("data"), dict) and MIME in o["data"]]
        if not statuses:
            result.state = "ran"
            return
        last = statuses[-1]
        state = str(last.get("state"))
        result.state = state if state in STATES else "ran"
        result.reason = last.get("reason")
        if state == "replayed":
            result.saved_s = float(last.get("saved_s") or 0.0)

    def _write(self) -> None:
        import nbformat

        self._last_write = time.monotonic()
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out_path.with_name(f".{self.out_path.name}.{os.getpid()}.tmp")
        try:
            nbformat.write(self.nb, tmp)  # type: ignore[no-untyped-call]
            os.replace(tmp, self.out_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DurableError(f"cannot write the output notebook {self.out_path}: {exc}") from exc


def _cell_id(cell: Any, index: int) -> str:
    return str(cell.get("id") or f"cell-{index}")
