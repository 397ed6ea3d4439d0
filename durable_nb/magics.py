"""IPython magics and settings. Thin: parse options, then hand the cell to `cell.DurableCell`.

Settings are traitlets on `DurableMagics`: `%config DurableMagics.db = "x.durable.db"` or `ipython_config.py`
(`c.DurableMagics.db = ...`); the DURABLE_NB_DB environment variable is the default of `db`.

Durable by default (`%durable on`, `DurableMagics.all_cells`): an input transformer, last of the shell's
`input_transformers_cleanup`, puts `%%durable` in front of every top-level cell, unless the cell starts with a
magic (`%`, `%%`) or a shell escape (`!`), or the execute request's cell metadata has the tag `durable-off`
(JupyterLab sends each cell's metadata, tags included, with its execute_request; so does `durable-nb run`).

Async cells (top-level `await`, `async for`, `async with`): IPython decides whether to run a cell on its event
loop from the *transformed* cell (`should_run_async`), and `%%durable BODY` becomes
`get_ipython().run_cell_magic('durable', LINE, BODY)`, which is not async. `AwaitDurable`, an input transformer
of the shell's `input_transformers_post`, rewrites that call into `await get_ipython().run_cell_magic('durable',
'--awaited ' + LINE, BODY)` when autoawait is on and BODY has top-level await: IPython then runs the cell on
the loop it already runs (ipykernel's, or terminal IPython's runner), and the magic returns the coroutine of the
cell's run (`DurableCell.run_async`), which that `await` awaits. No loop is started, nothing is patched.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.core.magic_arguments import parse_argstring as _parse_argstring
from traitlets import Bool, CaselessStrEnum, Unicode, observe

from . import session
from .errors import LogError
from .log import current
from .pg_url import display_url
from .views import DurableLog

if TYPE_CHECKING:
    from .cell import Steps


def parse_argstring(magic: Any, line: str) -> Any:
    """IPython's parse, with one pair of quotes around a value taken off: it splits like a shell but keeps the
    quotes (`--name "load data"` would name the cell `"load data"`, quotes included)."""
    args = _parse_argstring(magic, line)
    for key, value in vars(args).items():
        if isinstance(value, str):
            setattr(args, key, _unquoted(value))
        elif isinstance(value, list):
            setattr(args, key, [_unquoted(v) if isinstance(v, str) else v for v in value])
    return args


def _unquoted(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


OFF_TAG = "durable-off"
AWAIT_OPTION = "--awaited"
_RUN_CODE = InteractiveShell.run_code.__code__


def request_metadata(shell: Any) -> dict[str, Any]:
    """The metadata of the execute_request being handled (JupyterLab: cellId and the cell's metadata, tags
    included); empty outside a kernel."""
    kernel = getattr(shell, "kernel", None)
    try:
        parent = kernel.get_parent() if kernel is not None else None
    except Exception:
        return {}
    metadata = (parent or {}).get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _called_from_run_code() -> bool:
    """True when called from code a cell runs (a cell magic transforming its body, a nested run_cell): only the
    top-level cell is made durable."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code is _RUN_CODE:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


class _Nesting:
    depth = 0  # > 0 while AwaitDurable transforms a cell body: that body is not a top-level cell


def _inside_a_cell() -> bool:
    return _Nesting.depth > 0 or _called_from_run_code()


