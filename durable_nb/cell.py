"""One durable cell: compute its key, then replay it from the log or run it and record what it produced.

Sync and async cells share one code path: `DurableCell.steps()` is a generator that runs the whole cell (key,
replay, execute, record) and yields only where the body must be awaited (a body with top-level `await`,
compiled with `ast.PyCF_ALLOW_TOP_LEVEL_AWAIT`, evaluates to a coroutine). `drive` runs it synchronously (a sync
body never yields), `drive_async` awaits what it yields, on the event loop IPython is already running.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
import os
import re
import sys
import time
import traceback
import types
from collections.abc import Awaitable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import xxhash

from . import capture, cell_outputs, environment, file_deps, settings, sharing, tracebacks, trust
from .analysis import CellAnalysis, analyze
from .calls import execution_scope
from .cell_log import CellLog
from .codecs import KEY_CODECS
from .errors import DecodeError, DurableError, LogError, LogTransactionLost, Unfingerprintable, UntrustedError
from .fingerprint import fingerprint, fingerprint_file, referenced_globals
from .log import background
from .log.cells import ExecutionStart, Recorded, saved_seconds
from .status import NOT_WRITTEN, SESSION, StatusLine, message
from .vocabulary import iso

KEY_FORMAT = 1
ENV_PREFIX = "$"  # environment variables among a key's inputs: "$MODEL"
NOT_SET = "\0unset"
_IPYTHON_CACHE = re.compile(r"^(_+\d*|_i+\d*|_[ido]h)$")
_IPYTHON_SYNTAX = re.compile(r"[%!?]|^\s*(>>>|\.\.\.|In \[)|\A\s", re.MULTILINE)
# A record whose transaction was lost (errors.LogTransactionLost) is written this many times in all.
RECORD_ATTEMPTS = 2
_CO_COROUTINE = 0x0080  # inspect.CO_COROUTINE, without importing inspect

# A cell run as a generator: it yields the awaitables of an async body and gets back their values.
Steps: TypeAlias = Generator[Awaitable[Any], Any, Any]


def drive(steps: Steps) -> Any:
    """Run a cell's steps synchronously: a sync body never yields."""
    __tracebackhide__ = True
    try:
        awaitable = next(steps)
    except StopIteration as done:
        return done.value
    steps.close()
    raise RuntimeError(f"a synchronous durable cell tried to await {awaitable!r}")


async def drive_async(steps: Steps) -> Any:
    """Run a cell's steps, awaiting what they yield; an exception (an interrupt's CancelledError too) is thrown
    back into them, so the sync path's failure handling records it."""
    __tracebackhide__ = True
    try:
        awaitable = next(steps)
        while True:
            try:
                value = await awaitable
            except BaseException as exc:  # handed to the cell, which records it and raises it again
                awaitable = steps.throw(exc)
            else:
                awaitable = steps.send(value)
    except StopIteration as done:
        return done.value


@dataclass
class CellOptions:
    name: str | None = None
    force: bool = False
    deps: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    deps_files: list[str] = field(default_factory=list)
    auto_deps: bool = True  # files read and environment variables named are found without being declared


@dataclass
class Key:
    value: str
    inputs: dict[str, str]
    files: dict[str, str]
    problems: list[str]


def is_visible(shell: Any, name: str) -> bool:
    """A user variable: not one of IPython's caches (`_i1`, `_1`, ...) or helpers, not a dunder. Tested name by
    name: IPython's history makes the namespace long."""
    return name in shell.user_ns and _user_name(shell, name, shell.user_ns[name])


def _user_name(shell: Any, name: str, value: object) -> bool:
    if name[:1] == "_" and (_IPYTHON_CACHE.match(name) or name.endswith("__")):
        return False
    hidden = shell.user_ns_hidden
    return not (name in hidden and value is hidden[name])


_transformed: dict[tuple[int, str], str] = {}


def _transform(shell: Any, code: str) -> str:
    """IPython's input transforms (magics, `!cmd`), memoized: Run All replays are dominated by small costs.
    Code none of them applies to (no %, !, ?, prompt or leading indent) is plain Python already."""
    if not _IPYTHON_SYNTAX.search(code):
        return code
    key = (id(shell.input_transformer_manager), code)
    if key not in _transformed:
        if len(_transformed) > 1024:
            _transformed.clear()
        _transformed[key] = shell.transform_cell(code)
    return _transformed[key]


