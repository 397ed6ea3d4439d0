"""`durable-nb replicate | restore | fleet`: Litestream replication, point-in-time restore, fleets of logs."""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import sys
import threading
from typing import Any

from . import output


def _s3_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint", help="S3-compatible endpoint URL (MinIO, R2, rclone...); default AWS S3"
    )
    parser.add_argument("--region", help="bucket region (default: us-east-1 with --endpoint, else detected)")
    parser.add_argument(
        "--path-style",
        dest="force_path_style",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="path-style addressing (default: on with --endpoint)",
    )


def register(sub: Any) -> None:
    p = sub.add_parser("replicate", help="stream a log to S3 with Litestream (foreground; Ctrl-C stops)")
    p.add_argument("log")
    p.add_argument("url", help="s3://BUCKET/PATH")
    p.add_argument("--sync-interval", default="1s")
    _s3_options(p)
    p.set_defaults(handler=_replicate)

    p = sub.add_parser("restore", help="restore a replicated log (optionally as of a point in time)")
    p.add_argument("url", help="s3://BUCKET/PATH")
    p.add_argument("-o", "--output", required=True, help="path of the restored log")
    p.add_argument("--timestamp", help="restore as of this time (RFC 3339, e.g. 2026-11-26T14:03:00Z)")
    p.add_argument("--force", action="store_true", help="replace an existing file at --output")
    _s3_options(p)
    p.set_defaults(handler=_restore)

    fleet = sub.add_parser("fleet", help="list or restore every log replicated under an S3 prefix")
    verbs = fleet.add_subparsers(dest="fleet_verb", metavar="ls|pull", required=True)
    p = verbs.add_parser("ls", help="every log under the prefix, its replica size and last update")
    p.add_argument("prefix", help="s3://BUCKET/PREFIX")
    _s3_options(p)
    output.add_options(p)
    p.set_defaults(handler=_fleet_ls)
    p = verbs.add_parser("pull", help="restore the logs under the prefix into a folder")
    p.add_argument("prefix", help="s3://BUCKET/PREFIX")
    p.add_argument("--match", default="*", help="glob on the log names (default: all)")
    p.add_argument("-o", "--output", required=True, help="folder to restore into")
    p.add_argument("--force", action="store_true", help="replace logs that already exist there")
    _s3_options(p)
    p.set_defaults(handler=_fleet_pull)


def _s3_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"endpoint": args.endpoint, "region": args.region, "force_path_style": args.force_path_style}


def _replicate(args: argparse.Namespace) -> int:
    from ..replicate import Replicator, format_status

    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: done.set())
    replicator = Replicator(args.log, args.url, sync_interval=args.sync_interval, **_s3_kwargs(args)).start()
    print(f"replicating {replicator.log_path} to {replicator.location.url}; Ctrl-C stops", file=sys.stderr)
    shown = None
    try:
        while not done.wait(1.0):
            error = replicator.status()["error"]
            if error != shown and error is not None:
                print(f"durable-nb replicate: {error}", file=sys.stderr, flush=True)
            shown = error
    finally:
        replicator.stop()
    print(format_status(replicator.status()), file=sys.stderr)
    return 0


def _restore(args: argparse.Namespace) -> int:
    from ..replicate import restore

    restore(args.url, args.output, timestamp=args.timestamp, force=args.force, **_s3_kwargs(args))
    print(f"restored {args.url} into {args.output}")
    return 0


def _fleet_ls(args: argparse.Namespace) -> int:
    from ..fleets import fleet

    output.chosen(args)  # a bad combination of options is reported before S3 is asked
    logs = fleet(args.prefix, **_s3_kwargs(args)).ls()
    # The same ISO 8601 UTC times as the history verbs' JSON.
    rows = [[i.name, i.url, i.stored_bytes, i.files, i.updated.astimezone(dt.UTC).isoformat()
             .replace("+00:00", "Z")] for i in logs]

    def table() -> output.Table:
        return output.Table(["log", "replica bytes", "files", "last update (UTC)"],
                            [[i.name, f"{i.stored_bytes:,}", str(i.files), f"{i.updated:%Y-%m-%d %H:%M:%S}"]
                             for i in logs], squeeze=0)

    return output.emit(args, ["name", "url", "stored_bytes", "files", "updated"], rows, table,
                       empty=f"no replicated logs under {args.prefix}")


def _fleet_pull(args: argparse.Namespace) -> int:
    from ..fleets import fleet

    paths = fleet(args.prefix, **_s3_kwargs(args)).pull(args.output, match=args.match, force=args.force)
    for path in paths:
        print(path)
    return 0
