"""Replication building blocks: URLs, Litestream log lines, error texts, environment, restore-if-missing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from s3server import S3Server

from durable_nb.log.connect import connect
from durable_nb.replicate import (
    ReplicationError,
    Replicator,
    S3Location,
    explain,
    litestream_env,
    parse_log_line,
    parse_s3_url,
    restore_if_missing,
)


def test_parse_s3_url_defaults_and_overrides() -> None:
    aws = parse_s3_url("s3://bucket/team/nb.durable.db")
    assert aws == S3Location("bucket", "team/nb.durable.db", None, None, False)
    local = parse_s3_url("s3://b/p?endpoint=http://127.0.0.1:9000")
    assert (local.endpoint, local.region, local.force_path_style) == (
        "http://127.0.0.1:9000",
        "us-east-1",
        True,
    )
    assert (
        parse_s3_url("s3://b/p?forcePathStyle=false", endpoint="http://x", region="eu-west-1").region
        == "eu-west-1"
    )
    assert not parse_s3_url("s3://b/p?forcePathStyle=false", endpoint="http://x").force_path_style
    assert "forcePathStyle=true" in local.litestream_url() and local.url == "s3://b/p"
    with pytest.raises(ReplicationError, match="not an S3 URL"):
        parse_s3_url("/tmp/replica")


def test_log_lines_and_explanations() -> None:
    line = (
        'time=2026 level=ERROR msg="sync error" error="operation error S3: ListObjectsV2, api error '
        'NoSuchBucket: The specified bucket does not exist" consecutive_errors=1'
    )
    fields = parse_log_line(line)
    assert fields["level"] == "ERROR" and fields["consecutive_errors"] == "1"
    loc = parse_s3_url("s3://logs/x", endpoint="http://127.0.0.1:1")
    assert "bucket 'logs' does not exist" in explain(fields["error"], loc)
    assert "rejected the credentials" in explain("api error InvalidAccessKeyId: ...", loc)
    assert "cannot reach the S3 endpoint http://127.0.0.1:1" in explain("dial tcp: connection refused", loc)
    assert "AWS_CA_BUNDLE" in explain("unable to add custom RootCAs HTTPClient", loc)


def test_a_backlog_upload_is_not_a_sync(tmp_path: Path) -> None:
    """Litestream's lines as 0.5 writes them around an outage: uploading the backlog's first file must not
    count as caught up (a restore then missed the commits recorded since); last_sync only moves to the WAL
    reads whose transactions the replica holds."""
    rep = Replicator(tmp_path / "nb.durable.db", "s3://b/p", endpoint="http://127.0.0.1:1")
    txid = "{:016x}".format
    reads: dict[int, float] = {}  # when the WAL read that writes transaction n began (at the latest)

    def read(n: int) -> None:
        reads.setdefault(n, time.time())
        rep._observe(f"time=x level=DEBUG msg=sync db=nb txid={txid(n)} offset=1")

    def uploaded(n: int, level: int = 0) -> float | None:
        rep._observe(f"time=x level=DEBUG msg=\"ltx file uploaded\" level={level} minTXID={txid(n)} "
                     f"maxTXID={txid(n)} size=1")
        return rep.status()["last_sync"]

    read(1)
    assert uploaded(1) is None, "the read after it may still find commits for transaction 1"
    read(2)  # nothing new: every commit before read 1 is in transaction 1
    synced = rep.status()["last_sync"]
    assert synced is not None and synced <= reads[2]
    for n in range(2, 40):  # the outage: transactions 2..39 written locally, none uploaded
        read(n + 1)
    read(40)
    assert rep.status()["last_sync"] == synced
    rep._observe(f'time=x level=INFO msg="replica sync" txid.replica={txid(1)} txid.db={txid(39)}')
    assert uploaded(20, level=1) == synced, "a compaction upload is not the replica's position"
    for n in range(2, 39):
        last = uploaded(n)
        assert last is not None and last < reads[n + 1], f"synced past what transaction {n} holds"
    caught_up = uploaded(39)
    assert caught_up is not None and caught_up >= reads[39]
    read(41)  # transaction 40 written; then a read fails: the read after it does not vouch for read 41
    rep._observe('time=x level=ERROR msg="sync error" error="disk I/O error"')
    read(41)
    uploaded(40)
    assert rep.status()["last_sync"] < reads[41]


def test_ca_bundle_dropped_for_http_only(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    assert "AWS_CA_BUNDLE" not in litestream_env(parse_s3_url("s3://b/p", endpoint=s3.endpoint))
    assert "AWS_CA_BUNDLE" in litestream_env(parse_s3_url("s3://b/p", endpoint="https://s3.example.com"))
    env = litestream_env(parse_s3_url("s3://b/p", endpoint=s3.endpoint))
    assert env["LITESTREAM_SECRET_ACCESS_KEY"] == s3.secret_key  # from the AWS chain (env vars here)


def test_missing_credentials_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "LITESTREAM_ACCESS_KEY_ID",
        "LITESTREAM_SECRET_ACCESS_KEY",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ReplicationError, match="no S3 credentials found"):
        litestream_env(parse_s3_url("s3://b/p", endpoint="http://127.0.0.1:1"))


def test_config_has_no_secrets_and_every_setting(tmp_path: Path) -> None:
    rep = Replicator(tmp_path / "x.db", "s3://b/p", endpoint="http://127.0.0.1:1", sync_interval="100ms")
    replica = rep.config()["dbs"][0]["replica"]
    assert not [key for key in replica if "key" in key or "secret" in key]
    assert replica["sync-interval"] == "100ms" and replica["force-path-style"] is True
    assert rep.config()["dbs"][0]["monitor-interval"] == "100ms"
    assert rep.config()["dbs"][0]["max-sync-wal-bytes"] == 0, "a WAL read in chunks breaks _observe's reckoning"
    with pytest.raises(ReplicationError, match="does not exist yet"):
        rep.start()


def test_restore_if_missing(s3: S3Server, tmp_path: Path) -> None:
    log = tmp_path / "nb.durable.db"
    assert restore_if_missing(log, "s3://test/none/nb.durable.db", endpoint=s3.endpoint) is False
    assert not log.exists()
    connect(log).close()
    assert restore_if_missing(log, "s3://test/none/nb.durable.db", endpoint=s3.endpoint) is False
