"""`durable-nb verify | trust ... | key`: review logs, trust teammates' keys (or re-sign a whole log), show my key.

Verb for verb the functions of durable_nb.trust: `trust add` = trust_add, `trust user` = trust_user, `trust list` =
trust_list, `trust remove` = trust_remove, `trust log` = trust_log, `key` = public_key.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import output


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="check every blob's content hash and every signature; exit 1 on tampering")
    p.add_argument("log")
    p.set_defaults(handler=_verify)

    p = sub.add_parser("key", help="print your public key (send it to teammates: they run `durable-nb trust add`)")
    p.set_defaults(handler=_key)

    group = sub.add_parser("trust", help="trust teammates' keys, so the pickled values they sign replay here")
    verbs = group.add_subparsers(dest="trust_verb", metavar="VERB", required=True)
    p = verbs.add_parser("add", help="trust the public key in KEYFILE (a teammate's signing_key.pub)")
    p.add_argument("keyfile")
    p.add_argument("--name", help="the name to list the key under (default: the key file's comment)")
    p.set_defaults(handler=_add)

    p = verbs.add_parser("user", help="review what the signer NAME recorded in LOG, then trust their key")
    p.add_argument("name", help="the signer's name in the log (e.g. alice@laptop) or their key's fingerprint")
    p.add_argument("log")
    p.add_argument("--dry-run", action="store_true", help="show the review, trust nothing")
    p.set_defaults(handler=_user)

    p = verbs.add_parser("list", help="the keys whose values replay here (yours first)")
    output.add_options(p)
    p.set_defaults(handler=_list)

    p = verbs.add_parser("remove", help="stop trusting a key (by name, fingerprint or a prefix of it)")
    p.add_argument("key", metavar="KEY|NAME")
    p.set_defaults(handler=_remove)

    p = verbs.add_parser("log", help="after reviewing a SQLite log, re-sign its pickled values with your key")
    p.add_argument("log")
    p.add_argument("--dry-run", action="store_true", help="list what would be signed, sign nothing")
    p.set_defaults(handler=_log)


def _verify(args: argparse.Namespace) -> int:
    from ..trust import verify_log

    review = verify_log(args.log)
    print("\n".join(review.lines()))
    return 0 if review.ok else 1


def _key(args: argparse.Namespace) -> int:
    from ..keys import user_key

    key = user_key()
    print(key.public.openssh())
    print(f"{key.public.fingerprint}, in {key.path.with_name(key.path.name + '.pub')}: send that file to "
          "teammates; they run `durable-nb trust add FILE`", file=sys.stderr)
    return 0


def _add(args: argparse.Namespace) -> int:
    from ..trust import trust_add

    key = trust_add(args.keyfile, args.name)
    print(f"trusted {key.shown()}: the values it signs, past and future, replay here")
    return 0


def _user(args: argparse.Namespace) -> int:
    from ..trust import trust_user

    done = trust_user(args.name, args.log, dry_run=args.dry_run)
    print("\n".join(done.lines()))
    return 1 if done.tampered else 0


def _list(args: argparse.Namespace) -> int:
    from ..trust import trust_list

    found = trust_list()
    rows = [[k.fingerprint, k.comment, i == 0, k.openssh()] for i, k in enumerate(found)]
    return output.emit(args, ["fingerprint", "name", "yours", "public_key"], rows)


def _remove(args: argparse.Namespace) -> int:
    from ..trust import trust_remove

    key = trust_remove(args.key)
    print(f"no longer trusted: {key.shown()} (values it signed run again instead of replaying)")
    return 0


def _log(args: argparse.Namespace) -> int:
    from ..trust import trust_log

    done = trust_log(args.log, dry_run=args.dry_run)
    print("\n".join(done.lines()))
    return 1 if done.refused else 0
