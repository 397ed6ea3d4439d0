"""The status line of a durable cell: one display (MIME + HTML + text), updated in place by display_id.

It is published outside the recorded output, so replays never repeat an old status.
"""

from __future__ import annotations

import html
import uuid
from datetime import datetime, timezone
from typing import Any

MIME = "application/vnd.durable-nb.status+json"
# How a problem starts when the log refused the record itself (full disk, read-only media): nothing was stored.
NOT_WRITTEN = "could not write the log"

_COLOURS = {"running": "#1976d2", "recorded": "#2e7d32", "replayed": "#6a1b9a", "failed": "#c62828",
            "not-replayable": "#ef6c00"}
# The same icons as the JupyterLab badge (extension/src/format.ts), so every front end reads alike.
_ICONS = {"running": "◷", "recorded": "✓", "replayed": "↺", "failed": "✗", "not-replayable": "⚠"}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
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
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M")


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def message(state: str, *, recorded_at: float | None = None, duration: float | None = None,
            reason: str | None = None, error: str | None = None, problems: list[str] | None = None) -> str:
    if state == "replayed":
        text = f"replayed from log · recorded {fmt_when(recorded_at or 0)} · saved {fmt_duration(duration)}"
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
    text = f"{_ICONS.get(state, '•')} durable: {payload['message']}"
    colour = _COLOURS.get(state, "#555")
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
