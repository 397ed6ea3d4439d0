"""`durable-nb trust | verify`: review a shared log, then allow its pickled values on this machine."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="check every blob's content hash and every signature; exit 1 on tampering")
    p.add_argument("log")
    p.set_defaults(handler=_verify)

    p = sub.add_parser("trust", help="after reviewing a log, sign its pickled values with your key so they replay")
    p.add_argument("log")
    p.add_argument("--dry-run", action="store_true", help="list what would be signed, sign nothing")
    p.set_defaults(handler=_trust)


def _verify(args: argparse.Namespace) -> int:
    from ..trust import verify_log

    review = verify_log(args.log)
    print("\n".join(review.lines()))
    return 0 if review.ok else 1


def _trust(args: argparse.Namespace) -> int:
    from ..trust import trust_log

    done = trust_log(args.log, dry_run=args.dry_run)
    print("\n".join(done.lines()))
    return 1 if done.refused else 0
