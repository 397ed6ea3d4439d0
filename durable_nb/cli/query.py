"""`durable-nb query LOG SQL`: read-only SQL over the log's views (durable_nb.query, verb for verb)."""

from __future__ import annotations

import argparse
from typing import Any

from . import output


def register(sub: Any) -> None:
    p = sub.add_parser("query", help="run read-only SQL over the log's views (executions, runs, activities, ...)")
    p.add_argument("log", metavar="LOG",
                   help="a durable log: a file or a postgresql:// URL (read-only; a write is refused)")
    p.add_argument("sql", metavar="SQL", help="one SELECT (or WITH ... SELECT) statement; :name for parameters")
    p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a value for :NAME in the SQL (text, as sqlite-utils passes it)")
    output.add_options(p)
    p.set_defaults(handler=_query)


def _query(args: argparse.Namespace) -> int:
    from ..sql import results

    output.chosen(args)  # a bad combination of options is reported before the log is opened
    with results(args.sql, dict(args.param), log=args.log) as (columns, rows):
        return output.emit(args, columns, rows)
