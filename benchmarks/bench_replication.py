"""Litestream replication against a local rclone S3 server: lag from a commit to its visibility in the
replica, and restore time of a 100 MB and a 1 GB log against downloading the same snapshot objects with boto3.

Lag is measured to the moment the LTX file holding the commit is listed in the bucket (from then on a fresh
restore returns it; checked with a real restore after the samples).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import report
from durable_nb.log.connect import connect, write_transaction
from durable_nb.replicate import Replicator, binary, restore, s3_client

BUCKET = "bench"


class Server:
    def __init__(self, root: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        key, secret = "AK" + secrets.token_hex(10).upper(), secrets.token_hex(20)
        os.environ.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
        root.mkdir()
        self.proc = subprocess.Popen(
            [
                binary("rclone"),
                "serve",
                "s3",
                str(root),
                "--addr",
                f"127.0.0.1:{self.port}",
                "--auth-key",
                f"{key},{secret}",
                "--config",
                "/dev/null",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        self.client().create_bucket(Bucket=BUCKET)

    def client(self) -> Any:
        from durable_nb.replicate import parse_s3_url

        return s3_client(parse_s3_url(f"s3://{BUCKET}/", endpoint=self.endpoint))

    def keys(self, prefix: str) -> list[dict[str, Any]]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [obj for page in pages for obj in page.get("Contents", [])]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _add_row(conn: Any, path: Path, payload: bytes = b"x") -> None:
    with write_transaction(conn, path):
        conn.execute("INSERT INTO bench (data) VALUES (?)", (payload,))


def lag(server: Server, work: Path, name: str, samples: int, **options: str) -> float:
    log = work / f"{name}.db"
    conn = connect(log)
    conn.execute("CREATE TABLE bench (id INTEGER PRIMARY KEY, data BLOB)")
    prefix = f"lag/{name}"
    rep = Replicator(log, f"s3://{BUCKET}/{prefix}", endpoint=server.endpoint, **options).start()
    client = server.client()
    lags = []
    try:
        _add_row(conn, log)
        while rep.status()["last_sync"] is None:
            time.sleep(0.05)
        for _ in range(samples):
            before = {o["Key"] for o in server.keys(f"{prefix}/0000/")}
            t0 = time.perf_counter()
            _add_row(conn, log)
            while True:
                page = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/0000/")
                if {o["Key"] for o in page.get("Contents", [])} - before:
                    break
                time.sleep(0.01)
            lags.append(time.perf_counter() - t0)
            time.sleep(0.3)
        out = work / f"{name}-restored.db"
        restore(f"s3://{BUCKET}/{prefix}", out, endpoint=server.endpoint)
        restored = connect(out, readonly=True)
        assert restored.execute("SELECT count(*) FROM bench").fetchone()[0] == samples + 1
        restored.close()
    finally:
        rep.stop()
        conn.close()
    return statistics.median(lags)


def restore_vs_copy(server: Server, work: Path, megabytes: int) -> tuple[float, float]:
    log = work / f"big{megabytes}.db"
    conn = connect(log)
    conn.execute("CREATE TABLE bench (id INTEGER PRIMARY KEY, data BLOB)")
    chunk = 4 << 20
    for _ in range(megabytes * (1 << 20) // chunk):
        _add_row(conn, log, os.urandom(chunk))
    conn.close()
    prefix = f"big/{megabytes}"
    url = f"s3://{BUCKET}/{prefix}"
    rep = Replicator(log, url, endpoint=server.endpoint).start()
    while rep.status()["last_sync"] is None:
        time.sleep(0.2)
    rep.stop()
    out = work / f"big{megabytes}-restored.db"
    t0 = time.perf_counter()
    restore(url, out, endpoint=server.endpoint)
    restore_s = time.perf_counter() - t0
    assert out.stat().st_size >= megabytes * (1 << 20)
    snapshot = [o["Key"] for o in server.keys(f"{prefix}/0009/")] or [o["Key"] for o in server.keys(prefix)]
    client = server.client()
    copies = work / f"copy{megabytes}"
    copies.mkdir()
    t0 = time.perf_counter()
    for i, key in enumerate(snapshot):
        client.download_file(BUCKET, key, str(copies / str(i)))
    copy_s = time.perf_counter() - t0
    for path in (log, out, copies):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return restore_s, copy_s


def main() -> None:
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    with tempfile.TemporaryDirectory(prefix="bench-replication-") as tmp:
        work = Path(tmp)
        server = Server(work / "s3")
        try:
            report(
                "replication lag, defaults (1 s sync/monitor), median",
                lag(server, work, "default", 7),
                limit=1.5,
                limit_kind="abs",
            )
            report(
                "replication lag, 100 ms sync + monitor interval, median",
                lag(server, work, "fast", 15, sync_interval="100ms"),
                limit=0.3,
                limit_kind="abs",
            )
            for megabytes in (100, 1024):
                restore_s, copy_s = restore_vs_copy(server, work, megabytes)
                report(
                    f"restore of a {megabytes} MB log",
                    restore_s,
                    copy_s,
                    baseline_name="boto3 download of its snapshot objects",
                )
        finally:
            server.stop()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


if __name__ == "__main__":
    sys.exit(main())
