"""How every listing verb prints its rows: the output options of sqlite-utils' CLI, in one place.

`--table` (`-t`), `--json` (one JSON array, a row per line), `--nl` (newline-delimited JSON), `--csv`, `--tsv`;
`--arrays` (rows as arrays in JSON), `--no-headers` (CSV, TSV, tables) and `--fmt STYLE` (a tabulate style,
implies `--table`), as sqlite-utils names them. Without a format option a terminal gets a table and a pipe gets
the JSON array, which is what sqlite-utils prints by default everywhere: `durable-nb history LOG | jq` works
without a flag. Binary values are `{"$base64": true, "encoded": ...}` in JSON, as sqlite-utils writes them.

sqlite-utils itself is not imported: its output helpers live in its click CLI module, and `import sqlite_utils`
imports pandas and numpy when they are installed, which `durable-nb query` never needs (see README).
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("table", "json", "nl", "csv", "tsv")


class UsageError(Exception):
    """Options that parse but do not go together; `main` reports it as argparse does (exit 2)."""


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output (default: a table on a terminal, else a JSON array)")
    chosen = group.add_mutually_exclusive_group()
    chosen.add_argument("-t", "--table", dest="output", action="store_const", const="table",
                        help="a table fitted to the terminal")
    chosen.add_argument("--json", dest="output", action="store_const", const="json",
                        help="one JSON array, a row per line (ISO 8601 UTC times)")
    chosen.add_argument("--nl", dest="output", action="store_const", const="nl",
                        help="newline-delimited JSON: one object per line")
    chosen.add_argument("--csv", dest="output", action="store_const", const="csv", help="CSV with a header row")
    chosen.add_argument("--tsv", dest="output", action="store_const", const="tsv", help="TSV with a header row")
    group.add_argument("--arrays", action="store_true", help="JSON rows as arrays rather than objects")
    group.add_argument("--no-headers", action="store_true", help="no header row in CSV, TSV and tables")
    group.add_argument("--fmt", metavar="STYLE",
                       help="table style (implies --table): simple, github, grid, psql, ... (any tabulate style)")
    parser.set_defaults(output=None, usage_parser=parser)


def chosen(args: argparse.Namespace) -> str:
    """The format `args` ask for; a pipe without a format option gets JSON, as sqlite-utils does."""
    if args.fmt is not None:
        from tabulate import tabulate_formats

        if args.output not in (None, "table"):
            raise UsageError(f"--fmt styles tables; it does not go with --{args.output}")
        if args.fmt not in tabulate_formats:
            raise UsageError(f"--fmt {args.fmt!r} is not a table style; choose one of {', '.join(tabulate_formats)}")
        return "table"
    if args.arrays and args.output not in (None, "json", "nl"):
        raise UsageError(f"--arrays shapes JSON rows; it does not go with --{args.output}")
    if args.output is not None:
        return str(args.output)
    return "table" if sys.stdout.isatty() else "json"


@dataclass
class Table:
    """A verb's own table: short cells (relative times, sizes) in place of the raw columns."""

    headers: list[str]
    rows: list[list[str]]
    squeeze: int | None = None  # the free-text column that gives up its width first
    footer: str = ""

    def render(self, fmt: str | None = None, headers: bool = True) -> str:
        from tabulate import tabulate

        rows = self.rows
        if self.squeeze is not None and rows:
            width = shutil.get_terminal_size((120, 24)).columns
            fixed = sum(max(len(h), *(len(r[i]) for r in rows)) + 2
                        for i, h in enumerate(self.headers) if i != self.squeeze)
            room = max(width - fixed - 2, 12)
            rows = [[(c[: room - 1] + "…") if i == self.squeeze and len(c) > room else c for i, c in enumerate(r)]
                    for r in rows]
        text = str(tabulate(rows, headers=self.headers if headers else (), tablefmt=fmt or "simple",
                            disable_numparse=True))
        return text + self.footer


def frame_rows(frame: pd.DataFrame) -> tuple[list[str], list[list[Any]]]:
    """A DataFrame's columns and rows as plain values: times as ISO 8601 UTC text, missing values as None."""
    split = json.loads(frame.to_json(orient="split", index=False, date_format="iso", date_unit="us"))
    return [str(c) for c in split["columns"]], split["data"]


def emit(args: argparse.Namespace, headers: Sequence[str], rows: Iterable[Sequence[Any]],
         table: Callable[[], Table] | None = None, *, empty: str = "") -> int:
    """Print rows in the chosen format. `table` is the verb's own table (else the raw rows are tabulated);
    `empty` is what a table says when there are no rows (JSON prints `[]`, CSV only its header)."""
    fmt = chosen(args)
    out = sys.stdout
    if fmt == "table":
        shown = table() if table is not None else Table(list(headers), [[_cell(v) for v in r] for r in rows])
        print(shown.render(args.fmt, headers=not args.no_headers) if shown.rows or not empty else empty, file=out)
    elif fmt in ("csv", "tsv"):
        writer = csv.writer(out, dialect="excel-tab" if fmt == "tsv" else "excel", lineterminator="\n")
        if not args.no_headers:
            writer.writerow(headers)
        writer.writerows([_cell(v) for v in r] for r in rows)
    else:
        keys = unique(headers)
        lines = (_json_row(keys, r, args.arrays) for r in rows)
        if fmt == "nl":
            for line in lines:
                print(line, file=out)
        else:
            _json_array(lines)
    return 0


def _json_array(lines: Iterable[str]) -> None:
    """`[first,` / ` next,` / ` last]`: one row per line, as sqlite-utils prints it, without holding every row."""
    previous = None
    for line in lines:
        if previous is not None:
            print(previous + ",")
        previous = (" " if previous is not None else "[") + line
    print("[]" if previous is None else previous + "]")


def _json_row(headers: Sequence[str], row: Sequence[Any], arrays: bool) -> str:
    return json.dumps(list(row) if arrays else dict(zip(headers, row, strict=True)), default=_binary,
                      ensure_ascii=False)


def unique(headers: Iterable[str]) -> list[str]:
    """Column names as JSON keys: a repeated name (`SELECT a.id, b.id`) becomes id, id_2, as in sqlite-utils."""
    seen: set[str] = set()
    names = []
    for name in headers:
        key, n = name, 1
        while key in seen:
            n += 1
            key = f"{name}_{n}"
        seen.add(key)
        names.append(key)
    return names


def _binary(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$base64": True, "encoded": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _cell(value: Any) -> str:
    """A value as CSV / TSV / table text: None is empty, binary is base64, nested data is JSON."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
