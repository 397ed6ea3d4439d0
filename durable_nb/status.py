"""The status line of a durable cell: one display (MIME + HTML + text), updated in place by display_id.

It is published outside the recorded output, so replays never repeat an old status.
"""

from __future__ import annotations

import html
import uuid
from typing import Any

from .vocabulary import fmt_duration, fmt_when, look

MIME = "application/vnd.durable-nb.status+json"
# How a problem starts when the log refused the record itself (full disk, read-only media): nothing was stored.
NOT_WRITTEN = "could not write the log"

# This kernel process: a badge of another session (a saved notebook reopened, a restarted kernel) shows
# results nothing in the current kernel holds.
SESSION = uuid.uuid4().hex


def replay_figures(duration: float | None, saved: float | None, original: float | None) -> str:
    """A replay's figures in words, as every front end says them: 'replayed in 0.4 s · saved 3.6 s of 4.0 s'."""
    if duration is None:
        return f"replaying (the recorded run took {fmt_duration(original)})"
    return f"replayed in {fmt_duration(duration)} · saved {fmt_duration(saved)} of {fmt_duration(original)}"


def message(state: str, *, recorded_at: float | None = None, duration: float | None = None,
            original: float | None = None, saved: float | None = None, reason: str | None = None,
            error: str | None = None, problems: list[str] | None = None) -> str:
    if state == "replayed":
        text = f"{replay_figures(duration, saved, original)} · recorded {fmt_when(recorded_at or 0)}"
        return text + (f" · {reason}" if reason else "")
    prefix = f"re-ran: {reason} · " if reason else ""
    if state == "running":
        return f"{prefix}running…"
    if state == "failed":
        return f"{prefix}failed after {fmt_duration(duration)}: {error} · not recorded as a success"
    if state == "not-replayable" and problems and problems[0].startswith(NOT_WRITTEN):
        return f"{prefix}ran in {fmt_duration(duration)} · not recorded: " + "; ".join(problems)
    if state == "not-replayable":
        return f"{prefix}ran in {fmt_duration(duration)} · recorded, but will not replay: " + "; ".join(problems or [])
    return f"{prefix}recorded in log · took {fmt_duration(duration)}"


def bundle(payload: dict[str, Any]) -> dict[str, Any]:
    """The display data: the JSON payload plus fallbacks that read well in VS Code, nbconvert and GitHub."""
    state = str(payload["state"])
    shown = look(state)
    text = f"{shown.icon} durable: {payload['message']}"
    colour = shown.colour
    title = html.escape(f"log: {payload.get('log')}")
    badge = (f'<div class="durable-nb-status" data-durable-state="{html.escape(state)}" title="{title}" '
             f'style="font-family:var(--jp-ui-font-family,sans-serif);font-size:12px;color:{colour};'
             f'border-left:3px solid {colour};padding:1px 6px;margin:2px 0">{html.escape(text)}</div>')
    return {MIME: payload, "text/plain": text, "text/html": badge}


class StatusLine:
    """One cell's status: `show` publishes it, later `show` calls update it in place."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.display_id = f"durable-nb-{uuid.uuid4().hex}"
        self._shown = False

    def show(self, payload: dict[str, Any]) -> None:
        pub = self.shell.display_pub
        pub.publish(bundle(payload), {}, transient={"display_id": self.display_id}, update=self._shown)
        self._shown = True
