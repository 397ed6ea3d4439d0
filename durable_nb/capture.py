"""Tee a cell's output while it runs, and re-emit recorded output on replay.

The user sees everything live: writes go to the real streams and display publisher first, and are copied
into an ordered event list. Patching the stream *objects* (not just `sys.stdout`) also catches libraries
that kept a reference to the stream, such as a logging handler created before the cell.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

Event = tuple[str, Any]
# Where the cell's value was shown (Out[n]) among its outputs. A display event with an empty bundle, so a reader
# that does not know the mark shows nothing for it.
RESULT_MARK: Event = ("display", {"data": {}, "metadata": {}, "transient": {}, "result": True})


class Capture:
    """Context manager: while active, stdout/stderr writes and display messages are teed into `events`."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.events: list[Event] = []
        self._undo: list[Callable[[], None]] = []
        self._paused = False
        self.showed_result = False

    def __enter__(self) -> Capture:
        self._tee_stream("stdout")
        self._tee_stream("stderr")
        pub = self.shell.display_pub
        self._wrap(pub, "publish", self._on_publish)
        self._wrap(pub, "clear_output", self._on_clear)
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush_figures()
        while self._undo:
            self._undo.pop()()

    def show_result(self, result: Any) -> None:
        """Show the cell's value as Out[n] now, inside the capture, so that figures the inline backend shows
        after it follow it, as in a plain cell. The display hook's own output is not teed: a replay calls it."""
        show(self.shell, result, pause=self)
        self.events.append(RESULT_MARK)
        self.showed_result = True

    def _add(self, kind: str, data: Any) -> None:
        if self._paused:
            return
        # Consecutive writes to one stream become one event: replay cost scales with events, not writes.
        if kind in ("stdout", "stderr") and self.events and self.events[-1][0] == kind:
            self.events[-1] = (kind, self.events[-1][1] + data)
        else:
            self.events.append((kind, data))

    def _tee_stream(self, name: str) -> None:
        stream = getattr(sys, name)
        original = stream.write

        def write(text: str) -> int:
            n = original(text)
            if isinstance(text, str) and text:
                self._add(name, text)
            return int(n) if isinstance(n, int) else len(text)

        try:
            self._undo.append(_patch(stream, "write", write))
        except (AttributeError, TypeError):
            tee = _TeeStream(stream, write)
            setattr(sys, name, tee)
            self._undo.append(lambda: setattr(sys, name, stream))

    def _wrap(self, obj: Any, attr: str, hook: Callable[..., None]) -> None:
        original = getattr(obj, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            hook(*args, **kwargs)
            return original(*args, **kwargs)

        self._undo.append(_patch(obj, attr, wrapper))

    def _on_publish(self, data: dict[str, Any], metadata: dict[str, Any] | None = None, *args: Any,
                    transient: dict[str, Any] | None = None, update: bool = False, **kwargs: Any) -> None:
        self._add("update_display" if update else "display",
                  {"data": data, "metadata": metadata or {}, "transient": transient or {}})

    def _on_clear(self, wait: bool = False) -> None:
        self._add("clear_output", {"wait": bool(wait)})

    @staticmethod
    def flush_figures() -> None:
        """The inline matplotlib backend shows figures after the cell; show them inside the capture instead."""
        inline = sys.modules.get("matplotlib_inline.backend_inline")
        if inline is not None and "matplotlib.pyplot" in sys.modules:
            import matplotlib

            if "inline" in str(matplotlib.get_backend()):
                inline.flush_figures()


def _patch(obj: Any, attr: str, value: Any) -> Callable[[], None]:
    """Set an instance attribute; return the callable that puts back exactly what was there."""
    own = getattr(obj, "__dict__", {})
    had, before = attr in own, own.get(attr)
    setattr(obj, attr, value)

    def undo() -> None:
        if had:
            setattr(obj, attr, before)
        else:
            delattr(obj, attr)

    return undo


class _TeeStream:
    """Stands in for a stream whose `write` cannot be patched (a plain TextIOWrapper)."""

    def __init__(self, stream: Any, write: Callable[[str], int]) -> None:
        self._stream = stream
        self.write = write

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def show(shell: Any, result: Any, pause: Capture | None = None) -> None:
    """What IPython does with a cell's value: Out[n], `_`, and the execute_result message."""
    if pause is not None:
        pause._paused = True
    try:
        shell.displayhook(result)
    finally:
        if pause is not None:
            pause._paused = False


def replay(shell: Any, events: list[Event], result: Any = None) -> bool:
    """Emit recorded events again, in order, through the live streams and display publisher; the cell's value
    is shown where it was. Returns whether it was (logs of older versions have no mark: the caller shows it)."""
    pub = shell.display_pub
    shown = False
    for kind, data in events:
        if data == RESULT_MARK[1]:
            if result is not None:
                show(shell, result)
            shown = True
        elif kind in ("stdout", "stderr"):
            stream = getattr(sys, kind)
            stream.write(data)
            stream.flush()
        elif kind == "clear_output":
            pub.clear_output(wait=data.get("wait", False))
        else:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            pub.publish(data["data"], data.get("metadata") or {}, transient=data.get("transient") or None,
                        update=kind == "update_display")
    return shown
