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


class Recorder:
    """Context manager: while active, stdout/stderr writes and display messages are teed into `events`."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.events: list[Event] = []
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> Recorder:
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

    def _add(self, kind: str, data: Any) -> None:
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


def replay(shell: Any, events: list[Event]) -> None:
    """Emit recorded events again, in order, through the live streams and display publisher."""
    pub = shell.display_pub
    for kind, data in events:
        if kind in ("stdout", "stderr"):
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
