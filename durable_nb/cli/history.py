"""`durable-nb history | runs | activities | show | load | diff | gc | export | status`: the history views
from a terminal. Every verb but gc opens the log read-only; tables fit the terminal and show relative times;
--json / --nl / --csv / --tsv (cli/output.py) give the same columns as the Python API (docs/schema.md). Exit
codes: 0 ok, 1 a clear error on one line, 2 a usage error."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..pg_url import display_url
from ..vocabulary import CALL_STATES, STATES, ago, fmt_duration, human_bytes
from . import output
from .output import Table

if TYPE_CHECKING:
    import pandas as pd

TABLE_LAST = 30  # rows a terminal table shows unless --last says otherwise


def register(sub: Any) -> None:
    p = sub.add_parser("history", help="cell executions: state, times, time saved, why re-run, outputs, errors")
    _log(p)
    output.add_options(p)
    p.add_argument("--last", type=int, metavar="N",
                   help=f"only the last N executions (table default {TABLE_LAST}; 0 = all)")
    p.add_argument("--state", choices=STATES, help="only executions in this state")
    p.add_argument("--cell", metavar="NAME", help="only this cell (its --name or cell id)")
    p.set_defaults(handler=_history)

    p = sub.add_parser("runs", help="kernel sessions that used the log, with counts by state and time saved")
    _log(p)
    output.add_options(p)
    p.set_defaults(handler=_runs)

    p = sub.add_parser("activities", help="recorded activity calls: attempts, retries, last error")
    _log(p)
    output.add_options(p)
    p.add_argument("--last", type=int, metavar="N",
                   help=f"only the last N calls (table default {TABLE_LAST}; 0 = all)")
    p.add_argument("--state", choices=CALL_STATES, help="only calls in this state")
    p.set_defaults(handler=_activities)

    p = sub.add_parser("show", help="one execution: code, inputs, outputs, and its recorded output as text")
    _log(p)
    p.add_argument("execution", type=int, help="execution id (see `durable-nb history LOG`)")
    p.set_defaults(handler=_show)

    p = sub.add_parser("load", help="write a recorded variable to a file (.parquet, .npy, .json, .pkl)")
    _log(p)
    p.add_argument("name", help="variable name")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="FILE.parquet|.npy|.json|.pkl")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--execution", type=int, metavar="ID", help="as recorded at or before this execution")
    when.add_argument("--run", type=int, metavar="ID", help="as last recorded in this run")
    when.add_argument("--at", metavar="TIME", help="as recorded by this time (ISO 8601, e.g. 2026-11-26T14:03)")
    p.set_defaults(handler=_load)

    p = sub.add_parser("diff", help="what changed between two executions (or two runs): code, inputs, outputs")
    _log(p)
    p.add_argument("a", type=int, help="execution id (run id with --runs)")
    p.add_argument("b", type=int, help="execution id (run id with --runs)")
    p.add_argument("--runs", action="store_true", help="compare two runs, cell by cell")
    p.set_defaults(handler=_diff)

    p = sub.add_parser("gc", help="drop superseded executions and unreferenced blobs; report the bytes freed")
    _log(p)
    p.add_argument("--keep-last", type=int, default=1, metavar="N",
                   help="executions kept per cell, besides its latest replayable record (default 1)")
    p.set_defaults(handler=_gc)

    p = sub.add_parser("export", help="a compact, self-contained copy of a log to share")
    _log(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the new log")
    p.add_argument("--latest-only", action="store_true",
                   help="only the latest replayable record of each cell key (and of each activity call)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.set_defaults(handler=_export)

    p = sub.add_parser("status", help="the log's size, schema, runs, executions by state and time saved")
    _log(p)
    p.add_argument("--json", action="store_true", help="as a JSON object")
    p.set_defaults(handler=_status)


def _log(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", metavar="LOG",
                   help="a durable log: a file or a postgresql:// URL (opened read-only unless the verb changes it)")


# -- table rendering ------------------------------------------------------------------------------------------


def _seconds(value: Any) -> str:
    try:
        return "-" if value is None or value != value else fmt_duration(float(value))
    except (TypeError, ValueError):
        return "-"


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value) or str(value) in ("nan", "<NA>", "None"):
        return ""
    return str(value)


def _emit(frame: pd.DataFrame, args: argparse.Namespace, render: Any, what: str) -> int:
    headers, rows = output.frame_rows(frame)
    return output.emit(args, headers, rows, lambda: render(frame), empty=f"no {what} in {display_url(args.log)}")


def _tail(args: argparse.Namespace) -> int | None:
    if args.last is not None:
        return args.last or None
    return TABLE_LAST if output.chosen(args) == "table" else None


def _more(shown: int, total: int, what: str) -> str:
    return f"\n({total - shown} earlier {what} not shown; --last 0 shows all)" if total > shown else ""


# -- verbs ----------------------------------------------------------------------------------------------------


def _history(args: argparse.Namespace) -> int:
    from ..views import history, opened

    with opened(args.log) as log:
        frame = history(log, cell=args.cell, state=args.state, last=_tail(args))
        total = (int(log.conn.execute("SELECT count(*) FROM execution").fetchone()[0])
                 if args.cell is None and args.state is None else len(frame))

    def render(f: pd.DataFrame) -> Table:
        from ..log.queries import cell_label

        rows = [[str(r.execution_id), str(r.run_id), cell_label(r.cell_name, r.cell_id, r.code_hash), str(r.state),
                 ago(r.started_at), _seconds(r.duration), _seconds(r.saved_seconds) if r.saved_seconds else "",
                 _size(r.bytes_stored), _note(r)] for r in f.itertuples()]
        return Table(["id", "run", "cell", "state", "started", "took", "saved", "stored", "outputs / why"], rows,
                     squeeze=8, footer=_more(len(f), total, "executions"))

    return _emit(frame, args, render, "executions")


def _note(r: Any) -> str:
    if _text(r.error_type):
        return f"{r.error_type}: {_text(r.error_message)}"
    parts = [_text(r.outputs)]
    if _text(r.reason):
        parts.append(f"({r.reason})")
    return " ".join(p for p in parts if p)


def _size(n: Any) -> str:
    return human_bytes(int(n)) if n else ""


def _runs(args: argparse.Namespace) -> int:
    from ..views import runs

    frame = runs(args.log)

    def render(f: pd.DataFrame) -> Table:
        rows = [[str(r.run_id), ago(r.started_at), _seconds((r.ended_at - r.started_at).total_seconds())
                 if _text(r.ended_at) else "open", f"{r.host}:{r.pid}", Path(_text(r.notebook)).name,
                 str(r.executions), str(r.recorded), str(r.replayed), str(r.failed), str(r.crashed),
                 _seconds(r.saved_seconds) if r.saved_seconds else "", str(r.activities)] for r in f.itertuples()]
        return Table(["run", "started", "lasted", "process", "notebook", "executions", "recorded", "replayed",
                      "failed", "crashed", "saved", "activities"], rows, squeeze=4)

    return _emit(frame, args, render, "runs")


def _activities(args: argparse.Namespace) -> int:
    from ..views import activities

    frame = activities(args.log, state=args.state)
    total = len(frame)
    tail = _tail(args)
    if tail is not None:
        frame = frame.tail(tail)

    def render(f: pd.DataFrame) -> Table:
        rows = [[str(r.call_id), str(r.run_id), _text(r.execution_id), str(r.function), str(r.state),
                 ago(r.started_at), _seconds(r.duration), str(r.attempts), str(r.retries), _text(r.last_error)]
                for r in f.itertuples()]
        return Table(["call", "run", "execution", "function", "state", "started", "took", "attempts", "retries",
                      "last error"], rows, squeeze=9, footer=_more(len(f), total, "calls"))

    return _emit(frame, args, render, "activity calls")


def _show(args: argparse.Namespace) -> int:
    from ..log import queries
    from ..views import opened

    with opened(args.log) as log:
        ex = queries.execution(log.conn, args.execution, log.path)
        outs = queries.outputs(log.conn, ex.source_id)
        events = queries.events(log.conn, ex.source_id)
    print(f"execution {ex.id} · {ex.cell} · {ex.state} · run {ex.run_id}")
    started = dt.datetime.fromtimestamp(ex.started_at, dt.UTC)
    print(f"started {started:%Y-%m-%d %H:%M:%S} UTC ({ago(ex.started_at)}) · took {_seconds(ex.duration)}")
    if ex.replayed_from:
        print(f"replayed from execution {ex.replayed_from} · saved {_seconds(ex.saved_seconds)}")
    if ex.reason:
        print(f"ran because: {ex.reason}")
    if ex.error_type:
        print(f"error: {ex.error_type}: {ex.error_message}")
    print("inputs: " + (", ".join(f"{n} ({fp[:12]})" for n, fp in ex.inputs.items()) or "none"))
    print("code:")
    print("\n".join(f"  │ {line}" for line in ex.code.splitlines()))
    values = [[o.name, o.kind, _text(o.type), _text(o.codec) or _text(o.target), _size(o.size)] for o in outs]
    if values:
        print("outputs:")
        print(Table(["name", "kind", "type", "codec / target", "size"], values, squeeze=2).render())
    text = _recorded_text(events, outs)
    if text:
        print("recorded output:")
        print(text)
    if ex.traceback:
        print("traceback:")
        print(ex.traceback.rstrip())
    return 0


def _recorded_text(events: list[tuple[str, Any]], outs: list[Any]) -> str:
    """stdout, stderr, displays and the result, as text; nothing is decoded."""
    lines = []
    for kind, data in events:
        if kind in ("stdout", "stderr"):
            body = data if isinstance(data, str) else str(data)
            lines += [f"  [{kind}] {line}" for line in body.rstrip("\n").splitlines()]
        elif kind in ("display", "update_display"):
            bundle = data.get("data", data) if isinstance(data, dict) else {}
            plain = bundle.get("text/plain") if isinstance(bundle, dict) else None
            mimes = ", ".join(bundle) if isinstance(bundle, dict) else "?"
            lines.append(f"  [display] {plain if plain else '(' + mimes + ')'}")
    for out in outs:
        if out.kind == "result":
            plain = (out.meta.get("bundle") or {}).get("data", {}).get("text/plain")
            shown = plain or (f"alias of {out.target}" if out.target else f"{out.type}, stored with {out.codec}")
            lines.append(f"  [result] {shown}")
    return "\n".join(lines)


def _load(args: argparse.Namespace) -> int:
    from ..errors import DurableError
    from ..views import load

    target = Path(args.output)
    writer = _WRITERS.get(target.suffix.lower())
    if writer is None:
        raise DurableError(f"cannot write {target}: choose a file ending in {', '.join(_WRITERS)}.")
    try:
        at = dt.datetime.fromisoformat(args.at) if args.at else None
    except ValueError as exc:
        raise DurableError(f"--at {args.at!r} is not an ISO 8601 time (e.g. 2026-11-26T14:03:00Z).") from exc
    value = load(args.name, execution=args.execution, run=args.run, at=at, log=args.log)
    writer(value, target, args.name)
    print(f"wrote {args.name} ({type(value).__module__}.{type(value).__qualname__}) to {target} "
          f"({human_bytes(target.stat().st_size)})")
    return 0


def _refuse(name: str, value: Any, target: Path, fits: str) -> Exception:
    from ..errors import DurableError

    return DurableError(f"variable {name} is a {type(value).__qualname__}, which {target.suffix} cannot hold "
                        f"({fits}); choose .pkl (any value) or .json (plain data).")


def _write_parquet(value: Any, target: Path, name: str) -> None:
    import pandas as pd

    if isinstance(value, pd.Series):
        value = value.to_frame()
    if not isinstance(value, pd.DataFrame):
        raise _refuse(name, value, target, "DataFrames and Series")
    value.to_parquet(target)


def _write_npy(value: Any, target: Path, name: str) -> None:
    import numpy as np

    array = value if isinstance(value, np.ndarray) else None
    if array is None or array.dtype.hasobject:
        raise _refuse(name, value, target, "numeric arrays")
    np.save(target, array, allow_pickle=False)


def _write_json(value: Any, target: Path, name: str) -> None:
    import pandas as pd

    if isinstance(value, pd.DataFrame | pd.Series):
        target.write_text(value.to_json(orient="records" if isinstance(value, pd.DataFrame) else "index",
                                        date_format="iso"))
        return
    if hasattr(value, "tolist"):
        value = value.tolist()
    try:
        text = json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise _refuse(name, value, target, f"plain data only: {exc}") from exc
    target.write_text(text)


def _write_pickle(value: Any, target: Path, name: str) -> None:
    import cloudpickle

    with target.open("wb") as fh:
        cloudpickle.dump(value, fh, protocol=5)


_WRITERS = {".parquet": _write_parquet, ".npy": _write_npy, ".json": _write_json, ".pkl": _write_pickle}


def _diff(args: argparse.Namespace) -> int:
    from ..views import diff

    print(diff(args.a, args.b, by="run" if args.runs else "execution", log=args.log))
    return 0


def _gc(args: argparse.Namespace) -> int:
    from ..log.maintenance import gc

    print(gc(args.log, keep_last=args.keep_last, progress=sys.stderr.isatty()).summary())
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..log.maintenance import export

    result = export(args.log, args.output, args.latest_only, force=args.force, progress=sys.stderr.isatty())
    print(result.summary())
    return 0


def _status(args: argparse.Namespace) -> int:
    from ..views import status

    found = status(args.log)
    if args.json:
        print(json.dumps(found.as_dict()))
        return 0
    print(found)
    return 0
