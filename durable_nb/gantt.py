"""The timeline picture: cell executions and activity calls as a Gantt chart (matplotlib, imported lazily).

Readable from 5 to 5,000+ bars: one PolyCollection per state (not one patch per bar), a minimum bar width
so that a 10 ms replay next to a 40-minute run is still visible, lane labels thinned to what fits, and
per-bar annotations ("saved 40m 12s") only when there are few bars.
"""

from __future__ import annotations

import functools
import io
from typing import TYPE_CHECKING, Any

from .errors import DurableError
from .log.queries import cell_label
from .vocabulary import LOOKS, SAVED_COLOUR, fmt_duration

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLORS = {state: LOOKS[state].colour for state in ("recorded", "replayed", "failed", "crashed", "running")}
ANNOTATE_MAX = 40  # bars; above this the labels would overlap
LABELS_MAX = 40  # lane labels shown; more lanes show every k-th label
MIN_WIDTH = 0.004  # of the time span: the narrowest bar drawn


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:

        raise DurableError("timeline() draws with matplotlib, which is not installed here: "
                           "pip install matplotlib") from exc


def draw(executions: pd.DataFrame, calls: pd.DataFrame | None, title: str) -> Figure:
    _require_matplotlib()
    from matplotlib.figure import Figure


    lanes: dict[str, int] = {}
    cells = [cell_label(n, i, h) for n, i, h in zip(executions["cell_name"], executions["cell_id"],
                                                    executions["code_hash"], strict=True)]
    for label in cells:
        lanes.setdefault(label, len(lanes))
    functions: list[str] = []
    if calls is not None and len(calls):
        functions = [f"⚙ {f}" for f in calls["function"]]
        for label in functions:
            lanes.setdefault(label, len(lanes))
    n_lanes = max(len(lanes), 1)
    fig = Figure(figsize=(11, min(max(2.2 + 0.28 * min(n_lanes, LABELS_MAX), 3.0), 12.0)), layout="constrained")
    ax = fig.add_subplot()
    alive = last_alive(executions, calls)
    start, end = _span(executions, calls, alive)
    span = max(end - start, 1.0)
    bars = _bars(executions, cells, lanes, start, span, alive, height=0.7)
    if calls is not None and len(calls):
        bars += _bars(calls, functions, lanes, start, span, alive, height=0.4)
    _draw_bars(ax, bars)
    _draw_savings(ax, executions, cells, lanes, start, span)
    _axes(ax, lanes, start, span)
    saved = float(executions["saved_seconds"].fillna(0).sum()) if len(executions) else 0.0
    runs = executions["run_id"].nunique() if len(executions) else 0
    ax.set_title(f"{title}: {len(executions):,} executions in {runs} run{'s' if runs != 1 else ''}"
                 + (f", {len(calls):,} activity calls" if calls is not None and len(calls) else "")
                 + (f" · replays saved {fmt_duration(saved)}" if saved else ""), loc="left", fontsize=10)
    # A Figure made without pyplot has no inline display hook: give it one, so `durable_nb.timeline()` as a
    # cell's last line shows the picture in Jupyter.
    fig._repr_png_ = functools.partial(_png, fig)  # type: ignore[attr-defined]
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _span(executions: pd.DataFrame, calls: pd.DataFrame | None, alive: dict[int, float]) -> tuple[float, float]:
    import numpy as np

    starts, ends = [_seconds(executions["started_at"])], [_ends(executions, alive)]
    if calls is not None and len(calls):
        starts.append(_seconds(calls["started_at"]))
        ends.append(_ends(calls, alive))
    every_start, every_end = np.concatenate(starts), np.concatenate(ends)
    if not len(every_start):
        return 0.0, 1.0
    saved = executions["saved_seconds"].fillna(0).to_numpy(dtype=float)
    end = max(float(np.nanmax(every_end)), float(np.nanmax(_seconds(executions["started_at"]) + saved))
              if len(saved) else 0.0)
    return float(np.nanmin(every_start)), end


def _seconds(times: pd.Series) -> Any:
    import numpy as np

    return times.to_numpy(dtype="datetime64[ns]").astype("int64") / 1e9 if len(times) else np.zeros(0)


def _ends(frame: pd.DataFrame, alive: dict[int, float] | None = None) -> Any:
    """Finish times. A crashed row is drawn until the last sign of life of its run (`alive`: the run's latest
    recorded start or finish of an execution or activity call), so it stops where its kernel was last seen and
    a re-run in the next run stays visible beside it; a running row, until the latest instant drawn."""
    import numpy as np

    start = _seconds(frame["started_at"])
    finished = frame["finished_at"]
    end = np.where(finished.isna().to_numpy(), np.nan, _seconds(finished.fillna(frame["started_at"])))
    latest = np.full(len(start), np.nanmax(np.concatenate([start, end])) if len(start) else 0.0)
    if alive is not None:
        crashed = (frame["state"] == "crashed").to_numpy()
        latest = np.where(crashed, [alive.get(int(r), np.nan) for r in frame["run_id"]], latest)
    return np.where(np.isnan(end), np.fmax(latest, start), end)


