"""`durable-nb`: the command line mirrors the Python API verb for verb.

Each concept registers its verbs from its own module (cli/history.py, cli/replicate.py, ...), so this file only
dispatches. Handlers return the process exit code; a `DurableError` becomes one clear line on stderr and exit 1.
Nothing heavy is imported until a verb runs: `durable-nb --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import DurableError

# Modules that define `register(subparsers)`; each adds its verbs with `set_defaults(handler=...)`.
VERB_MODULES: tuple[str, ...] = ("history", "replicate", "trust", "jobs", "transfer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="durable-nb", description="Run notebooks as resumable jobs; inspect, share and replicate durable_nb logs.")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for name in VERB_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except DurableError as exc:
        print(f"durable-nb {args.verb}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