def _user_function(value: object, ns: dict[str, Any]) -> bool:
    return isinstance(value, types.FunctionType) and value.__globals__ is ns


def input_names(analysis: CellAnalysis, shell: Any, opts: CellOptions) -> list[str]:
    """Names the cell reads, plus the globals that notebook functions it reads use, transitively."""
    ns = shell.user_ns
    todo = [n for n in (*analysis.reads, *opts.deps) if n not in opts.ignore and is_visible(shell, n)]
    found: dict[str, None] = {}
    while todo:
        name = todo.pop(0)
        if name in found:
            continue
        found[name] = None
        value = ns[name]
        if _user_function(value, ns):
            todo.extend(g for g in sorted(referenced_globals(value))
                        if g not in opts.ignore and is_visible(shell, g))
    return list(found)


def compute_key(analysis: CellAnalysis, shell: Any, opts: CellOptions) -> Key:

    ns = shell.user_ns
    inputs: dict[str, str] = {}
    problems: list[str] = []
    for name in input_names(analysis, shell, opts):
        try:
            inputs[name] = fingerprint(ns[name])
        except Unfingerprintable as exc:
            problems.append(f"input {name} cannot be fingerprinted ({exc})")
    if opts.auto_deps:
        # By value, hashed: a variable may hold a secret, and the log keeps only this hash of it.
        inputs.update({ENV_PREFIX + n: xxhash.xxh3_128_hexdigest(f"{n}={os.environ.get(n, NOT_SET)}".encode())
                       for n in analysis.environ})
    files = {p: _file_fingerprint(p) for p in opts.deps_files}
    literal_deps = sorted(d for d in opts.deps if d not in ns)
    material = json.dumps([KEY_FORMAT, analysis.normalized, inputs, files, literal_deps, sorted(opts.ignore),
                           KEY_CODECS], sort_keys=True)
    if problems:
        # An input we cannot fingerprint could have changed unseen: such a record must never match.
        material += time.time_ns().__str__()
    return Key(xxhash.xxh3_128_hexdigest(material.encode()), inputs, files, problems)


def _file_fingerprint(path: str) -> str:
    try:
        return fingerprint_file(path)
    except FileNotFoundError:
        return "missing"


def _input(name: str) -> str:
    return f"environment variable {name[1:]}" if name.startswith(ENV_PREFIX) else f"input {name}"


def explain(prev: dict[str, Any] | None, key: Key, code_hash: str, opts: CellOptions) -> str | None:
    """Why the cell runs instead of replaying, naming what changed; None for a cell never seen before."""
    if opts.force:
        return "--force"
    if key.problems:
        return key.problems[0]
    if prev is None:
        return None
    changes = []
    if prev["code_hash"] != code_hash:
        changes.append("code changed")
    before: dict[str, str] = prev["inputs"]
    changes += [f"{_input(n)} changed" for n, fp in key.inputs.items() if n in before and before[n] != fp]
    changes += [f"new {_input(n)}" for n in key.inputs if n not in before]
    changes += [f"file {p} changed" for p, fp in key.files.items() if prev["deps_files"].get(p) != fp]
    if changes:
        return ", ".join(changes)
    if prev["state"] in ("failed", "crashed", "running"):
        return f"previous run {prev['state']}"
    if not prev["replayable"]:
        return "previous run was not replayable"
    return "no matching record"


