"""The words every front end shares: states, how each looks (icon, colour, label), and how times read.

One home, bottom of the layers: the status line, the timeline, `%durable_history`, the CLI, `durable-nb run` and
(through `extension/src/vocabulary.json`, generated from this module and compared by a test) the JupyterLab badge
and panel all read these tables, so a state cannot look different in two places.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from .record import Record

# States of an execution row in the log (the schema's CHECK constraint is built from this tuple).
STATES = ("running", "recorded", "replayed", "failed", "crashed")
# States of an activity call row: a call is never "replayed" in the log, its replays are not rows.
CALL_STATES = ("running", "recorded", "failed", "crashed")
# States a cell shows beyond its row: re-ran (recorded although an earlier record existed) and not-replayable
# (ran, but some output could not be stored).
SHOWN_STATES = ("replayed", "recorded", "re-ran", "running", "failed", "crashed", "not-replayable")
# Outcomes of a cell in `durable-nb run`, which also sees cells that never reached the log: `ran` is a cell left
# alone (a magic, a shell escape, the durable-off tag), `killed` the one the kernel died in, `not run` follows a stop.
JOB_STATES = ("replayed", "recorded", "not-replayable", "ran", "failed", "timed out", "killed", "not run")


class Look(Record):
    """How one state is shown. The icon's shape differs per state so nothing relies on colour alone."""

    __match_args__ = ("label", "icon", "tone", "colour", "description")
    __slots__ = __match_args__

    def __init__(self, label: str, icon: str, tone: str, colour: str, description: str) -> None:
        self.label = label
        self.icon = icon
        self.tone = tone  # the JupyterLab theme tone: success, info, progress, error, warn, neutral
        self.colour = colour  # for renderings without a theme (HTML status line, timeline, terminal)
        self.description = description


LOOKS: dict[str, Look] = {
    "replayed": Look("replayed", "↺", "success", "#2e7d32", "replayed from the durable log instead of recomputing"),
    "recorded": Look("recorded", "✓", "info", "#1565c0", "ran and recorded into the durable log"),
    "re-ran": Look("re-ran", "↻", "info", "#1565c0", "ran again although an earlier recording existed"),
    "running": Look("running", "◷", "progress", "#757575", "running; the result is recorded when the cell finishes"),
    "failed": Look("failed", "✗", "error", "#c62828", "the cell raised an error; nothing was recorded for replay"),
    "crashed": Look("crashed", "↯", "error", "#880e4f", "the kernel died while this cell was running"),
    "not-replayable": Look("not replayable", "⚠", "warn", "#ef6c00",
                           "ran, but some outputs could not be recorded, so this cell will run again"),
    "ran": Look("ran", "•", "neutral", "#616161", "ran without durable_nb (not a durable cell)"),
    "timed out": Look("timed out", "⧗", "error", "#c62828", "stopped by the cell timeout"),
    "killed": Look("killed", "↯", "error", "#880e4f", "the kernel died while this cell was running"),
    "not run": Look("not run", "·", "neutral", "#9e9e9e", "not reached: an earlier cell stopped the run"),
}
UNKNOWN = Look("unknown", "?", "neutral", "#616161", "a state this version does not know; a newer durable_nb wrote it")
# The part of a replayed bar that shows the time the replay saved: a light shade of the replayed colour.
SAVED_COLOUR = "#a5d6a7"


def look(state: str, reason: str | None = None) -> Look:
    """How `state` is shown; a recorded cell with a reason ran again although a recording existed: re-ran."""
    if state == "recorded" and reason:
        state = "re-ran"
    return LOOKS.get(state, UNKNOWN)


# Words the front ends add to a state.
PHRASES = {
    # A badge shown by another kernel process than the notebook's current one: a saved notebook reopened, a
    # restarted kernel. What it describes is not loaded now.
    "earlier_session": "from an earlier session",
    "earlier_session_title": "shown by an earlier kernel session: nothing it describes is loaded in the current "
                             "kernel until the cell runs (or replays) again",
}
# Durations the extension's formatDuration must write as fmt_duration does (its unit test reads them).
DURATION_EXAMPLES = (0.0, 0.004, 0.35, 0.9994, 1.0, 2.44, 12.4, 59.94, 60.0, 61.2, 2412.0, 3599.4, 7505.0, 90061.0)


def extension_json() -> str:
    """The vocabulary as the JupyterLab extension reads it (extension/src/vocabulary.json)."""
    data = {"states": STATES, "looks": {k: v.as_dict() for k, v in LOOKS.items()}, "unknown": UNKNOWN.as_dict(),
            "phrases": PHRASES, "durations": [[s, fmt_duration(s)] for s in DURATION_EXAMPLES]}
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# -- times ----------------------------------------------------------------------------------------------------


def fmt_duration(seconds: float | None) -> str:
    """'350 ms', '4.2 s', '40m 12s', '2h 05m'; '-' when there is no number."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def fmt_when(epoch: float) -> str:
    """An absolute local time, for output that is saved and read later ('2026-12-02 14:03')."""
    return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M")


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


def ago(when: Any, now: float | None = None) -> str:
    """'42s ago', '5m ago', '3h ago', '2d ago'; older than 30 days: the date. Only for live displays."""
    if when is None or (isinstance(when, float) and math.isnan(when)) or str(when) == "NaT":
        return "-"
    seconds = when.timestamp() if hasattr(when, "timestamp") else float(when)
    delta = (now if now is not None else dt.datetime.now(dt.UTC).timestamp()) - seconds
    if delta < 0:
        return "in the future"
    for limit, unit, size in ((60, "s", 1), (3600, "m", 60), (86400, "h", 3600), (30 * 86400, "d", 86400)):
        if delta < limit:
            return "just now" if unit == "s" and delta < 1 else f"{int(delta // size)}{unit} ago"
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


if __name__ == "__main__":
    print(extension_json(), end="")