def last_alive(executions: pd.DataFrame, calls: pd.DataFrame | None) -> dict[int, float]:
    """Per run, the latest instant the log saw it working: a start or finish of any execution or call."""
    import numpy as np

    seen: dict[int, float] = {}
    for frame in (executions, calls):
        if frame is None or not len(frame):
            continue
        start = _seconds(frame["started_at"])
        finished = frame["finished_at"]
        end = np.where(finished.isna().to_numpy(), start, _seconds(finished.fillna(frame["started_at"])))
        for run, instant in zip(frame["run_id"], np.maximum(start, end), strict=True):
            seen[int(run)] = max(seen.get(int(run), 0.0), float(instant))
    return seen


def _bars(frame: pd.DataFrame, labels: list[str], lanes: dict[str, int], origin: float, span: float,
          alive: dict[int, float], height: float) -> list[tuple[str, float, float, int, float]]:
    """(state, left, width, lane, height) with times in seconds from the origin."""
    left = _seconds(frame["started_at"]) - origin
    width = (_ends(frame, alive) - origin) - left
    minimum = span * MIN_WIDTH
    return [(str(s), float(x), max(float(w), minimum), lanes[lab], height)
            for s, x, w, lab in zip(frame["state"], left, width, labels, strict=True)]


def _draw_bars(ax: Axes, bars: list[tuple[str, float, float, int, float]]) -> None:
    from matplotlib.collections import PolyCollection

    for state, color in COLORS.items():
        verts = [[(x, y - h / 2), (x, y + h / 2), (x + w, y + h / 2), (x + w, y - h / 2)]
                 for s, x, w, y, h in bars if s == state]
        if verts:
            # A white edge: two executions of one cell side by side (a crash, then its re-run) stay two bars.
            ax.add_collection(PolyCollection(verts, facecolors=color, edgecolors="white", linewidths=0.4,
                                             label=LOOKS[state].label))


def _draw_savings(ax: Axes, executions: pd.DataFrame, cells: list[str], lanes: dict[str, int], origin: float,
                  span: float) -> None:
    """A hatched ghost after each replay, as long as the run it avoided."""
    from matplotlib.collections import PolyCollection

    replayed = (executions["state"] == "replayed").to_numpy()
    if not replayed.any():
        return
    left = _ends(executions) - origin
    saved = executions["saved_seconds"].fillna(0).to_numpy(dtype=float)
    rows = [(float(x), float(w), lanes[c]) for x, w, c, r in zip(left, saved, cells, replayed, strict=True)
            if r and w > 0]
    verts = [[(x, y - 0.3), (x, y + 0.3), (x + max(w, span * MIN_WIDTH), y + 0.3), (x + max(w, span * MIN_WIDTH),
             y - 0.3)] for x, w, y in rows]
    if verts:
        ax.add_collection(PolyCollection(verts, facecolors="none", edgecolors=SAVED_COLOUR, hatch="///",
                                         linewidths=0.8, label="time saved by replay"))
    if len(executions) <= ANNOTATE_MAX:
        for x, w, y in rows:
            ax.annotate(f"saved {fmt_duration(w)}", (x + max(w, span * MIN_WIDTH), y), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=7, color=COLORS["replayed"])


def _axes(ax: Axes, lanes: dict[str, int], origin: float, span: float) -> None:
    import datetime as dt

    from matplotlib.ticker import FuncFormatter, MaxNLocator

    names = list(lanes)
    step = max(1, -(-len(names) // LABELS_MAX))
    ax.set_yticks(range(0, len(names), step), [names[i] for i in range(0, len(names), step)],
                  fontsize=8 if len(names) <= LABELS_MAX else 6)
    ax.set_ylim(len(names) - 0.4, -0.6)
    ax.set_xlim(-span * 0.01, span * 1.08)
    start = dt.datetime.fromtimestamp(origin, dt.UTC)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: _clock(start, x, span)))
    ax.set_xlabel(f"time (UTC), from {start:%Y-%m-%d %H:%M:%S}")
    ax.grid(axis="x", color="#e0e0e0", linewidth=0.6)
    ax.set_axisbelow(True)
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        # Below the axes, outside the plot area: inside it, the legend covered the last bars.
        ax.figure.legend(handles, labels, loc="outside lower center", fontsize=7, frameon=False,
                         ncols=min(len(handles), 6))


def _clock(start: Any, offset: float, span: float) -> str:
    import datetime as dt

    if span < 120:  # a clock would repeat the same second on every tick
        return f"+{offset:.3g} s"
    when = start + dt.timedelta(seconds=offset)
    if span > 2 * 86400:
        return f"{when:%m-%d %H:%M}"
    return f"{when:%H:%M:%S}" if span < 3600 else f"{when:%H:%M}"