class DurableCell:
    """Runs one `%%durable` cell body against one log."""
    def __init__(self, shell: Any, log: CellLog, code: str, opts: CellOptions, cell_id: str | None) -> None:
        self.shell = shell
        self.log = log
        self.code = code
        self.opts = opts
        self.cell_id = cell_id
        self.status = StatusLine(shell)
        self.awaiting = False  # steps(awaiting=True): the body may use top-level await

    def run(self) -> Any:
        __tracebackhide__ = True
        return drive(self.steps())

    async def run_async(self) -> Any:
        __tracebackhide__ = True
        return await drive_async(self.steps(awaiting=True))

    def steps(self, awaiting: bool = False) -> Steps:
        __tracebackhide__ = True
        self.awaiting = awaiting
        transformed = _transform(self.shell, self.code)
        analysis = analyze(transformed)
        code_hash = xxhash.xxh3_128_hexdigest(analysis.normalized.encode())
        key = compute_key(analysis, self.shell, self.opts)
        start = ExecutionStart(self.opts.name, self.cell_id, self.shell.execution_count, key.value, self.code,
                               code_hash, key.inputs, key.files, None)
        reason = None
        try:  # the log fails before the user's code started (damaged, read-only, full): the cell runs unlogged
            if not self.opts.force and not key.problems:
                recorded = self.log.find_replayable(start)
                moved = file_deps.changes(recorded.read_files) if recorded is not None and self.opts.auto_deps else []
                if moved:
                    reason, recorded = ", ".join(moved), None
                if recorded is not None:
                    try:
                        return self._replay(recorded, start, analysis.imports)
                    except UntrustedError as exc:
                        reason = trust.untrusted_reason(exc)
                    except DecodeError as exc:
                        differs = environment.differences(self.log, recorded.id)
                        reason = f"recorded value could not be loaded here: {exc}" + (
                            f" ({'; '.join(differs)})" if differs else "")
            prev = self.log.previous_execution(start)
        except LogError as exc:
            return (yield from run_unlogged(self.shell, self.code, str(exc), awaiting=self.awaiting,
                                             name=self.opts.name))
        start.reason = reason or explain(prev, key, code_hash, self.opts)
        return (yield from self._execute(transformed, analysis, start))

    # -- replay -------------------------------------------------------------------------------------------

    def _replay(self, recorded: Recorded, start: ExecutionStart, imports: tuple[str, ...]) -> Any:
        t0 = time.perf_counter()
        result = cell_outputs.Restore(self.log, self.shell.user_ns, start.inputs, imports).run(recorded.id)
        events = self.log.execution_events(recorded.id)
        differs = environment.differences(self.log, recorded.id)
        replayed = functools.partial(self._payload, "replayed", recorded_at=recorded.started_at,
                                     original=recorded.duration, replayed_from=recorded.id,
                                     reason="; ".join(differs) or None)
        self.status.show(replayed())  # above the replayed outputs; its figures once they are known
        shown = capture.replay(self.shell, events, result)
        duration = time.perf_counter() - t0
        self.log.record_replay(start, recorded, duration)
        self.status.show(replayed(duration=duration, saved=saved_seconds(recorded.duration, duration)))
        return None if shown else result

    # -- execute and record ---------------------------------------------------------------------------------

    def _execute(self, transformed: str, analysis: CellAnalysis, start: ExecutionStart) -> Steps:
        __tracebackhide__ = True
        try:
            execution_id = self.log.start_execution(start)
        except LogError as exc:
            return (yield from run_unlogged(self.shell, self.code, str(exc), awaiting=self.awaiting,
                                             name=self.opts.name))
        self.status.show(self._payload("running", reason=start.reason, execution_id=execution_id))
        ns = self.shell.user_ns
        before = dict(ns)  # a C-level copy: holding the old objects also keeps their ids unique
        captured = capture.Capture(self.shell)
        settings_before = settings.snapshot(self.code)
        t0 = time.perf_counter()
        try:
            watch = file_deps.watching() if self.opts.auto_deps else contextlib.nullcontext(file_deps.Reads())
            with captured, execution_scope(execution_id), watch as reads:
                result = yield from self._exec_user_code(transformed, analysis)
                duration = time.perf_counter() - t0
                if result is not None:
                    captured.show_result(result)
        except BaseException as exc:
            duration = time.perf_counter() - t0
            self._record_failure(execution_id, captured.events, duration, exc)
            self.status.show(self._payload("failed", reason=start.reason, duration=duration,
                                           error=f"{type(exc).__name__}: {exc}", execution_id=execution_id))
            raise
        changed_settings = settings.changed(settings_before, settings.snapshot(self.code))
        read_files = self._files_read(reads, analysis, start) if self.opts.auto_deps else {}
        problems = self._record(execution_id, analysis, start, before, result, captured.events, duration,
                                changed_settings, read_files)
        state = "not-replayable" if problems else "recorded"
        self.status.show(self._payload(state, reason=start.reason, duration=duration, problems=problems,
                                       execution_id=execution_id))
        return None if captured.showed_result else result

    def _files_read(self, reads: file_deps.Reads, analysis: CellAnalysis, start: ExecutionStart) -> dict[str, Any]:
        ns = self.shell.user_ns
        named = [*analysis.strings, *(ns[n] for n in start.inputs if isinstance(ns.get(n), str | os.PathLike))]
        return file_deps.record(reads, named, file_deps.log_files(self.log.path), listings=analysis.lists_dirs)

    def _exec_user_code(self, transformed: str, analysis: CellAnalysis) -> Steps:
        __tracebackhide__ = True
        return (yield from exec_steps(self.shell, self.code, transformed, analysis, awaiting=self.awaiting))

    def _record_failure(self, execution_id: int, events: list[tuple[str, Any]], duration: float,
                        exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(exc))
        try:
            with self.log.transaction():
                self.log.write_events(execution_id, events)
                self.log.finish_execution(execution_id, state="failed", duration=duration, error=exc, traceback=tb)
        except LogError:
            pass  # the user's own exception is what they need to see

    def _record(self, execution_id: int, analysis: CellAnalysis, start: ExecutionStart,
                before: dict[str, Any], result: Any, events: list[tuple[str, Any]], duration: float,
                changed_settings: dict[str, Any], read_files: dict[str, Any]) -> list[str]:
        visible = functools.partial(is_visible, self.shell)
        shared = sharing.arrays(self.shell.user_ns, visible)
        changed, deleted = self._changed_names(analysis, start, before, shared)
        for attempt in range(RECORD_ATTEMPTS):
            writer = cell_outputs.Writer(self.log, execution_id, self.shell.user_ns, before, start.inputs, visible,
                                         self.shell.display_formatter)
            try:
                with self.log.transaction():
                    writer.write(changed, deleted, result, shared, changed_settings)
                    self.log.write_events(execution_id, events)
                    self.log.finish_execution(execution_id, state="recorded", duration=duration,
                                              read_files=read_files, replayable=not writer.problems,
                                              problems=writer.problems, bytes_stored=writer.stored,
                                              output_names=writer.written)
                return writer.problems
            except LogTransactionLost as exc:
                # The server went away mid-write (a restart, a network cut) or broke a deadlock between two
                # kernels' blob locks by aborting this one: nothing was committed, and the next BEGIN waits for
                # the server to come back. Written again, once.
                failure: DurableError = exc
                if attempt + 1 < RECORD_ATTEMPTS:
                    continue
            except DurableError as exc:
                failure = exc
            break
        kept = ", ".join(changed) or "its variables"
        problem = (f"{NOT_WRITTEN}: {failure} {kept} stay{'s' if len(changed) == 1 else ''} in the kernel; "
                   "the cell runs again next time")
        # The execution must not stay `running`: a tiny write often fits where the value did not.
        with contextlib.suppress(DurableError), self.log.transaction():
            self.log.finish_execution(execution_id, state="recorded", duration=duration, replayable=False,
                                      problems=[problem])
        return [problem]

    def _changed_names(self, analysis: CellAnalysis, start: ExecutionStart, before: dict[str, Any],
                       shared: dict[str, Any]) -> tuple[list[str], list[str]]:
        """Names bound, rebound, mutated in place (an input whose fingerprint changed), and deleted; an array
        sharing memory with a mutated one is mutated too."""
        ns = self.shell.user_ns
        # Identity changes found by set operations on (name, id) pairs, at C speed: IPython's history makes
        # the namespace long, and only the few names that moved need the visibility test.
        moved = cell_outputs.ids(ns).items() - cell_outputs.ids(before).items()
        changed = [n for n in analysis.binds if is_visible(self.shell, n)]
        changed += sorted(n for n, _ in moved if is_visible(self.shell, n))
        mutated = []
        for name, fp in start.inputs.items():
            value = ns.get(name, None)
            if name in before and value is before[name] and not isinstance(value, cell_outputs.IMMUTABLE):
                try:
                    if fingerprint(value) != fp:
                        mutated.append(name)
                except Unfingerprintable:
                    mutated.append(name)
        changed += mutated
        if shared and mutated:
            changed += sharing.partners(shared, mutated)
        deleted = sorted(n for n in before.keys() - ns.keys() if _user_name(self.shell, n, before[n]))
        ignored = set(self.opts.ignore)
        return ([n for n in dict.fromkeys(changed) if n not in ignored],
                [n for n in deleted if n not in ignored])

    def _payload(self, state: str, *, reason: str | None = None, duration: float | None = None,
                 recorded_at: float | None = None, error: str | None = None, problems: list[str] | None = None,
                 execution_id: int | None = None, original: float | None = None, saved: float | None = None,
                 replayed_from: int | None = None) -> dict[str, Any]:
        """The status display's JSON (docs/architecture.md): its figures are the log's, `duration_s` this
        execution's own time, for a replay with `original_s` (the recorded run) and `saved_s` (their difference)."""
        return {
            "version": 1, "state": state, "cell": self.opts.name, "cell_id": self.cell_id,
            "execution_id": execution_id, "replayed_from": replayed_from, "log": str(self.log),
            "session": SESSION, "recorded_at": iso(recorded_at), "duration_s": duration,
            "original_s": original if original is not None else (duration if state != "running" else None),
            "saved_s": saved, "reason": reason, "changed": reason.split(", ") if reason else [],
            "problems": problems or [],
            "message": " · ".join([message(state, recorded_at=recorded_at, duration=duration, original=original,
                                           saved=saved, reason=reason, error=error, problems=problems),
                                   *background.problems(self.log.path)]),
        }


