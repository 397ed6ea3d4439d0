"""A durable cell's code reads like a plain cell's in tracebacks and warnings.

IPython runs `%%durable BODY` as `get_ipython().run_cell_magic('durable', LINE, BODY)`: without care, a failing
cell shows that line (with the escaped source), IPython's and durable_nb's frames, and the body under the next
cell's number (IPython counts the cell before running it), with line numbers one off (the `%%durable` line is
not in the body). So the body is compiled under the name IPython gave the cell itself, with the number IPython
gave it and the lines of the cell as typed, and a failure of the user's code is shown from the user's first
frame on (IPython's documented `_render_traceback_` hook), as a plain cell's would be.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import sys
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from IPython.core.interactiveshell import InteractiveShell

_RUN_CODE = InteractiveShell.run_code.__code__
_RUN_CELL_MAGIC = InteractiveShell.run_cell_magic.__code__
_PACKAGE = str(Path(__file__).resolve().parent)


def _cell_frame() -> FrameType | None:
    """The frame of the top-level cell being run: the one IPython's run_code executes."""
    frame = sys._getframe(1)
    while frame is not None:
        back = frame.f_back
        if back is not None and back.f_code is _RUN_CODE:
            return frame
        frame = back  # type: ignore[assignment]
    return None


def is_top_level() -> bool:
    """True when the magic's caller is the cell's own `run_cell_magic` line (not user code calling it)."""
    caller = sys._getframe(2)
    return caller.f_code is _RUN_CELL_MAGIC and caller.f_back is not None and caller.f_back.f_back is not None \
        and caller.f_back.f_back.f_code is _RUN_CODE


def cell_number(shell: Any) -> int:
    """The `In[N]` of the running cell (IPython has already advanced `execution_count` past it)."""
    frame = _cell_frame()
    numbers = getattr(shell.compile, "_filename_map", {})
    if frame is not None and frame.f_code.co_filename in numbers:
        return int(numbers[frame.f_code.co_filename])
    return int(shell.execution_count)


def _raw_cell(shell: Any, number: int) -> str | None:
    """The cell as the user typed it: the execute request's code in a kernel, else IPython's raw history."""
    kernel = getattr(shell, "kernel", None)
    try:
        code = kernel.get_parent()["content"]["code"] if kernel is not None else None
    except Exception:
        code = None
    if isinstance(code, str):
        return code
    raw = getattr(getattr(shell, "history_manager", None), "input_hist_raw", [])
    return raw[number] if 0 <= number < len(raw) else None


def compile_body(shell: Any, code: str, transformed: str) -> tuple[str, ast.Module]:
    """The body's file name (cached for tracebacks, warnings and the debugger) and its tree, its line numbers
    those of the cell as typed: line 3 of the cell is line 3 in a traceback, as in a plain cell."""
    number = cell_number(shell)
    raw = _raw_cell(shell, number)
    tree = ast.parse(transformed)
    text, offset = transformed, 0
    if raw is not None:
        ended = raw if raw.endswith("\n") else raw + "\n"
        body = code if code.endswith("\n") else code + "\n"
        if body.strip() and ended.endswith(body):
            head = ended[: len(ended) - len(body)]
            offset = head.count("\n")
            text = head + transformed
    if offset:
        ast.increment_lineno(tree, offset)
    return shell.compile.cache(text, number, raw_code=raw if offset else code), tree


def _users_part(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from the first frame of the cell body on; None when the error never reached it."""
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE):
        tb = tb.tb_next
    return tb if tb is not None and tb.tb_frame.f_code.co_name == "<module>" else None


def _render(shell: Any, exc: BaseException, tb: TracebackType) -> list[str]:
    return list(shell.InteractiveTB.structured_traceback(type(exc), exc, tb, tb_offset=0))


def as_cell(shell: Any, exc: BaseException) -> None:
    """Make IPython show `exc` from the user's first frame on (no run_cell_magic line, no durable_nb frame)."""
    tb = _users_part(exc.__traceback__)
    if tb is not None and not isinstance(exc, SyntaxError):
        # An exception type with __slots__ keeps IPython's own rendering.
        with contextlib.suppress(AttributeError):
            exc._render_traceback_ = functools.partial(_render, shell, exc, tb)  # type: ignore[attr-defined]


async def awaited_as_cell(shell: Any, coroutine: Any) -> Any:
    """`as_cell` for an async body: the failure surfaces when IPython awaits the magic's coroutine."""
    __tracebackhide__ = True
    try:
        return await coroutine
    except BaseException as exc:
        as_cell(shell, exc)
        raise