class AwaitDurable:
    """An input transformer of `input_transformers_post` (lines -> lines, after IPython's own transforms):
    `get_ipython().run_cell_magic('durable', LINE, BODY)` whose BODY has top-level await becomes the awaited
    call above (module doc). Any other cell is returned as it is, after a substring test."""

    _PREFIX = "get_ipython().run_cell_magic('durable', "

    def __init__(self, shell: Any) -> None:
        self.shell = shell

    def __call__(self, lines: list[str]) -> list[str]:
        if not lines or not lines[0].startswith(self._PREFIX) or not getattr(self.shell, "autoawait", False):
            return lines
        source = "".join(lines)
        if "await" not in source and "async" not in source:
            return lines
        try:
            (stmt,) = ast.parse(source).body
            assert isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
            name, line, body = (ast.literal_eval(a) for a in stmt.value.args)
        except (SyntaxError, ValueError, AssertionError):
            return lines
        if not isinstance(line, str) or not isinstance(body, str) or not self._awaits(body):
            return lines
        return [f"await get_ipython().run_cell_magic({name!r}, {AWAIT_OPTION + ' ' + line!r}, {body!r})\n"]

    def _awaits(self, body: str) -> bool:
        from .cell import _transform  # deferred for start-up speed: %load_ext imports no cell machinery

        _Nesting.depth += 1
        try:
            transformed = _transform(self.shell, body)
        except Exception:
            return False  # the magic reports it when it runs
        finally:
            _Nesting.depth -= 1
        try:
            code = compile(transformed, "<durable>", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        except (SyntaxError, ValueError, MemoryError):
            return False
        return bool(code.co_flags & 0x0080)  # inspect.CO_COROUTINE, as IPython's _should_be_async


class DurableByDefault:
    """An input transformer (lines -> lines) that makes a cell durable by putting `%%durable` in front of it.

    It runs last among the cleanup transforms (prompts and indentation are gone, magics not yet translated), and
    declares side effects so that `check_complete` (terminal IPython deciding whether input is finished) never
    sees the added cell magic."""

    has_side_effects = True

    def __init__(self, shell: Any) -> None:
        self.shell = shell

    def __call__(self, lines: list[str]) -> list[str]:
        if not lines or lines[0].lstrip()[:1] in ("%", "!") or _inside_a_cell():
            return lines
        tags = request_metadata(self.shell).get("tags") or []
        if isinstance(tags, list) and OFF_TAG in tags:
            return lines
        return ["%%durable\n", *lines]


@magics_class
class DurableMagics(Magics):
    """Durable cells: record what a cell produced into a SQLite log and replay it after a restart."""

    db = Unicode(
        os.environ.get("DURABLE_NB_DB", ""),
        help="Path of the durable log. Empty: <notebook>.durable.db beside the notebook, else ./durable.db.",
    ).tag(config=True)
    durability = CaselessStrEnum(
        ["normal", "full"], default_value="normal",
        help="normal: survives a kernel crash (synchronous=NORMAL). full: fsync every record, survives power loss.",
    ).tag(config=True)
    enabled = Bool(True, help="When False, %%durable cells simply run, nothing is recorded or replayed.").tag(
        config=True)
    replicate_url = Unicode(
        os.environ.get("DURABLE_NB_REPLICATE_URL", ""),
        help="s3://BUCKET/PATH: stream the log there with Litestream from the moment the extension loads, and "
             "restore the log from it first if the log file does not exist yet.",
    ).tag(config=True)
    replicate_endpoint = Unicode(
        os.environ.get("DURABLE_NB_REPLICATE_ENDPOINT", ""),
        help="Endpoint of an S3-compatible server (MinIO, R2, rclone...); empty for AWS.",
    ).tag(config=True)
    sync_interval = Unicode(
        os.environ.get("DURABLE_NB_SYNC_INTERVAL", "1s"), help="How often Litestream ships new writes (e.g. 1s, 100ms)."
    ).tag(config=True)
    all_cells = Bool(
        False, help="Every following code cell is durable without %%durable (also: %durable on / %durable off). "
                    "Cells starting with a magic or !, and cells tagged durable-off, are left alone.",
    ).tag(config=True)
    from_scratch = Bool(
        False, help="Records of earlier runs are not replayed: every cell and activity call runs (and is recorded) "
                    "again. Used by durable-nb run --from-scratch.",
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        self._transformer = DurableByDefault(shell)
        super().__init__(shell=shell, **kwargs)

    @observe("db", "durability", "from_scratch")
    def _reopen(self, change: Any) -> None:
        self.configure_log()

    def configure_log(self) -> None:
        """Make the session's current log the one these settings name (cells and activities then agree)."""
        session.configure(self.db or None, durability=self.durability, from_scratch=self.from_scratch)

    @observe("all_cells")
    def _mode_changed(self, change: Any) -> None:
        self.apply_mode()

    def apply_mode(self) -> None:
        """Register (all_cells on) or remove (off) the input transformer; idempotent."""
        if self.shell is None:
            return
        transforms = self.shell.input_transformers_cleanup
        if self._transformer in transforms:
            transforms.remove(self._transformer)
        if self.all_cells:
            transforms.append(self._transformer)

    def log(self, path: str | None = None) -> DurableLog:
        try:
            if path:
                return DurableLog(path, readonly=False, durability=self.durability, from_scratch=self.from_scratch)
            return session.current_log()
        except LogError as exc:
            raise UsageError(str(exc)) from exc

    @magic_arguments()
    @argument("mode", nargs="?", help="on: every following code cell is durable; off: only cells marked durable.")
    @line_magic("durable")  # type: ignore[arg-type]  # IPython types the named form as taking a name only
    def durable_mode(self, line: str) -> None:
        """%durable on | off: make every following code cell durable without writing %%durable (the setting
        DurableMagics.all_cells). Cells that start with a magic (%, %%) or a shell escape (!) are left alone; a
        cell opts out with a first line %%durable --off or the cell tag durable-off. %durable alone shows the
        mode."""
        args = parse_argstring(self.durable_mode, line)
        mode = (args.mode or "").lower()
        if mode not in ("", "on", "off"):
            raise UsageError(f"%durable {args.mode}: say %durable on or %durable off (for one cell: %%durable).")
        if mode:
            self.all_cells = mode == "on"
        print("durable mode: on (every code cell is durable; opt out with %%durable --off or the tag durable-off)"
              if self.all_cells else "durable mode: off (only %%durable cells are durable)")

    @magic_arguments()
    @argument("--name", "-n", help="A stable name for the cell (shown in history; used to explain re-runs).")
    @argument("--force", "-f", action="store_true", help="Run the cell even if a matching record exists.")
    @argument("--deps", metavar="A,B", help="Extra variables (or literal tags) that enter the cell's key.")
    @argument("--ignore", metavar="X,Y", help="Variables neither fingerprinted nor recorded (e.g. a connection).")
    @argument("--deps-file", metavar="PATH", nargs="+", action="extend", default=[],
              help="Files the cell reads that it cannot be seen reading (through a subprocess, say); an edit to "
                   "one makes the cell run again. Files opened by Python or named in the cell are found anyway.")
    @argument("--no-auto-deps", action="store_true",
              help="Do not look for the files and environment variables the cell reads (only --deps-file counts).")
    @argument("--db", metavar="PATH", help="Use this log file for this cell instead of the default log.")
    @argument("--off", action="store_true",
              help="Run the cell plainly: nothing is recorded or replayed (opts a cell out of the durable mode).")
    @argument(AWAIT_OPTION, action="store_true", help=argparse.SUPPRESS)  # added by AwaitDurable, see there
    @cell_magic
    def durable(self, line: str, cell: str) -> Any:
        """Run the cell durably: replay it from the log when its code and inputs match a record, else run it
        and record its variables, output and result. Top-level await, async for and async with work as in a
        plain cell."""
        __tracebackhide__ = True
        from . import tracebacks  # deferred, as the cell machinery: %load_ext imports neither
        from .cell import drive, drive_async  # deferred for start-up speed: %load_ext imports no cell machinery

        args = parse_argstring(self.durable, line)
        # Only the cell's own %%durable: code calling run_cell_magic keeps its frames in the traceback.
        top = tracebacks.is_top_level()
        if args.awaited:
            # AwaitDurable made the cell `await get_ipython().run_cell_magic(...)`: IPython awaits this.
            running = drive_async(self._steps(args, cell, awaiting=True))
            return tracebacks.awaited_as_cell(self.shell, running) if top else running
        try:
            return drive(self._steps(args, cell, awaiting=False))
        except BaseException as exc:
            if top:
                tracebacks.as_cell(self.shell, exc)
            raise

    def _steps(self, args: Any, cell: str, *, awaiting: bool) -> Steps:
        """The cell's run as steps (cell.Steps): one code path for sync and async bodies."""
        __tracebackhide__ = True
        from .cell import CellOptions, DurableCell, default_cell_id, exec_steps, run_unlogged  # deferred: start-up

        assert self.shell is not None
        if args.off or not self.enabled:
            from .analysis import analyze  # deferred for start-up speed: %load_ext imports no cell analysis

            transformed = self.shell.transform_cell(cell)
            return (yield from exec_steps(self.shell, cell, transformed, analyze(transformed), awaiting=awaiting))
        opts = CellOptions(name=args.name, force=args.force, deps=_names(args.deps), ignore=_names(args.ignore),
                           deps_files=list(args.deps_file), auto_deps=not args.no_auto_deps)
        try:
            log = self.log(args.db)
        except UsageError as exc:
            return (yield from run_unlogged(self.shell, cell, str(exc), awaiting=awaiting, name=args.name))
        try:
            durable = DurableCell(self.shell, log, cell, opts, default_cell_id(self.shell))
            return (yield from durable.steps(awaiting=awaiting))
        finally:
            if args.db:
                log.close()

    @line_magic
    def durable_status(self, line: str) -> None:
        """Show the log path and size, its schema, the runs, the executions and activities by state, the time
        saved, and the replication state when this kernel replicates the log. Nothing is written."""
        from .views import status  # deferred for start-up speed: %load_ext imports no history views

        print(status(self.log()))

    @magic_arguments()
    @argument("--cell", metavar="NAME", help="Only this cell (its --name or cell id).")
    @argument("--last", type=int, default=20, metavar="N", help="The last N executions (default 20; 0 = all).")
    @argument("--failed", action="store_true", help="Only failed and crashed executions.")
    @line_magic
    def durable_history(self, line: str) -> None:
        """A compact table of the log's cell executions: state, when, how long, time saved, why, outputs.
        The full data: durable_nb.history() (a DataFrame)."""
        from IPython.display import HTML, display

        from .views import history_html  # deferred for start-up speed: %load_ext imports no history views

        args = parse_argstring(self.durable_history, line)
        if args.last < 0:
            raise UsageError(f"%durable_history --last {args.last}: N must be 0 (all) or more.")
        display(HTML(history_html(self.log(), cell=args.cell, last=args.last or None, failed=args.failed)))

    @line_magic
    def durable_trust(self, line: str) -> None:
        """%durable_trust [LOG]: after reviewing a log (yours by default, or a colleague's LOG), sign its pickled
        values with your key so they replay here. Tampered values are reported and never signed."""
        from .trust import trust_log  # deferred for start-up speed: %load_ext imports no trust review

        path = line.strip()
        try:
            done = trust_log(path if path else self.log())
        except LogError as exc:
            raise UsageError(str(exc)) from exc
        print("\n".join(done.lines()))


    @magic_arguments()
    @argument("url", nargs="?", help="s3://BUCKET/PATH of the replica.")
    @argument("--endpoint", help="Endpoint URL of an S3-compatible server (MinIO, R2, rclone...).")
    @argument("--region", help="Region of the bucket (default us-east-1 for custom endpoints).")
    @argument("--sync-interval", help="How often Litestream ships new writes (default: the sync_interval setting).")
    @argument("--stop", action="store_true", help="Stop replicating the current log.")
    @line_magic
    def durable_replicate(self, line: str) -> None:
        """Stream the current log to S3-compatible storage with Litestream, in the background. Asynchronous:
        a restore can miss the last ~second of writes. Credentials come from the standard AWS chain."""
        from . import replicate  # deferred for start-up speed: boto3 only when replicating

        args = parse_argstring(self.durable_replicate, line)
        log = self.log()
        if args.stop:
            stopped = replicate.stop_replication(log.path)
            print(f"replication of {log.path.name} stopped" if stopped else "no replication was running")
            return
        if not args.url:
            raise UsageError("%durable_replicate needs a replica URL (s3://BUCKET/PATH) or --stop.")
        try:
            # Litestream retries an unreachable endpoint silently for minutes: ask the bucket first, so that a
            # wrong --endpoint, bucket or key fails this cell instead of a background process.
            problem = replicate.check_reachable(
                replicate.parse_s3_url(args.url, endpoint=args.endpoint or None, region=args.region))
            if problem is not None:
                raise replicate.ReplicationError(f"not replicating {log.path.name}: {problem}")
            rep = replicate.start_replication(
                log.path, args.url, endpoint=args.endpoint or None, region=args.region,
                sync_interval=args.sync_interval or self.sync_interval)
        except replicate.ReplicationError as exc:
            raise UsageError(f"{exc} Nothing was started; the notebook keeps working with its local log.") from exc
        print(replicate.format_status(rep.status()))

    def start_configured_replication(self) -> None:
        """The `replicate_url` setting: restore a missing log from its replica, then replicate it. A problem
        is reported, never raised: the notebook keeps working with a local log."""
        if not self.replicate_url:
            return
        from . import replicate  # deferred for start-up speed: boto3 only when replicating

        path = current.configured_path()
        if isinstance(path, str):
            print(f"durable: not replicating: {display_url(path)} is a PostgreSQL log (its server keeps it "
                  "durable; Litestream replicates SQLite files).", file=sys.stderr)
            return
        options = {"endpoint": self.replicate_endpoint or None}
        try:
            if replicate.restore_if_missing(path, self.replicate_url, **options):
                print(f"durable: restored {path} from {self.replicate_url}")
            log = self.log()
            replicate.start_replication(log.path, self.replicate_url, sync_interval=self.sync_interval, **options)
        except (replicate.ReplicationError, UsageError) as exc:
            print(f"durable: not replicating ({exc}); the log stays local.", file=sys.stderr)


def load_ipython_extension(ip: Any) -> None:
    magics = DurableMagics(shell=ip, parent=ip)
    ip.register_magics(magics)
    if magics not in ip.configurables:
        ip.configurables.append(magics)
    magics.apply_mode()  # c.DurableMagics.all_cells = True in a config file
    magics.configure_log()  # c.DurableMagics.db in a config file, before any cell or activity call
    if not any(isinstance(t, AwaitDurable) for t in ip.input_transformers_post):
        ip.input_transformers_post.append(AwaitDurable(ip))
    magics.start_configured_replication()


def unload_ipython_extension(ip: Any) -> None:
    for transform in list(ip.input_transformers_cleanup):
        if isinstance(transform, DurableByDefault):
            ip.input_transformers_cleanup.remove(transform)
    for transform in list(ip.input_transformers_post):
        if isinstance(transform, AwaitDurable):
            ip.input_transformers_post.remove(transform)
    session.close_log()
