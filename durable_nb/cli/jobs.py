"""`durable-nb run`: a notebook as a resumable batch job (durable_nb.run_notebook, verb for verb)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run a notebook in a real kernel, every cell durable; run again to resume")
    p.add_argument("notebook", help="the .ipynb to run (never overwritten)")
    p.add_argument("-o", "--output", metavar="OUT.ipynb",
                   help="the executed notebook (default: NOTEBOOK.out.ipynb beside the input)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a value for a name the cell tagged 'parameters' sets (a Python literal, else a string)")
    p.add_argument("--log", metavar="PATH", help="the durable log (default: NOTEBOOK.durable.db beside it)")
    p.add_argument("--kernel", metavar="NAME", help="kernel name (default: the notebook's, else python3)")
    p.add_argument("--cell-timeout", type=float, metavar="SECONDS",
                   help="interrupt a cell running longer than this and stop the run")
    p.add_argument("--from-scratch", action="store_true",
                   help="replay nothing recorded by earlier runs: every cell and activity runs again")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ..jobs import parameter_value, run_notebook

    parameters = {name: parameter_value(value) for name, value in args.parameter}
    result = run_notebook(args.notebook, parameters=parameters, output=args.output, log=args.log,
                          kernel=args.kernel, cell_timeout=args.cell_timeout, from_scratch=args.from_scratch,
                          progress=sys.stderr)
    if not result.ok:
        print(f"durable-nb run: {result.problem()}", file=sys.stderr)
    return result.exit_code