def exec_cell(shell: Any, code: str, transformed: str, analysis: CellAnalysis) -> Any:
    """Run the cell body in the user namespace; return the value of a final expression (shown as Out[n])."""
    __tracebackhide__ = True
    return drive(exec_steps(shell, code, transformed, analysis))


def exec_steps(shell: Any, code: str, transformed: str, analysis: CellAnalysis, *, awaiting: bool = False) -> Steps:
    """`exec_cell` as steps; with `awaiting`, top-level `await`, `async for` and `async with` are allowed and
    the coroutines they make are yielded to be awaited."""
    __tracebackhide__ = True
    # The shell's own flags (the user's `from __future__` imports), never this module's: compile() would
    # otherwise inherit `annotations` from the line above and make every annotation in the cell a string.
    flags = shell.compile.flags | (ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if awaiting else 0)
    filename, tree = tracebacks.compile_body(shell, code, transformed)
    last = tree.body.pop() if analysis.has_result else None
    body = compile(tree, filename, "exec", flags, dont_inherit=True)
    if body.co_flags & _CO_COROUTINE:
        yield eval(body, shell.user_global_ns, shell.user_ns)
    else:
        exec(body, shell.user_global_ns, shell.user_ns)
    if isinstance(last, ast.Expr):
        expr = compile(ast.Expression(last.value), filename, "eval", flags, dont_inherit=True)
        value = eval(expr, shell.user_global_ns, shell.user_ns)
        return (yield value) if expr.co_flags & _CO_COROUTINE else value
    return None


def run_unlogged(shell: Any, code: str, problem: str, *, awaiting: bool = False, name: str | None = None) -> Steps:
    """The log cannot be used: the cell runs anyway, so the work is not blocked, and the user is told why
    nothing was recorded."""
    __tracebackhide__ = True
    which = f"cell {name!r}" if name else "this cell"
    print(f"durable: {which} is not recorded (it runs; its variables stay in the kernel): {problem}",
          file=sys.stderr, flush=True)
    transformed = _transform(shell, code)
    return (yield from exec_steps(shell, code, transformed, analyze(transformed), awaiting=awaiting))


def default_cell_id(shell: Any) -> str | None:
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return None
    try:
        parent = kernel.get_parent()
    except Exception:
        return None
    cell_id = (parent or {}).get("metadata", {}).get("cellId")
    return str(cell_id) if cell_id else None


