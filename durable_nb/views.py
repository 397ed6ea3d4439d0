"""History as data: pandas views over a log, time travel (`load`), `diff` and a `timeline` picture.

Every function takes `log=`: a `DurableLog`, a path (opened read-only for the call, never written), or None
for this process's current log. The DataFrames have the columns of the documented SQL views of the same
name (docs/schema.md); times are tz-aware UTC timestamps, durations are seconds.

(This module is not called `history.py`: a submodule of that name would shadow the `durable_nb.history`
function once imported.)
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from .errors import CorruptLogError, DecodeError, NotRecordedError, UntrustedError
from .log import background, current, journal, queries
from .log.queries import ExecutionRecord
from .log.store import LogStore
from .record import Record
from .vocabulary import CALL_STATES, STATES, fmt_duration, fmt_when, look

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


_TIMES = {"executions": ("started_at", "finished_at"), "runs": ("started_at", "ended_at"),
          "activities": ("started_at", "finished_at"), "outputs": ()}
_FLAGS = {"replayable", "inplace", "signed"}


@contextmanager
def opened(log: LogStore | str | os.PathLike[str] | None) -> Iterator[LogStore]:
    """The log to read: as given, opened read-only from a path (closed afterwards), or the current one (the
    log this process writes, else the configured path opened read-only: reading never creates a log)."""
    if isinstance(log, LogStore) or (log is None and current.get() is not None):
        found = log if isinstance(log, LogStore) else current.get()
        assert found is not None
        if not found.readonly:
            found.flush()  # replays this process recorded but deferred: the views must show them
        yield found
        return
    with LogStore(log if log is not None else current.configured_path(), readonly=True) as opened_here:
        yield opened_here


def _frame(log: LogStore, view: str, where: str = "", params: tuple[Any, ...] = (), *,
           tail: int | None = None, order: str = "", times: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Rows of a view as a DataFrame, built column-wise through Arrow (pd.read_sql builds it row by row)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    sql = f"SELECT * FROM {view} {'WHERE ' + where if where else ''}"
    if tail is not None:
        sql = f"SELECT * FROM ({sql} ORDER BY {order} DESC LIMIT {int(tail)}) AS tail ORDER BY {order}"
    elif order:
        sql += f" ORDER BY {order}"
    cur = log.conn.execute(sql, params)
    rows = cur.fetchall()
    names = [d[0] for d in cur.description]
    table = np.array(rows, dtype=object).reshape(len(rows), len(names))
    columns: dict[str, Any] = {}
    for i, name in enumerate(names):
        try:
            array = pa.array(table[:, i], from_pandas=True)
            # Integer ids with gaps (replayed_from, pid...) stay integers rather than becoming floats.
            columns[name] = array.to_pandas().astype("Int64") if (
                pa.types.is_integer(array.type) and array.null_count) else array.to_pandas()
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # a column of mixed types stays as Python objects
            columns[name] = pd.Series(table[:, i], dtype=object)
    frame = pd.DataFrame(columns, columns=names)
    for name in _FLAGS.intersection(names):
        frame[name] = frame[name].astype(bool)
    for name in times if times is not None else _TIMES.get(view, ()):
        try:
            frame[name] = pd.to_datetime(frame[name].astype("float64"), unit="s", utc=True)
        except (ValueError, TypeError, OverflowError) as exc:  # OutOfBoundsDatetime is a ValueError
            raise CorruptLogError(f"durable log {log.path} is damaged: column {name} of {view} holds a value that "
                                  f"is not a time ({exc}). Restore it from its replica (durable-nb restore URL -o "
                                  "FILE), or salvage what SQLite can read with `sqlite3 FILE .recover`.") from exc
    if "state" in frame and view != "runs":
        frame["state"] = pd.Categorical(frame["state"], categories=_state_order(view))
    return frame


def _state_order(view: str) -> list[str]:
    return list(CALL_STATES if view == "activities" else STATES)


# -- the views ---------------------------------------------------------------------------------------------


def history(log: LogStore | str | os.PathLike[str] | None = None, *, cell: str | None = None,
            state: str | tuple[str, ...] | None = None, run: int | None = None,
            last: int | None = None) -> pd.DataFrame:
    """One row per cell execution (the `executions` view): run, cell, state, times, duration, time saved by
    replays, why it re-ran, input and output names, bytes stored, error. Filters: `cell` (name or id),
    `state` (one or several), `run`, and the `last` N executions."""
    states = (state,) if isinstance(state, str) else state
    for one in states or ():
        if one not in STATES:
            raise ValueError(f"state {one!r} is not one of {', '.join(STATES)}")
    where, params = _filters(cell=cell, state=states, run=run)
    with opened(log) as lg:
        frame = _frame(lg, "executions", where, params, tail=last, order="execution_id",
                       times=_TIMES["executions"])
    # Name lists are text even when every row in the selection has none.
    return frame.astype({"inputs": "str", "outputs": "str"})


def _filters(*, cell: str | None = None, state: str | tuple[str, ...] | None = None, run: int | None = None,
             execution: int | None = None) -> tuple[str, tuple[Any, ...]]:
    clauses: list[str] = []
    params: list[Any] = []
    if cell is not None:
        clauses.append("(cell_name = ? OR cell_id = ?)")
        params += [cell, cell]
    if isinstance(state, tuple):
        clauses.append(f"state IN ({','.join('?' * len(state))})")
        params += state
        state = None
    for column, value in (("state", state), ("run_id", run), ("execution_id", execution)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return " AND ".join(clauses), tuple(params)


def history_html(log: LogStore | str | os.PathLike[str] | None = None, *, cell: str | None = None,
                 last: int | None = 20, failed: bool = False) -> str:
    """The compact table of %durable_history: one line per execution, escaped text. The output is saved with
    the notebook, so times are absolute (a relative "5m ago" would be wrong once reopened); each column holds
    one kind of fact, and the figures are the view's own (docs/schema.md)."""
    import html

    frame = history(log, cell=cell, state=("failed", "crashed") if failed else None, last=last)
    if not len(frame):
        return "<p><em>no matching durable cell executions in this log yet</em></p>"

    def seconds(value: Any) -> str:
        return fmt_duration(float(value)) if value == value and value is not None else ""

    left = "text-align:left;padding:1px 8px"
    cells = []
    for r in frame.itertuples():
        shown = look(str(r.state), _str(r.reason))
        why = f"{r.error_type}: {r.error_message}" if isinstance(r.error_type, str) else _str(r.reason)
        saved = seconds(r.saved_seconds) if r.state == "replayed" else ""
        original = seconds(r.original_duration) if r.state == "replayed" else ""
        state = (f'<span style="color:{shown.colour}" title="{html.escape(shown.description)}">'
                 f"{shown.icon} {html.escape(shown.label)}</span>")
        row = [html.escape(str(v)) for v in (r.execution_id, r.run_id,
               queries.cell_label(r.cell_name, r.cell_id, r.code_hash))]
        row += [state] + [html.escape(v) for v in (fmt_when(r.started_at.timestamp()), seconds(r.duration), original,
                                                    saved, why, _str(r.outputs))]
        cells.append("<tr>" + "".join(f'<td style="{left}">{c}</td>' for c in row) + "</tr>")
    head = "".join(f'<th style="{left}">{h}</th>' for h in (
        "id", "run", "cell", "state", "started", "took", "original run", "saved", "why it ran", "outputs"))
    return ('<table class="durable-history" style="font-size:0.85em">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(cells)}</tbody></table>")


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def runs(log: LogStore | str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """One row per run (kernel session): host, versions, start/end, counts by state, time saved."""
    with opened(log) as lg:
        return _frame(lg, "runs", order="run_id")


def activities(log: LogStore | str | os.PathLike[str] | None = None, *, execution: int | None = None,
               run: int | None = None, state: str | None = None) -> pd.DataFrame:
    """One row per recorded activity call (the `activities` view): attempts, retries, last error."""
    where, params = _filters(execution=execution, run=run, state=state)
    with opened(log) as lg:
        return _frame(lg, "activities", where, params, order="call_id")


def outputs(execution: int, log: LogStore | str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The variables an execution recorded (a replay's are its source's): kind, codec, type, size."""
    with opened(log) as lg:
        record = queries.execution(lg.conn, int(execution), lg.path)
        return _frame(lg, "outputs", "execution_id = ?", (record.source_id,))


# -- time travel ---------------------------------------------------------------------------------------------


def load(name: str, *, execution: int | None = None, run: int | None = None,
         at: dt.datetime | str | float | None = None, log: LogStore | str | os.PathLike[str] | None = None) -> Any:
    """The value of variable `name` as last recorded — at or before `execution`, within `run`, or by the time
    `at` (datetime, ISO string or epoch seconds; naive times are local). The namespace is not touched.
    Only %%durable cells record: a value set by a plain cell in between is not in the log.
    A pickled value loads only from a log this user trusts (see `durable-nb trust`)."""
    with opened(log) as lg:
        if execution is not None:
            queries.execution(lg.conn, int(execution), lg.path)
        if run is not None:
            queries.check_run(lg.conn, int(run), lg.path)
        bound = execution
        for _ in range(16):  # an alias points at the name it shares an object with
            ex_id, out = queries.find_output(lg.conn, name, lg.path, execution=bound, run=run, at=_epoch(at))
            if out.kind != "alias":
                return _decode(lg, ex_id, out)
            name, bound = str(out.target), ex_id
        raise DecodeError(f"variable {name} in {lg.path}: too many aliases to follow")


def _epoch(at: dt.datetime | str | float | None) -> float | None:
    if at is None or isinstance(at, int | float):
        return at
    when = dt.datetime.fromisoformat(at) if isinstance(at, str) else at
    return when.timestamp()


def _decode(log: LogStore, execution_id: int, out: queries.OutputRecord) -> Any:
    # Deferred for start-up speed: %load_ext and a script's first activity call load this module, not the codecs.
    from . import sharing
    from .codecs import check_seal, decode_value, reference

    where = f"variable {out.name} (execution {execution_id} of {log.path})"
    if out.kind == "deleted":
        raise NotRecordedError(f"{where} was deleted (del {out.name}) by that execution; pass an earlier "
                               "execution= or at= to get the value before.")
    if out.kind == "module":

        return reference.resolve(str(out.target), out.name)
    if out.codec is None:
        raise DecodeError(f"{where} was only displayed ({out.type}), not stored as a value.")

    check_seal(out.meta, where)
    if "view_of" in out.meta:  # a view of another variable of that execution (or one it read)

        anchor = load(str(out.meta["view_of"]), execution=out.execution_id, log=log)
        return sharing.rebuild(out.name, anchor, out.meta)
    if "bundle_of" in out.meta:  # one of the execution's pickled outputs: they share one stream
        _, holder = queries.find_output(log.conn, str(out.meta["bundle_of"]), log.path, execution=out.execution_id)
        return _bundle(log, holder, where)[int(out.meta["index"])]
    if "bundle" in out.meta:
        return _bundle(log, out, where)[0]
    sources = [log.blobs.source(b) for b in queries.blob_ids(log.conn, out.execution_id, out.name)]
    check_trusted(log, out, [s.hash for s in sources], where)
    try:
        return decode_value(out.codec, out.codec_version or 0, out.meta, sources, allow_pickle=True)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"{where} ({out.type}) cannot be loaded here: {type(exc).__name__}: {exc}") from exc


def check_trusted(log: LogStore, out: queries.OutputRecord, hashes: list[str], where: str) -> None:
    """UntrustedError, before any byte is decoded, unless the value is safe or signed by someone trusted here."""
    from .codecs import distrust

    problem = distrust(out.codec or "", out.codec_version or 0, out.meta, hashes, out.signature, out.signer,
                       str(log))
    if problem is not None:
        raise UntrustedError(f"{where} was not loaded (that would run code from the log): {problem}")


def _bundle(log: LogStore, holder: queries.OutputRecord, where: str) -> list[Any]:
    """The pickled outputs of one execution, in order; the variables they refer to are loaded as recorded then."""
    from .codecs import pickle  # deferred for start-up speed (see _decode)

    sources = [log.blobs.source(b) for b in queries.blob_ids(log.conn, holder.execution_id, holder.name)]
    check_trusted(log, holder, [s.hash for s in sources], where)

    def named(ref: str) -> Any:
        return load(ref.partition(":")[2], execution=holder.execution_id, log=log)

    try:
        return list(pickle.load(holder.meta, sources, named))
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"{where} cannot be loaded here: {type(exc).__name__}: {exc}") from exc


# -- diff ------------------------------------------------------------------------------------------------------


class Change(Record):
    __match_args__ = ("cell", "what", "name", "change", "a", "b")
    __slots__ = __match_args__

    def __init__(self, cell: str, what: Literal["cell", "code", "input", "output", "state"], name: str,
                 change: Literal["added", "removed", "changed"], a: str | None = None, b: str | None = None) -> None:
        self.cell = cell
        self.what = what
        self.name = name
        self.change = change
        self.a = a
        self.b = b


class Diff(Record):
    """What differs between two executions or two runs: code (unified diffs by cell), inputs, outputs."""

    __match_args__ = ("a", "b", "changes", "code")
    __slots__ = __match_args__

    def __init__(self, a: str, b: str, changes: list[Change] | None = None, code: dict[str, str] | None = None) -> None:
        self.a = a
        self.b = b
        self.changes = [] if changes is None else changes
        self.code = {} if code is None else code

    def __bool__(self) -> bool:
        return bool(self.changes)

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([c.as_dict() for c in self.changes], columns=["cell", "what", "name", "change", "a", "b"])

    def __str__(self) -> str:
        if not self.changes:
            return f"{self.a} and {self.b}: no differences in code, inputs or outputs"
        lines = [f"--- {self.a}", f"+++ {self.b}"]
        for c in self.changes:
            if c.what == "cell":
                lines.append(f"{c.cell}: only in {self.a if c.change == 'removed' else self.b}")
            elif c.what == "code":
                lines.append(f"{c.cell}: code changed")
            elif c.what == "state":
                lines.append(f"{c.cell}: state {c.a} → {c.b}")
            else:
                lines.append(f"{c.cell}: {c.what} {c.name} {c.change}: {c.a or '-'} → {c.b or '-'}")
        for cell, text in self.code.items():
            lines += [f"code of {cell}:", text.rstrip("\n")]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)


def diff(a: int, b: int, *, by: Literal["execution", "run"] = "execution",
         log: LogStore | str | os.PathLike[str] | None = None) -> Diff:
    """Compare two executions (`by="execution"`) or two runs (`by="run"`: each cell's last execution in each)."""
    with opened(log) as lg:
        if by == "execution":
            ra, rb = (queries.execution(lg.conn, int(x), lg.path) for x in (a, b))
            result = Diff(f"execution {a}", f"execution {b}")
            _compare(lg, ra, rb, result)
            return result
        for run_id in (a, b):
            queries.check_run(lg.conn, int(run_id), lg.path)
        cells_a, cells_b = (queries.last_execution_per_cell(lg.conn, int(r)) for r in (a, b))
        result = Diff(f"run {a}", f"run {b}")
        for cell in dict.fromkeys([*cells_a, *cells_b]):
            if cell not in cells_b:
                result.changes.append(Change(cell, "cell", cell, "removed", a=f"execution {cells_a[cell]}"))
            elif cell not in cells_a:
                result.changes.append(Change(cell, "cell", cell, "added", b=f"execution {cells_b[cell]}"))
            else:
                _compare(lg, queries.execution(lg.conn, cells_a[cell], lg.path),
                         queries.execution(lg.conn, cells_b[cell], lg.path), result)
        return result


def _compare(log: LogStore, a: ExecutionRecord, b: ExecutionRecord, into: Diff) -> None:
    cell = b.cell
    if a.code_hash != b.code_hash or a.code != b.code:
        into.changes.append(Change(cell, "code", cell, "changed", a.code_hash[:12], b.code_hash[:12]))
        import difflib  # deferred for start-up speed: activities import this module, only diff() needs it

        into.code[cell] = "".join(difflib.unified_diff(
            a.code.splitlines(keepends=True), b.code.splitlines(keepends=True),
            f"execution {a.id}", f"execution {b.id}"))
    if a.state != b.state:
        into.changes.append(Change(cell, "state", "state", "changed", a.state, b.state))
    _compare_maps(cell, "input", {k: v[:12] for k, v in a.inputs.items()},
                  {k: v[:12] for k, v in b.inputs.items()}, into)
    outs_a, outs_b = ({o.name: o for o in queries.outputs(log.conn, r.source_id)} for r in (a, b))
    _compare_maps(cell, "output", {k: o.content() for k, o in outs_a.items()},
                  {k: o.content() for k, o in outs_b.items()}, into,
                  show={**{f"a:{k}": _describe(o) for k, o in outs_a.items()},
                        **{f"b:{k}": _describe(o) for k, o in outs_b.items()}})


def _describe(out: queries.OutputRecord) -> str:
    if out.kind in ("alias", "module"):
        return f"{out.kind} {out.target}"
    if out.kind == "deleted":
        return "deleted"
    import xxhash

    digest = xxhash.xxh3_64_hexdigest(out.content().encode())[:8]
    return f"{out.type} ({out.codec}, {out.size:,} B, {digest})"


def _compare_maps(cell: str, what: Literal["input", "output"], a: dict[str, str], b: dict[str, str], into: Diff,
                  show: dict[str, str] | None = None) -> None:
    def shown(side: str, name: str, value: str) -> str:
        return show.get(f"{side}:{name}", value) if show is not None else value

    for name in dict.fromkeys([*a, *b]):
        if name not in b:
            into.changes.append(Change(cell, what, name, "removed", a=shown("a", name, a[name])))
        elif name not in a:
            into.changes.append(Change(cell, what, name, "added", b=shown("b", name, b[name])))
        elif a[name] != b[name]:
            into.changes.append(Change(cell, what, name, "changed", shown("a", name, a[name]),
                                       shown("b", name, b[name])))


# -- status and the timeline ------------------------------------------------------------------------------------


def status(log: LogStore | str | os.PathLike[str] | None = None) -> queries.LogStatus:
    """Path, sizes, schema version, runs, executions and activities by state, time saved, and the state of
    replication when this process replicates the log."""
    with opened(log) as lg:
        found = queries.status(lg.conn, lg.path, current_run=getattr(lg, "_run_id", None))
    found.replication = background.live_status(lg.path, "replication")
    found.pending_calls = journal.pending(lg.path)
    found.problems = background.problems(lg.path)
    return found


def timeline(log: LogStore | str | os.PathLike[str] | None = None, *, run: int | None = None,
             last: int | None = None, with_activities: bool = True) -> Figure:
    """A Gantt chart of cell executions (one lane per cell) and activity calls over time, coloured by state;
    each replay is drawn with a hatched bar as long as the time it saved. Reads well from 5 to 5,000+
    executions: one collection per state, thinned lane labels, a minimum visible bar width."""
    with opened(log) as lg:
        executions = history(lg, run=run, last=last)
        calls = None
        if with_activities and len(executions):
            calls = activities(lg, run=run)
            calls = calls[calls["started_at"] >= executions["started_at"].min()]
        from . import gantt  # deferred for start-up speed: activities open the log, only timelines draw

        return gantt.draw(executions, calls, lg.path.name)


class DurableLog(LogStore):
    """An open durable log, read-only by default: any log (a colleague's, a restored one) is inspected without
    being written (`readonly=False` to write). The history views are its methods:
    `DurableLog("colleague.durable.db").history()`, `.load(name)`, `.timeline()`..."""
    def history(self, *, cell: str | None = None, state: str | None = None, run: int | None = None,
                last: int | None = None) -> pd.DataFrame:
        return history(self, cell=cell, state=state, run=run, last=last)

    def runs(self) -> pd.DataFrame:
        return runs(self)

    def activities(self, *, execution: int | None = None, run: int | None = None,
                   state: str | None = None) -> pd.DataFrame:
        return activities(self, execution=execution, run=run, state=state)

    def outputs(self, execution: int) -> pd.DataFrame:
        return outputs(execution, self)

    def load(self, name: str, *, execution: int | None = None, run: int | None = None,
             at: dt.datetime | str | float | None = None) -> Any:
        return load(name, execution=execution, run=run, at=at, log=self)

    def diff(self, a: int, b: int, *, by: Literal["execution", "run"] = "execution") -> Diff:
        return diff(a, b, by=by, log=self)

    def timeline(self, *, run: int | None = None, last: int | None = None,
                 with_activities: bool = True) -> Figure:
        return timeline(self, run=run, last=last, with_activities=with_activities)

    def status(self) -> queries.LogStatus:
        return status(self)
