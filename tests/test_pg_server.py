"""The PostgreSQL test server itself (tests/pg_server.py): what later backend tests rely on."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import psycopg
import pytest
from pg_server import PASSWORD_ROLE, PostgresMissing, PostgresServer, find_bin_dir

pytestmark = pytest.mark.integration


def _listening(port: int) -> list[str]:
    """The local addresses with a TCP socket listening on `port`, from the kernel's own tables."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
                # /proc prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.append(socket.inet_ntop(family, words))
    return found


def _running(pid: int) -> bool:
    """Whether `pid` is a live process. An exited postmaster was reparented to PID 1 by pg_ctl, which on these
    machines reaps its zombies only now and then: a zombie has exited."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_server_answers_and_listens_on_loopback_only(postgres: PostgresServer) -> None:
    with postgres.connect() as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None and int(version[0]) // 10000 == int(postgres.bin_dir.parent.name)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW unix_socket_directories").fetchone() == (str(postgres.root),)
    assert _listening(postgres.port) == ["127.0.0.1"]
    assert postgres.root is not None and (postgres.root / f".s.PGSQL.{postgres.port}").is_socket()
    assert not Path(f"/var/run/postgresql/.s.PGSQL.{postgres.port}").exists()
    if os.geteuid() == 0:  # the server runs as postgres, never as root
        assert postgres.data.stat().st_uid != 0


def test_url_connects_and_password_role_needs_its_password(postgres: PostgresServer) -> None:
    with psycopg.connect(postgres.url()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("durable",)
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(postgres.url(user=PASSWORD_ROLE)).close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.url(user=PASSWORD_ROLE, password="wrong")).close()
    with psycopg.connect(postgres.url(user=PASSWORD_ROLE, password=postgres.password)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (PASSWORD_ROLE,)


def test_database_fixture_is_fresh(pg_database: str, postgres: PostgresServer) -> None:
    with postgres.connect(pg_database) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (pg_database,)
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_keeps_committed_rows_and_breaks_old_connections(postgres: PostgresServer, pg_database: str,
                                                                 mode: str) -> None:
    with postgres.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (i int)")
        conn.execute("INSERT INTO t VALUES (1)")
        old = postgres.pid()
        postgres.restart(mode)  # type: ignore[arg-type]
        assert postgres.pid() not in (None, old)
        # The session's connection died with the old server: the reconnect logic has something real to do.
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with postgres.connect(pg_database) as conn:
        assert conn.execute("SELECT i FROM t").fetchall() == [(1,)]
    assert _listening(postgres.port) == ["127.0.0.1"]


def test_own_server_starts_fast_and_leaves_nothing_behind() -> None:
    server = PostgresServer()
    t0 = time.monotonic()
    server.start()
    started = time.monotonic() - t0
    root, pid, port = server.root, server.pid(), server.port
    assert root is not None and pid is not None
    try:
        with server.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.close()
    # ~1.3 s on a quiet 2-core machine (initdb --no-sync + start); generous for a loaded one.
    assert started < 20, f"initdb + start took {started:.1f} s"
    assert not root.exists()
    assert not _running(pid)
    assert _listening(port) == []
    server.close()  # twice is harmless (the atexit hook may run after a test's own close)


def test_missing_binaries_say_how_to_install(tmp_path: Path) -> None:
    (tmp_path / "15" / "bin").mkdir(parents=True)  # a client-only install: no initdb, pg_ctl or postgres
    with pytest.raises(PostgresMissing, match=r"make test.*apt-get install -y postgresql"):
        find_bin_dir(str(tmp_path / "*" / "bin"))


def test_newest_version_is_chosen(tmp_path: Path) -> None:
    for version in ("9.6", "15", "13"):
        bin_dir = tmp_path / version / "bin"
        bin_dir.mkdir(parents=True)
        for tool in ("initdb", "pg_ctl", "postgres"):
            (bin_dir / tool).touch()
    assert find_bin_dir(str(tmp_path / "*" / "bin")) == tmp_path / "15" / "bin"
