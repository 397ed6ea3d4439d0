"""`durable-nb copy SRC DST`: a whole log from one backend to another (log.transfer)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("copy", help="copy a log between backends: a SQLite file into a PostgreSQL schema, or back",
                       description="Copy every run, execution, activity call and value of the log SRC into DST, "
                                   "which must be a new file or an empty schema. Each is a path or a "
                                   "postgresql://user@host/dbname?schema=NAME URL.")
    p.add_argument("src", help="the log to copy (read only)")
    p.add_argument("dst", help="where to copy it: a new file, or a URL of an empty schema")
    p.set_defaults(handler=_copy)


def _copy(args: argparse.Namespace) -> int:
    from ..log.transfer import copy

    print(copy(args.src, args.dst, progress=sys.stderr.isatty()).summary())
    return 0
