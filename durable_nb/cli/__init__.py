"""`durable-nb`: the command line mirrors the Python API verb for verb.

Each concept registers its verbs from its own module (cli/history.py, cli/replicate.py, ...), so this file only
dispatches. Handlers return the process exit code; a `DurableError` becomes one clear line on stderr and exit 1.
Nothing heavy is imported until a verb runs: `durable-nb --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

from ..errors import DurableError
from .output import UsageError

# Modules that define `register(subparsers)`; each adds its verbs with `set_defaults(handler=...)`.
VERB_MODULES: tuple[str, ...] = ("history", "query", "replicate", "trust", "jobs", "transfer")


# One example per command, shown by `durable-nb COMMAND --help` and in docs/cli.md; tests/test_cli_conventions.py
# checks that the two agree and runs every one of them.
EXAMPLES: dict[str, str] = {
    "run": "durable-nb run job.ipynb -p rows 100 -o job.out.ipynb",
    "history": "durable-nb history analysis.durable.db --state failed --last 5",
    "runs": "durable-nb runs analysis.durable.db --csv",
    "activities": "durable-nb activities analysis.durable.db --nl --state recorded",
    "query": "durable-nb query analysis.durable.db \"SELECT cell_name, count(*) AS n FROM executions "
             "WHERE state = :state GROUP BY cell_name\" -p state recorded --table",
    "show": "durable-nb show analysis.durable.db 1",
    "load": "durable-nb load analysis.durable.db df -o df.parquet --run 1",
    "diff": "durable-nb diff analysis.durable.db 1 2",
    "gc": "durable-nb gc analysis.durable.db --keep-last 2",
    "export": "durable-nb export analysis.durable.db -o share.durable.db --latest-only",
    "status": "durable-nb status analysis.durable.db --json",
    "copy": "durable-nb copy analysis.durable.db copy.durable.db",
    "verify": "durable-nb verify analysis.durable.db",
    "key": "durable-nb key",
    "trust add": "durable-nb trust add alice.pub --name alice",
    "trust user": "durable-nb trust user alice@laptop analysis.durable.db --dry-run",
    "trust list": "durable-nb trust list --csv",
    "trust remove": "durable-nb trust remove alice",
    "trust log": "durable-nb trust log analysis.durable.db --dry-run",
    "replicate": "durable-nb replicate analysis.durable.db s3://team-logs/alice/analysis.durable.db "
                 "--endpoint http://127.0.0.1:9000",
    "restore": "durable-nb restore s3://team-logs/alice/analysis.durable.db -o restored.durable.db "
               "--endpoint http://127.0.0.1:9000",
    "fleet ls": "durable-nb fleet ls s3://team-logs/ --endpoint http://127.0.0.1:9000 --fmt github",
    "fleet pull": "durable-nb fleet pull s3://team-logs/ --match 'alice/*' -o team --endpoint http://127.0.0.1:9000",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="durable-nb", description="Run notebooks as resumable jobs; inspect, share and replicate durable_nb logs.")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for name in VERB_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    for name, command in commands(parser):
        if name in EXAMPLES:
            command.epilog = f"example:\n  {EXAMPLES[name]}"
            command.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the example on its own line
    return parser


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    """Every command under `parser` by its full name ("history", "fleet ls"), groups included."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                found.append((prefix + name, command))
                found += commands(command, f"{prefix}{name} ")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        verb_parser: argparse.ArgumentParser = args.usage_parser
        verb_parser.error(str(exc))  # the verb's usage and the message on stderr, exit 2, as argparse does
    except DurableError as exc:
        print(f"durable-nb {args.verb}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader stopped reading (`durable-nb history LOG | head -3`): stop quietly, as `yes | head` does.
        # Python's own flush of stdout at exit would fail again, so stdout now goes nowhere.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a writer whose pipe closed


if __name__ == "__main__":
    sys.exit(main())
