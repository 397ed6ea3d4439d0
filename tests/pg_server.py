"""A real PostgreSQL server for tests and benchmarks: Debian's binaries, a temporary data directory, 127.0.0.1.

`initdb` refuses to run as root, so when the tests run as root every server command goes through
`runuser -u postgres` and the temporary directory belongs to postgres. The server listens on 127.0.0.1 only, on
a free port, with its unix socket in the temporary directory (never /var/run/postgresql, which a system server
may use). Two roles: `durable`, the superuser, trusted without a password over TCP from 127.0.0.1 (what most
tests connect as), and `PASSWORD_ROLE`, which must give its password (scram-sha-256), so a test can prove that a
password in a URL or in PGPASSWORD reaches the server.

`PostgresServer.start()` runs initdb once and starts the server; `restart()` keeps the data (`mode="immediate"`
is a crash: the server recovers from its WAL); `close()` stops the server and removes the directory. The
`postgres` fixture in conftest.py is one server per test session; `pg_database` a fresh database per test.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

BIN_GLOB = "/usr/lib/postgresql/*/bin"
SUPERUSER = "durable"
PASSWORD_ROLE = "durable_pw"
OS_USER = "postgres"  # the account the server runs as when we are root


class PostgresMissing(RuntimeError):
    pass


def find_bin_dir(pattern: str = BIN_GLOB) -> Path:
    """The newest PostgreSQL version's bin directory that has the server programs."""
    found = [Path(p) for p in sorted(glob.glob(pattern), key=_version, reverse=True)
             if all((Path(p) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres"))]
    if not found:
        raise PostgresMissing(
            f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) under {pattern}: the PostgreSQL tests and "
            "benchmarks start a real server. Run `make test` (it installs Debian's postgresql package when "
            "missing) or `apt-get install -y postgresql`.")
    return found[0]


def _version(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.name)) or (0,)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, *, settings: dict[str, str] | None = None, bin_dir: Path | None = None) -> None:
        """`settings`: extra server parameters (`-c name=value`), e.g. {"fsync": "off"}; PostgreSQL's defaults
        otherwise, so benchmarks measure what a team's server does."""
        self.bin_dir = bin_dir or find_bin_dir()
        self.settings = dict(settings or {})
        self.password = secrets.token_urlsafe(16)  # PASSWORD_ROLE's, random per server; never leaves the test
        self.root: Path | None = None
        self.port = 0
        self._as_root = os.geteuid() == 0

    # -- addresses ----------------------------------------------------------------------------------------------

    @property
    def data(self) -> Path:
        assert self.root is not None, "the server was never started"
        return self.root / "data"

    def url(self, dbname: str = "postgres", *, user: str = SUPERUSER, password: str | None = None,
            query: str = "") -> str:
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}" + (f"?{query}" if query else "")

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}"

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        import psycopg

        return psycopg.connect(self.conninfo(dbname), **kwargs)

    # -- life cycle ---------------------------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        fresh = self.root is None
        if fresh:
            self._init()
        self._start()
        if fresh:
            with self.connect(autocommit=True) as conn:
                conn.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN CREATEDB PASSWORD '{self.password}'")
        return self

    def _start(self) -> None:
        # A free port can be taken between choosing it and the server binding it: choose again a few times.
        for attempt in range(3):
            self.port = self.port or free_port()
            result = self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.root / "server.log"),
                                  "-o", self._options(), check=False)
            if result.returncode == 0:
                return
            if attempt < 2 and "could not bind" in self.log_tail():
                self.port = 0
                continue
            raise RuntimeError(f"PostgreSQL did not start (pg_ctl exit {result.returncode}): "
                               f"{result.stderr.strip()}\nserver log:\n{self.log_tail()}")
        raise AssertionError("unreachable")

    def _init(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="durable-nb-pg-"))
        atexit.register(self.close)  # a session that ends without its teardown still stops the server
        if self._as_root:
            pw = pwd.getpwnam(OS_USER)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        # --no-sync: a test server's initial catalog need not survive a power cut; it saves about a second.
        self._run([str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-E", "UTF8",
                   "--locale=C", "--no-sync", "--no-instructions"])
        # Only the unix socket and 127.0.0.1; PASSWORD_ROLE must always give its password.
        (self.data / "pg_hba.conf").write_text(
            f"local all all trust\n"
            f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
            f"host all {SUPERUSER} 127.0.0.1/32 trust\n")

    def _options(self) -> str:
        settings = {"listen_addresses": "127.0.0.1", "port": str(self.port),
                    "unix_socket_directories": str(self.root), **self.settings}
        return " ".join(f"-c {k}={v}" for k, v in settings.items())

    def restart(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Stop and start again on the same port and data. "immediate" kills the server without a checkpoint,
        as a crash would; what was committed must be there after the restart."""
        self.stop(mode)
        self.start()

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        if self.root is not None and self.pid() is not None:
            self._pg_ctl("stop", "-w", "-m", mode)

    def close(self) -> None:
        if self.root is None:
            return
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")  # the data goes away: no need for a checkpoint
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.close)
        self.root = None

    def pid(self) -> int | None:
        """The postmaster's pid while it runs (from postmaster.pid, checked alive)."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.data.parent / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    # -- helpers for tests --------------------------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        with self.connect(autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.connect(autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), *args], check=check)

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        if self._as_root:
            argv = ["runuser", "-u", OS_USER, "--", *argv]
        # stdin/stdout closed to the server: pg_ctl's postmaster must not hold the test's pipes open.
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                cwd=self.root, timeout=120)
        if check and result.returncode:
            raise subprocess.CalledProcessError(result.returncode, argv, result.stdout, result.stderr)
        return result


def running_server(**kwargs: Any) -> Iterator[PostgresServer]:
    server = PostgresServer(**kwargs)
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole test session (PostgreSQL's default settings)."""
    yield from running_server()


@pytest.fixture
def pg_database(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server; its name. Dropped after the test."""
    name = f"t_{secrets.token_hex(6)}"
    postgres.create_database(name)
    yield name
    postgres.drop_database(name)
